"""`trainer.<any lightning.Trainer argument>`: which keys of the trainer config go to `lightning.Trainer` as they are.

The keys of layerwise's TrainerSchema (config/groups.py) are typed and checked there. Any other key must be a
parameter of `lightning.Trainer.__init__`, with a value of a type it takes; it is then passed through untouched
(`lightning_args`). The few Lightning arguments that layerwise sets itself or cannot honour are refused with the
reason (`REFUSED`).

The parameters are read from trainer_args.json, a snapshot of the installed Lightning's signature
(`python -m layerwise.config.trainer_args` rewrites it; tests/test_trainer_args.py fails, naming that command,
when it differs from the installed Lightning), so the config checks import neither Lightning nor torch: a typo
costs milliseconds. A snapshot rather than parsing Lightning's source with `ast` at each check: it does not
depend on how Lightning lays out its files, and it is the same generate-and-test scheme as config/defaults.yaml.
A user whose Lightning differs from the pinned one still gets one line: `lightning_args` checks the keys against
the real signature when the Trainer is built.
"""
from __future__ import annotations

import difflib
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any

from layerwise.errors import ConfigError

SNAPSHOT = Path(__file__).with_name("trainer_args.json")

_CLIP = ("Lightning does not clip gradients under manual optimization, which layerwise uses to step each block's "
         "optimizer right after its own backward; use trainer.grad_clip=<max norm> (each group's gradient norm, "
         "clipped before its step)")
_STEPS = ("under layerwise's manual optimization Lightning's global_step advances once per block optimizer (K per "
          "batch), so a step count is not a number of batches; use trainer.max_epochs and trainer.limit_train_batches")

#: Lightning arguments layerwise sets itself or cannot honour: key -> why, and what to use instead.
REFUSED = {
    "accumulate_grad_batches": ("Lightning does not accumulate gradients under manual optimization (it stops the "
                                "run), which layerwise uses to step each block's optimizer right after its own "
                                "backward; for a larger batch raise data.batch_size or train on more processes "
                                "(global batch = trainer.devices x trainer.num_nodes x data.batch_size)"),
    "gradient_clip_val": _CLIP,
    "gradient_clip_algorithm": _CLIP,
    "max_steps": _STEPS,
    "min_steps": _STEPS,
    "logger": "loggers come from the logger config group (logger=csv, logger=wandb, logger=none, ...)",
    "callbacks": "callbacks come from the config's callbacks, not from trainer",
    "plugins": "layerwise sets its own checkpoint I/O plugin; precision comes from trainer.precision and the cluster "
               "environment is detected by Lightning",
    "enable_checkpointing": "layerwise always writes checkpoints/last.ckpt and best.ckpt: resume and preemption "
                            "rely on them",
    "barebones": "it turns off the logging, checkpoints and progress lines a layerwise run writes",
    "enable_progress_bar": "use trainer.progress_bar=true|false|auto",
    "use_distributed_sampler": "layerwise's data module shards the data itself, so that a resume continues at the "
                               "exact batch",
    "default_root_dir": "a run writes into its run directory (hydra.run.dir)",
}

_TYPES = {"int": int, "float": (int, float), "bool": bool, "str": str, "dict": dict, "list": list,
          "null": type(None)}
_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "dict": "a mapping",
          "list": "a list", "null": "null"}


# ---------------------------------------------------------------------------------------------- the snapshot

def _type_words(annotation: Any) -> list[str]:
    """The config-typed values an annotation admits (int, float, bool, str, dict, list, null); a class such as
    Profiler or timedelta admits none (a config holds no Python objects)."""
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return sorted({w for arg in typing.get_args(annotation) for w in _type_words(arg)})
    if origin is typing.Literal:
        return sorted({w for v in typing.get_args(annotation) for w in _type_words(type(v))})
    if annotation is type(None):
        return ["null"]
    for word in ("bool", "int", "float", "str"):
        if annotation is _TYPES[word] or (word == "float" and annotation is float):
            return [word]
    if origin in (dict, list):
        return [origin.__name__]
    return []


def build_snapshot() -> dict:
    """The installed Lightning's Trainer parameters with the config types each takes, and its precision values."""
    import inspect
    import typing

    import lightning
    from lightning.fabric.connector import _PRECISION_INPUT_INT, _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    parameters = {name: _type_words(p.annotation)
                  for name, p in inspect.signature(lightning.Trainer.__init__).parameters.items() if name != "self"}
    precision = [*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_STR_ALIAS),
                 *typing.get_args(_PRECISION_INPUT_INT)]
    return {"lightning": lightning.__version__, "parameters": parameters, "precision": precision}


@functools.lru_cache(maxsize=1)
def snapshot() -> dict:
    return json.loads(SNAPSHOT.read_text())


def trainer_parameters() -> dict[str, list[str]]:
    return snapshot()["parameters"]


def lightning_precisions() -> list:
    return list(snapshot()["precision"])


# ------------------------------------------------------------------------------------------------- checking

def check_trainer_args(trainer: dict, layerwise_keys: set[str] | list[str]) -> dict:
    """The keys of the trainer config that are not layerwise's, checked: returns them (to pass to Lightning), or
    ConfigError (one line) for a key Lightning does not have, one that layerwise refuses, or a value of a type the
    argument does not take."""
    layerwise_keys = set(layerwise_keys)
    parameters = trainer_parameters()
    extra = {k: v for k, v in trainer.items() if k not in layerwise_keys}
    for name, value in extra.items():
        path = f"trainer.{name}"
        if name not in parameters:
            close = difflib.get_close_matches(name, sorted(layerwise_keys | set(parameters)), n=1, cutoff=0.6)
            fix = (f"did you mean trainer.{close[0]}?" if close
                   else "remove it or fix its name (python main.py --cfg job lists every key)")
            raise ConfigError(f"{path} is not an option of the trainer config nor an argument of lightning.Trainer; "
                              f"{fix}")
        if name in REFUSED:
            raise ConfigError(f"{path} is not supported: {REFUSED[name]}")
        if trainer.get("pipeline"):
            raise ConfigError(f"{path} is a lightning.Trainer argument, but trainer=pipeline trains its stage "
                              f"processes without lightning.Trainer; remove it")
        words = parameters[name]
        if not any(isinstance(value, _TYPES[w]) and not (isinstance(value, bool) and w in ("int", "float"))
                   for w in words):
            if isinstance(value, dict) and "_target_" in value:
                what = f"takes {_or(words)} here, not an object: a trainer config holds no Python objects"
            else:
                what = f"must be {_or(words)}, got {value!r}" if words else (
                    "takes only a Python object, which a config cannot hold")
            raise ConfigError(f"{path} {what}")
        if name == "num_nodes" and value < 1:
            raise ConfigError(f"{path}={value} is out of range; it must be >= 1 (machines, each running "
                              f"trainer.devices processes), e.g. {path}=2")
    return extra


def _or(words: list[str]) -> str:
    shown = [_WORDS[w] for w in words if not (w == "int" and "float" in words)]
    return " or ".join(shown) if shown else "nothing a config can hold"


_TRAINER_OVERRIDE = re.compile(r"^trainer\.([A-Za-z_]\w*)=")


def force_add_trainer_args(args: list[str], layerwise_keys) -> list[str]:
    """`trainer.num_nodes=2` as `++trainer.num_nodes=2`: a Lightning argument is no key of the composed trainer
    config, and Hydra would refuse to set it without a `+`. `++` sets it whether or not a preset has it. Also done
    for names that are neither's, so that the config checks name the closest key instead of Hydra's
    "not in struct"."""
    return [f"++{a}" if (m := _TRAINER_OVERRIDE.match(a)) and m.group(1) not in layerwise_keys else a for a in args]


def lightning_args(trainer, layerwise_keys) -> dict:
    """The checked pass-through arguments for lightning.Trainer, also checked against the installed Lightning's
    own signature (which can differ from the snapshot when Lightning was upgraded or downgraded)."""
    import inspect

    import lightning
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(trainer, resolve=True) if not isinstance(trainer, dict) else trainer
    args = check_trainer_args(container, layerwise_keys)
    accepted = inspect.signature(lightning.Trainer.__init__).parameters
    for name in args:
        if name not in accepted:
            raise ConfigError(f"trainer.{name} is not an argument of lightning.Trainer in the installed Lightning "
                              f"{lightning.__version__}; remove it or install the Lightning in requirements.txt")
    return args


if __name__ == "__main__":  # python -m layerwise.config.trainer_args: rewrite trainer_args.json
    SNAPSHOT.write_text(json.dumps(build_snapshot(), indent=1) + "\n")
    print(f"wrote {SNAPSHOT}", file=sys.stderr)

"""The typed schema of a job config, checked before any data is loaded (`validate(cfg)`).

Four steps, each failing with ONE ConfigError line that names the key, the bad value, what is allowed and a fix:

1. `_target_` allowlist: configs may only name classes of this package, torch, lightning, or the user's own
   packages listed in the config's `allowed_targets` (layerwise instantiates callbacks, extra loggers and
   `_target_` optimizers; Hydra instantiates `hydra.callbacks`, checked by `check_hydra_targets` at run time).
2. OmegaConf.structured(schema) merged with the resolved config: wrong types and unknown keys (with a difflib
   "did you mean"). The schema of each group is picked by the option in use (data.name, model.arch,
   optimizer.name or optimizer._target_, method.rule or method.name), so `+data.n_train=5` is refused with
   data=cifar10. A `_target_` node's schema is derived from its class's signature (layerwise.config.targets).
3. Every leaf: no non-finite float (unless its field opts in), no integer beyond int64 (schema/values.py).
4. OmegaConf.to_object: each dataclass's `__post_init__` checks ranges, choices and cross-field rules.
"""
from __future__ import annotations

import difflib
import functools
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, List, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from layerwise.config.groups import (
    DiagnosticsSchema,
    LoggerSchema,
    PathsSchema,
    TrainerSchema,
    check_parts,
    optimizer_schema,
    split_lightning_args,
)
from layerwise.config.values import check_run_name, check_values
from layerwise.errors import ConfigError
from layerwise.options import check_seed, expected_words

ALLOWED_TARGET_PREFIXES = ("layerwise.", "torch.", "lightning.")  # lightning. covers lightning.pytorch.
#: Where a config may name code of the user's own (a rule class, a network builder, a dataset loader).
USER_TARGETS = ("method._target_", "model._target_", "data._target_")


@dataclass
class RootSchema:
    PATH: ClassVar[str] = ""
    seed: int = 0
    name: str = MISSING
    optimized_metric: Optional[str] = "test/acc"
    debug: bool = False
    resume: Optional[str] = None
    overwrite: bool = False
    paths: PathsSchema = field(default_factory=PathsSchema)
    # The groups' schemas depend on the option in use; `_schema_for` fills them in.
    data: Any = MISSING
    model: Any = MISSING
    method: Any = MISSING
    optimizer: Any = MISSING
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    logger: LoggerSchema = field(default_factory=LoggerSchema)
    diagnostics: Optional[DiagnosticsSchema] = None
    # Lightning callbacks, each a node with a _target_ (conf/callbacks/: +callbacks=early_stopping).
    callbacks: Optional[Any] = None
    # The user's own packages a `_target_` may name besides layerwise, torch and lightning (check_targets).
    allowed_targets: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from layerwise.config.search import metric_name

        check_parts("callbacks", self.callbacks)
        _check_callbacks_fit(self)
        check_seed(self, "seed")
        check_run_name(self.name, self.paths.output_root)
        metric_name(self)  # one list of metrics, in layerwise.config.search
        # Both split the network: the rule's regrouping would silently override the model's.
        splits = [k for k in ("num_modules", "split") if getattr(self.method, k, None) is not None]
        if splits and self.model.blocks is not None:
            raise ConfigError(f"method.{splits[0]} and model.blocks both split the network into modules; "
                              f"set one of them (model.blocks=null)")

    def get(self, name: str, default=None):  # what layerwise.config.search.metric_name reads configs with
        return getattr(self, name, default)


def _check_callbacks_fit(root: RootSchema) -> None:
    """What a callback needs of the rest of the run: a validation split for a val/* metric, a logger for the
    learning rates LearningRateMonitor reports, and Lightning's Trainer (trainer=pipeline runs its own loop)."""
    parts = [f"callbacks.{n}" for n, v in (root.callbacks or {}).items() if v is not None] + [
        f"logger.extra.{n}" for n, v in (root.logger.extra or {}).items() if v is not None]
    if parts and root.trainer.pipeline is not None:
        raise ConfigError(f"{parts[0]} is a Lightning part, and trainer=pipeline trains without Lightning's Trainer "
                          f"(its stages run their own loop); drop it or use trainer=default")
    for name, node in (root.callbacks or {}).items():
        if not isinstance(node, dict):
            continue
        monitor = node.get("monitor")
        split = getattr(root.data, "val_fraction", 0) or 0
        if isinstance(monitor, str) and monitor.startswith("val/") and not split > 0:
            raise ConfigError(f"callbacks.{name}.monitor={monitor} needs a validation split held out of the training "
                              f"set; set data.val_fraction=0.1, or monitor test/acc")
        if str(node.get("_target_")).endswith(".LearningRateMonitor") and not root.logger.any:
            raise ConfigError(f"callbacks.{name} (LearningRateMonitor) writes the learning rates to a logger and "
                              f"this run has none (logger=none); use logger=csv (metrics.csv) or drop the callback")


def _schema_for(container: dict) -> DictConfig:
    """The root schema with each group's schema chosen by the option the config uses."""
    # Each group's options dataclasses, from torch-free modules (a user's `_target_` imports its own module).
    from layerwise.data.options import data_options
    from layerwise.models.options import model_options
    from layerwise.rules import options_class

    def node(group: str) -> dict:
        return container.get(group) if isinstance(container.get(group), dict) else {}

    method = node("method")
    return _structured(data_options(node("data")), model_options(node("model")),
                       options_class(method),
                       optimizer_schema(node("optimizer")))


@functools.lru_cache(maxsize=64)
def _structured(data: type, model: type, method: type, optimizer: type) -> DictConfig:
    """Built once per combination (OmegaConf.structured is slow); merge copies it, so sharing is safe."""
    schema = OmegaConf.structured(RootSchema(data=data, model=model, method=method, optimizer=optimizer))
    OmegaConf.set_readonly(schema, True)
    return schema


# ------------------------------------------------------------------------------------------ error messages

def _leaf_keys(node: Any, prefix: str) -> list[str]:
    if isinstance(node, DictConfig):
        keys = []
        for k in node.keys():
            sub = node._get_node(k)
            keys += _leaf_keys(sub, f"{prefix}.{k}") if isinstance(sub, DictConfig) and not sub._is_none() else [
                f"{prefix}.{k}"]
        return keys
    return [prefix]


def _owner(path: str, container: dict) -> str:
    top = path.split(".")[0]
    node = container.get(top)
    if top in ("data", "model", "method", "optimizer") and isinstance(node, dict) and node.get("name"):
        return f"{top}={node['name']}"
    return f"the {top} config" if "." in path else "the root config"


def _unknown_key(path: str, schema: DictConfig, container: dict) -> ConfigError:
    top, _, rest = path.partition(".")
    candidates = _leaf_keys(schema[top], top) if rest and top in schema else list(schema.keys())
    # Compared without the group prefix, which every candidate shares and which would make any key look close.
    relative = {c.partition(".")[2] if rest else c: c for c in candidates}
    close = difflib.get_close_matches(rest or top, list(relative), n=1, cutoff=0.6)
    fix = (f"did you mean {relative[close[0]]}?" if close
           else "remove it or fix its name (python main.py --cfg job lists every key)")
    return ConfigError(f"{path} is not an option of {_owner(path, container)}; {fix}")


def _translate(err: OmegaConfBaseException, schema: DictConfig, container: dict) -> ConfigError:
    path = str(getattr(err, "full_key", "") or getattr(err, "key", "") or "")
    if isinstance(err, ConfigKeyError):
        return _unknown_key(path, schema, container)
    if isinstance(err, MissingMandatoryValue):
        return ConfigError(f"{path} has no value (???); set it on the command line, e.g. {path}=...")
    if isinstance(err, ValidationError):
        value = OmegaConf.select(OmegaConf.create(container), path, default=getattr(err, "value", None))
        key = path.split("[")[0]
        default = OmegaConf.select(schema, key, default=None, throw_on_missing=False)
        if isinstance(default, (DictConfig, ListConfig)):
            default = str(OmegaConf.to_container(default)).replace(" ", "")  # as typed on a command line
        elif isinstance(default, bool):
            default = str(default).lower()
        example = f", e.g. {key}={default}" if default is not None and default != "{}" else ""
        return ConfigError(f"{key} must be {expected_words(schema, path)}, got {value!r}{example}")
    first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ConfigError(f"{path or 'the config'} is invalid: {first_line}")


# ---------------------------------------------------------------------------------------- _target_ allowlist

def target_allowed(target: Any, packages: tuple = ()) -> bool:
    """`packages`: the user's own (the config's allowed_targets), e.g. ("mylab",) allows mylab.*."""
    prefixes = ALLOWED_TARGET_PREFIXES + tuple(f"{p}." for p in packages)
    return isinstance(target, str) and target.startswith(prefixes)


def _user_packages(node: Any) -> tuple:
    """The root config's `allowed_targets`: importable package names, none of Python's own modules (naming
    `os` there would let a config run any function)."""
    import re

    value = node.get("allowed_targets") if isinstance(node, dict) else None
    if value is None:
        return ()
    if not isinstance(value, list):
        value = [value]
    for name in value:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
            raise ConfigError(f"allowed_targets={value!r}: {name!r} is not a package name; list your own packages, "
                              f"e.g. allowed_targets=[mylab]")
        if name.split(".")[0] in sys.stdlib_module_names or name.split(".")[0] == "builtins":
            raise ConfigError(f"allowed_targets={value!r}: {name} is part of Python itself, which a config may not "
                              f"call into; list only your own packages, e.g. allowed_targets=[mylab]")
    return tuple(value)


def check_targets(node: Any, prefix: str = "", packages: tuple | None = None) -> None:
    """Every `_target_` under `node` names a class of layerwise, torch, lightning or of a package the root
    config lists in `allowed_targets`."""
    if packages is None:
        packages = _user_packages(node) if not prefix else ()
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if k == "_target_" and path in USER_TARGETS:
                continue  # the user's own rule, network or dataset: imported and checked where it is used
            if k == "_target_" and v is not None and v != "???" and not target_allowed(v, packages):
                package = str(v).split(".")[0] or "mypackage"
                allowed = ", ".join(f"{p.rstrip('.')}.*" for p in ALLOWED_TARGET_PREFIXES + tuple(
                    f"{p}." for p in packages))
                fix = ("point it at one of those" if package in sys.stdlib_module_names or package == "builtins"
                       else f"if {package} is your own package, allow it with allowed_targets=[{package}]")
                raise ConfigError(f"{path}={v!r} is not allowed: a config may only name classes of {allowed}; {fix}")
            check_targets(v, path, packages)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_targets(v, f"{prefix}[{i}]", packages)


def check_hydra_targets() -> None:
    """The `hydra.callbacks` of the running Hydra job (Hydra instantiates them itself, before the job starts:
    this stops the run, it cannot stop that constructor from having run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    callbacks = HydraConfig.get().get("callbacks")
    if callbacks:
        check_targets(OmegaConf.to_container(callbacks, resolve=False), "hydra.callbacks")


# ------------------------------------------------------------------------------------------------ validate

def validate(cfg: DictConfig) -> RootSchema:
    """Check `cfg` against the schema; ConfigError (one line) on the first problem. Returns the typed config."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as err:
        path = getattr(err, "full_key", "") or "a value"
        raise ConfigError(f"{path} cannot be resolved ({str(err).splitlines()[0]}); fix the interpolation") from None
    check_targets(container)
    check_hydra_targets()
    # to_object would quietly fill a ??? with the schema's default (e.g. data.root of data=image_folder).
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} has no value (???); set it on the command line, e.g. {missing[0]}=...")
    split_lightning_args(container)  # trainer keys that are lightning.Trainer's, checked and set aside
    schema = _schema_for(container)
    try:
        merged = OmegaConf.merge(schema, container)
        check_values(merged, schema)  # non-finite floats, integers beyond int64: before any range check
        typed = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _translate(err, schema, container) from None
    _add_defaults(cfg, merged)
    return typed


def _add_defaults(cfg: DictConfig, merged: DictConfig) -> None:
    """Keys an options dataclass has and the composed config lacks (a user's dataset options with no YAML line)
    are added to `cfg` with their defaults, so the run reads what was checked; nothing present is changed."""
    for key in merged.keys():
        node = merged._get_node(key)
        if key not in cfg:
            with open_dict(cfg):
                cfg[key] = OmegaConf.to_container(node) if isinstance(node, (DictConfig, ListConfig)) else node._value()
        elif isinstance(node, DictConfig) and not node._is_none() and isinstance(cfg._get_node(key), DictConfig) \
                and not cfg._get_node(key)._is_none():
            _add_defaults(cfg[key], node)


__all__ = ["ALLOWED_TARGET_PREFIXES", "RootSchema", "check_hydra_targets", "check_targets", "target_allowed",
           "validate"]

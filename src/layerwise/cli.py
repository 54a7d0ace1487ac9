"""Translation of the original thesis code's command-line flags into Hydra overrides.

`python main.py --dgl --device cuda:0 --epochs 100` becomes
`python main.py method=dgl trainer.accelerator=gpu trainer.devices=[0] trainer.max_epochs=100`;
the translation is printed so users learn the override syntax. Hydra's own flags pass through.
`python main.py --help` lists the config groups and these flags (conf/hydra/help/layerwise.yaml, resolvers below).
"""
from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Callable

# The thesis spelled models like "VGG16" or "BasicCNN"; keys are lower-case without separators.
MODEL_NAMES = {"basiccnn": "basic_cnn", "basic": "basic_cnn", "mlp": "mlp", "vgg11": "vgg11", "vgg11c": "vgg11c",
               "vgg13": "vgg13", "vgg16": "vgg16", "vgg19": "vgg19", "vgg8b": "vgg8b",
               "lenet": "lenet", "lenet5": "lenet"}


class LegacyFlagError(ValueError):
    """A legacy flag that is unknown or has a bad value."""


def _model(value: str) -> list[str]:
    key = value.lower().replace("-", "").replace("_", "")
    if key not in MODEL_NAMES:
        raise LegacyFlagError(f"--model {value}: unknown model; choose one of {sorted(set(MODEL_NAMES.values()))}")
    return [f"model={MODEL_NAMES[key]}"]


def _device(value: str) -> list[str]:
    if value == "cpu":
        return ["trainer.accelerator=cpu", "trainer.devices=1"]
    match = re.fullmatch(r"cuda(?::(\d+))?", value)
    if not match:
        raise LegacyFlagError(f"--device {value}: expected cpu, cuda or cuda:N")
    return ["trainer.accelerator=gpu", f"trainer.devices=[{match.group(1) or 0}]"]


def _set(key: str) -> Callable[[str], list[str]]:
    return lambda value: [f"{key}={value}"]


def _choice(group: str) -> Callable[[str], list[str]]:
    return lambda value: [f"{group}={value.lower()}"]


# Flags that take a value.
VALUE_FLAGS: dict[str, Callable[[str], list[str]]] = {
    "--model": _model,
    "--device": _device,
    "--dataset": _choice("data"),
    "--epochs": _set("trainer.max_epochs"),
    "--batch_size": _set("data.batch_size"),
    "--learning_rate": _set("optimizer.lr"),
    "--optimizer_type": _choice("optimizer"),
    "--momentum": _set("optimizer.momentum"),
    "--weight_decay": _set("optimizer.weight_decay"),
    "--dropout_prob": _set("model.dropout"),
    "--padding_mode": _set("model.padding_mode"),
    "--pred_aux_type": _set("method.aux.type"),
    "--aux_mlp_n_hidden_layers": _set("method.aux.n_hidden_layers"),
    "--aux_mlp_hidden_dim": _set("method.aux.hidden_dim"),
    "--path": _set("paths.output_root"),
    "--log_interval": _set("trainer.log_every_n_steps"),
    "--seed": _set("seed"),
    "--data_path": _set("data.root"),
    "--pred_loss_weight": _set("method.pred_weight"),
    "--ssl_loss_weight": _set("method.ssl_weight"),
    "--last_gradient_weight": _set("method.last_gradient_weight"),
    "--first_trainable_block": _set("method.first_trainable_block"),
}

# Option flags of one rule family: the methods they apply to; the first is implied when none is chosen.
OPTION_METHODS: dict[str, tuple[str, ...]] = {
    **{f: ("ssl",) for f in ("--shift_ssl_labels", "--upsample", "--pred_loss_weight", "--ssl_loss_weight")},
    **{f: ("dgl",) for f in ("--is_direct_global", "--use_last_gradient", "--last_gradient_weight")},
    "--first_trainable_block": ("dgl", "ssl", "random_features"),
}

# Switches (no value).
SWITCH_FLAGS: dict[str, list[str]] = {
    "--dgl": ["method=dgl"],
    "--bp": ["method=bp"],
    "--dni": ["method=dni"],
    "--cdni": ["method=cdni"],
    "--ssl": ["method=ssl"],
    "--fa": ["method=fa"],
    "--dfa": ["method=dfa"],
    "--sign_symmetry": ["method=sign_symmetry"],
    "--shift_ssl_labels": ["method.shift=true"],
    "--upsample": ["method.upsample=bilinear"],
    "--is_direct_global": ["method.direct_global=true"],
    "--use_last_gradient": ["method.direct_global=true"],
    "--disable_random_crop": ["data.augment.random_crop=false"],
    "--disable_horizontal_flip": ["data.augment.horizontal_flip=false"],
    "--disable_normalization": ["data.normalize=none"],
    "--disable_augmentation": ["data.augment.random_crop=false", "data.augment.horizontal_flip=false"],
    "--enable_random_erasing": ["data.augment.random_erasing=true"],
    "--enable_random_resized_crop": ["data.augment.random_resized_crop=true"],
    "--enable_gaussian_normalization": ["data.normalize=gaussian"],
}

# What `--help` shows for the value flags that are not a plain `key=<value>`.
VALUE_HELP = {
    "--model": "model=<name>  (VGG16 -> vgg16, BasicCNN -> basic_cnn)",
    "--device": "cpu -> trainer.accelerator=cpu trainer.devices=1; "
                "cuda[:N] -> trainer.accelerator=gpu trainer.devices=[N]",
}
# Config groups that are building blocks other configs include (conf/shared: keys every data/model/optimizer
# config shares), not something to choose on the command line; `--help` leaves them out.
HIDDEN_GROUPS = ("shared", "options")

# Hydra's own flags: those taking a value, and switches.
HYDRA_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--package", "-p",
                     "--experimental-rerun", "--shell-completion", "-sc"}
HYDRA_SWITCHES = {"-m", "--multirun", "--cfg", "-c", "--help", "-h", "--hydra-help", "--version", "--resolve",
                  "--info", "-i", "--run", "-r"}
HYDRA_CFG_CHOICES = {"job", "hydra", "all"}


def _suggest(flag: str) -> str:
    known = [*VALUE_FLAGS, *SWITCH_FLAGS, *HYDRA_VALUE_FLAGS, *HYDRA_SWITCHES]
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else "; see README (legacy flags) or use key=value overrides"


def translate(argv: list[str]) -> tuple[list[str], list[str]]:
    """Returns (new argv for Hydra, the overrides produced from legacy flags)."""
    out, produced, used, i = [], [], [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            out.append(arg)
            i += 1
            continue
        flag, eq, inline = arg.partition("=")
        if flag in HYDRA_SWITCHES:
            out.append(arg)
            # --cfg / --info take an optional word (job|hydra|all, or an info topic).
            if flag in ("--cfg", "-c", "--info", "-i") and i + 1 < len(argv) and not argv[i + 1].startswith("-") \
                    and "=" not in argv[i + 1]:
                out.append(argv[i + 1])
                i += 1
            i += 1
        elif flag in HYDRA_VALUE_FLAGS:
            out.append(arg)
            if not eq and i + 1 < len(argv):
                out.append(argv[i + 1])
                i += 1
            i += 1
        elif flag in SWITCH_FLAGS:
            produced += SWITCH_FLAGS[flag]
            i += 1
        elif flag in VALUE_FLAGS:
            if eq:
                value = inline
            elif i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
            else:
                raise LegacyFlagError(f"{flag} needs a value, e.g. {flag} 10")
            produced += VALUE_FLAGS[flag](value)
            i += 1
        else:
            raise LegacyFlagError(f"unknown flag {flag}{_suggest(flag)}")
        used.append(flag)
    produced = _imply_method(used, out, produced)
    return out + produced, produced


def _chosen_method(hydra_args: list[str], produced: list[str]) -> str | None:
    chosen = [a.split("=", 1)[1] for a in [*hydra_args, *produced] if a.startswith("method=")]
    return chosen[-1] if chosen else None


def _imply_method(used: list[str], hydra_args: list[str], produced: list[str]) -> list[str]:
    """Rule options need their rule: imply it when no method was chosen, refuse a method they do not fit."""
    options = [f for f in used if f in OPTION_METHODS]
    if not options:
        return produced
    method = _chosen_method(hydra_args, produced)
    if method is None:
        return [f"method={OPTION_METHODS[options[0]][0]}", *produced]
    if "," in method:  # a sweep over methods: let each job's config decide
        return produced
    for flag in options:
        if method not in OPTION_METHODS[flag]:
            fits = " or ".join(f"--{m}" if f"--{m}" in SWITCH_FLAGS else f"method={m}" for m in OPTION_METHODS[flag])
            raise LegacyFlagError(f"{flag} does not apply to method={method}; use it with {fits}")
    return produced


def translate_argv(argv: list[str]) -> list[str]:
    """Translate and print the translation; on a bad flag print one line and exit 2."""
    try:
        new_argv, produced = translate(argv)
    except LegacyFlagError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if produced:
        print(f"legacy flags -> overrides: {' '.join(produced)}", file=sys.stderr)
    return lightning_trainer_overrides(new_argv)


def lightning_trainer_overrides(argv: list[str]) -> list[str]:
    """`trainer.<a Lightning Trainer argument>=v` as `++trainer.<arg>=v`: the composed config lacks the key."""
    from layerwise.config.groups import TRAINER_KEYS
    from layerwise.config.trainer_args import force_add_trainer_args

    return force_add_trainer_args(argv, TRAINER_KEYS)


def legacy_flags_help() -> str:
    """The legacy flags and the overrides they become, one per line (for `--help`)."""
    rows = [(flag, " ".join(overrides)) for flag, overrides in SWITCH_FLAGS.items()]
    rows += [(f"{flag} <value>", VALUE_HELP.get(flag) or " ".join(to_overrides("<value>")))
             for flag, to_overrides in VALUE_FLAGS.items()]
    width = max(len(flag) for flag, _ in rows)
    return "\n".join(f"{flag:<{width}}  {overrides}" for flag, overrides in rows)


def config_groups_help() -> str:
    """`group: option, ...` for every config group one chooses from: Hydra's own listing less HIDDEN_GROUPS."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    lines: list[str] = []

    def add(parent: str) -> None:
        for name in sorted(loader.list_groups(parent)):
            group = f"{parent}/{name}" if parent else name
            if group == "hydra" or group in HIDDEN_GROUPS:
                continue
            options = sorted(loader.get_group_options(group))
            if options:
                lines.append(f"{group}: {', '.join(options)}")
            add(group)

    add("")
    return "\n".join(lines)


#: What --help describes one per line: (group, heading).
CATALOG = (("method", "Learning rules (method=)"), ("model", "Models (model=)"), ("data", "Datasets (data=)"),
           ("experiment", "Presets (experiment=)"))
DESCRIPTION_WIDTH = 96


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    line = line.split(" — ", 1)[-1]  # presets start with their own name
    return line if len(line) <= DESCRIPTION_WIDTH else line[:DESCRIPTION_WIDTH - 3].rstrip() + "..."


def _yaml_description(path: Path) -> str:
    """The first comment line of a config file (not Hydra's `# @package` header)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return _first_line(line.lstrip("#"))
        if line.strip() and not line.startswith("#"):
            break
    return ""


def _rule_description(name: str) -> str:
    """The first line of the rule module's docstring, read without importing it (no torch for --help)."""
    import ast

    import layerwise.rules

    for folder in layerwise.rules.__path__:
        path = Path(folder) / f"{name}.py"
        if path.is_file():
            return _first_line(ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "")
    from importlib.metadata import entry_points

    found = [ep.value for ep in entry_points(group=layerwise.rules.ENTRY_POINT_GROUP) if ep.name == name]
    return f"(installed: {found[0]})" if found else ""


def catalog_help() -> str:
    """Every rule, model, dataset and preset with one line on what it is: a preset's first comment line, or for a
    rule without a YAML file its module's docstring. Found in every config directory on the search path, so a
    lab's own presets (--config-dir) are described too."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    folders = [Path(s.path) for s in loader.get_sources() if s.scheme() == "file"]
    sections = []
    for group, heading in CATALOG:
        names = sorted(loader.get_group_options(group))
        rows = []
        for name in names:
            files = [f / group / f"{name}.yaml" for f in folders if (f / group / f"{name}.yaml").is_file()]
            text = _yaml_description(files[0]) if files else (_rule_description(name) if group == "method" else "")
            rows.append((name, text))
        width = max((len(n) for n, _ in rows), default=0)
        sections.append(f"{heading}\n" + "\n".join(f"  {n:<{width}}  {d}".rstrip() for n, d in rows))
    return "\n\n".join(sections)


HELP_SECTIONS: dict[str, Callable[[], str]] = {"groups": config_groups_help, "legacy_flags": legacy_flags_help,
                                               "catalog": catalog_help}


HELP_FLAGS = ("--help", "-h")


def register_help_resolvers(args: list[str] | None = None) -> None:
    """`${layerwise_help:groups}` and `${layerwise_help:legacy_flags}`, which conf/hydra/help/layerwise.yaml uses.

    With `args` (the command line) and no --help in them the sections resolve to nothing: OmegaConf dereferences
    hydra.help.template while it merges configs, and listing every group costs ~1.5 s a composition."""
    from omegaconf import OmegaConf

    wanted = args is None or any(flag in args for flag in HELP_FLAGS)
    OmegaConf.register_new_resolver("layerwise_help", lambda section: HELP_SECTIONS[section]() if wanted else "",
                                    replace=True)

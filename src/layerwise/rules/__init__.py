"""Learning rules, one file each: the rule's class, with its options dataclass (`Options`) imported from
rules/options/<name>.py, where it is defined without torch (the CLI checks a config before torch is imported).

A rule's name is its module's name (rules/dgl.py holds method=dgl). Rules are found without a list to edit:
- every module of this package but the shared parts below;
- installed packages' entry points in the group `layerwise.rules` (`myrule = "mylab.rules:MyRule"`);
- `method._target_=mylab.rules.MyRule`: any importable LearningRule subclass, by its path.
`rule_names()` lists them without importing a rule (the CLI's --help); `rule_class` imports one; `options_class`
finds a config's options dataclass, importing no torch for layerwise's own rules (nor for an installed package's
rule whose options it declares in the entry-point group `layerwise.rule_options`).
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from layerwise.errors import ConfigError
from layerwise.options import import_object

#: Modules of this package that rules share, not rules: the base class, the FA family's feedback layers, the
#: pre-pool hooks of predsim and ssl, the direct projections of dfa and drtp.
SHARED_MODULES = ("base", "feedback", "pre_pool", "direct")
ENTRY_POINT_GROUP = "layerwise.rules"
#: An installed package's rule's options, by the rule's name, when they live apart from its (torch) module.
OPTIONS_ENTRY_POINT_GROUP = "layerwise.rule_options"


def package_rules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(__path__) if m.name not in SHARED_MODULES
            and not m.name.startswith("_") and not m.ispkg]  # not rules/options/


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def rule_names() -> list[str]:
    """Every rule `method=<name>` can name: this package's, then installed packages' (entry points)."""
    return sorted({*package_rules(), *_entry_points()})


def _checked(cls, where: str):
    from layerwise.rules.base import LearningRule

    if not (isinstance(cls, type) and issubclass(cls, LearningRule)):
        raise ConfigError(f"{where} is not a learning rule (a subclass of layerwise.rules.base.LearningRule)")
    return cls


def import_rule(path: str):
    """The rule class at a `module.Class` import path (method._target_)."""
    return _checked(import_object(path, "method._target_"), f"method._target_={path}")


def rule_class(name: str):
    """The class of the rule named `name` (its module's name, or an entry point's)."""
    if name in package_rules():
        module = importlib.import_module(f"{__name__}.{name}")
        from layerwise.rules.base import LearningRule

        classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, LearningRule)
                   and c.__module__ == module.__name__ and c.name == name]
        if len(classes) != 1:
            raise ConfigError(f"layerwise/rules/{name}.py must define one LearningRule subclass with name = {name!r}")
        return classes[0]
    points = _entry_points()
    if name in points:
        return _checked(points[name].load(), f"the entry point {name} = {points[name].value}")
    raise ConfigError(f"method={name!r} is not known; available: {', '.join(rule_names())}")


def class_for(cfg):
    """The class a method config runs: `_target_` if set, else `rule` (a preset reusing a rule), else `name`."""
    target = cfg.get("_target_")
    if target:
        return import_rule(str(target))
    return rule_class(str(cfg.get("rule") or cfg.get("name")))


def options_class(cfg) -> type:
    """The options dataclass a method config is checked against (what `class_for(cfg).Options` is), importing the
    rule's module only where its options live nowhere else: a `_target_`, an entry point's rule without a
    `layerwise.rule_options` entry, a rule of this package without a module in rules/options/."""
    if cfg.get("_target_"):
        return class_for(cfg).Options
    name = str(cfg.get("rule") or cfg.get("name"))
    if name in package_rules():
        module_name = f"{__name__}.options.{name}"
        try:
            return importlib.import_module(module_name).Options
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
        return rule_class(name).Options
    declared = {ep.name: ep for ep in entry_points(group=OPTIONS_ENTRY_POINT_GROUP)}
    if name in declared and name in _entry_points():
        return declared[name].load()
    return rule_class(name).Options


def build_rule(cfg):
    return class_for(cfg)(cfg)


__all__ = ["build_rule", "class_for", "import_rule", "options_class", "rule_class", "rule_names"]

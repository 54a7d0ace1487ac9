"""The config nodes derived from the options dataclasses, served to Hydra as the search path entry `layerwise://`.

`method=<name>` composes the defaults of that rule's `Options` (plus `name`), so a rule needs no YAML: a file in
conf/method/ (or a user's --config-dir) with the same name is found first and is a preset, which includes the
rule's node in its defaults list when it changes only some options (conf/method/cdni.yaml: `- dni`).
`shared/model` and `shared/data` are the defaults of `ModelOptions` and `DataOptions`, which every preset in
conf/model and conf/data starts from.

Hydra finds these classes through the `hydra_plugins.layerwise` package in every process that composes a config
(sweep workers included). The nodes of layerwise's own rules, models and datasets are read from defaults.yaml,
generated from the dataclasses (`python -m layerwise.config.source`; tests/test_layout.py fails, naming that
command, when it differs from them): composing a config (`--help`, `--cfg job`) then imports no torch. A name it
does not hold (a user's rule from an entry point, a rule added since) is derived from its options dataclass
(layerwise.rules.options_class: torch-free for layerwise's own rules).
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

SCHEME = "layerwise"


def _rule_names() -> List[str]:
    from layerwise.rules import rule_names

    return rule_names()


def _rule_node(name: str) -> Dict[str, Any]:
    from layerwise.rules import options_class

    return options_node(options_class({"name": name}), name=name)


def options_node(options: type, **values: Any) -> Dict[str, Any]:
    """The defaults of an options dataclass as a plain mapping (untyped: layerwise.config.schema checks the
    composed config and words its errors), with `values` set."""
    node = OmegaConf.to_container(OmegaConf.structured(options), resolve=False)
    node.update(values)
    return node


def _shared_node(name: str) -> Dict[str, Any]:
    """The options every model / every dataset has: the base the presets in conf/model and conf/data include
    (`- /shared@_here_: model`)."""
    if name == "model":
        from layerwise.models import ModelOptions

        return options_node(ModelOptions)
    from layerwise.data.options import DataOptions

    return options_node(DataOptions)


def _arches() -> List[str]:
    from layerwise.models import MODEL_OPTIONS

    return list(MODEL_OPTIONS)


def _arch_node(arch: str) -> Dict[str, Any]:
    from layerwise.models import MODEL_OPTIONS

    return options_node(MODEL_OPTIONS[arch], arch=arch)


def _datasets() -> List[str]:
    from layerwise.data.options import DATASETS

    return list(DATASETS)


def _dataset_node(name: str) -> Dict[str, Any]:
    from layerwise.data.options import DATA_OPTIONS, DataOptions

    return options_node(DATA_OPTIONS.get(name, DataOptions), name=name)


SNAPSHOT = Path(__file__).with_name("defaults.yaml")


@functools.lru_cache(maxsize=1)
def _snapshot() -> Dict[str, Dict[str, Any]]:
    """defaults.yaml as plain values. Read with libyaml's C loader when PyYAML has it: the same values as
    OmegaConf.load for this file, which OmegaConf.to_yaml wrote (tests/test_layout.py), in 15 ms instead of 210 ms
    of every command's start-up."""
    if not SNAPSHOT.is_file():
        return {}
    import yaml

    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None:
        return OmegaConf.to_container(OmegaConf.load(SNAPSHOT))
    with open(SNAPSHOT, encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)


def _node(group: str, name: str) -> Dict[str, Any]:
    saved = _snapshot().get(group, {})
    return dict(saved[name]) if name in saved else GROUPS[group][1](name)


def _names(group: str) -> List[str]:
    return sorted({*_snapshot().get(group, {}), *GROUPS[group][0]()}) if group == "method" else \
        sorted(_snapshot().get(group) or GROUPS[group][0]())


def build_snapshot() -> Dict[str, Dict[str, Any]]:
    """Every node of layerwise's own rules, models and datasets, from their options dataclasses."""
    from layerwise.rules import package_rules

    names = {"method": package_rules()}  # not the entry points' rules: those are the user's
    return {group: {name: make(name) for name in sorted(names.get(group) or list_names())}
            for group, (list_names, make) in GROUPS.items()}


#: group -> (the names it offers; the node of one name). Listing `method` imports no rule (--help lists it);
#: the `options/*` groups, which only presets include, import their package when Hydra asks.
GROUPS: Dict[str, Tuple[Callable[[], List[str]], Callable[[str], Dict[str, Any]]]] = {
    "method": (_rule_names, _rule_node),
    "shared": (lambda: ["data", "model"], _shared_node),
    "options/model": (_arches, _arch_node),     # conf/model/<preset>.yaml: - /options/model@_here_: <arch>
    "options/data": (_datasets, _dataset_node),  # conf/data/<preset>.yaml: - /options/data@_here_: <dataset>
}


class OptionsConfigSource(ConfigSource):
    @staticmethod
    def scheme() -> str:
        return SCHEME

    def available(self) -> bool:
        return True

    @staticmethod
    def _split(config_path: str) -> Tuple[str, str]:
        path = config_path.strip("/")
        path = path[:-len(".yaml")] if path.endswith(".yaml") else path
        group, _, name = path.rpartition("/")
        return group, name

    def load_config(self, config_path: str) -> ConfigResult:
        group, name = self._split(config_path)
        node = _node(group, name)
        return ConfigResult(config=OmegaConf.create(node), path=f"{SCHEME}://{self.path}", provider=self.provider,
                            header={"package": None})

    @staticmethod
    def _subgroups(path: str) -> List[str]:
        prefix = f"{path}/" if path else ""
        return sorted({g[len(prefix):].split("/")[0] for g in GROUPS if g.startswith(prefix) and g != path})

    def is_group(self, config_path: str) -> bool:
        path = config_path.strip("/")
        return path in GROUPS or bool(self._subgroups(path))

    def is_config(self, config_path: str) -> bool:
        group, name = self._split(config_path)
        return group in GROUPS and name in _names(group)

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        path = config_path.strip("/")
        found = self._subgroups(path) if results_filter in (None, ObjectType.GROUP) else []
        if path in GROUPS and results_filter in (None, ObjectType.CONFIG):
            found += _names(path)
        return found


class OptionsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="layerwise", path=f"{SCHEME}://")


if __name__ == "__main__":  # python -m layerwise.config.source: rewrite defaults.yaml from the dataclasses
    HEADER = "# Generated by `python -m layerwise.config.source` from the options dataclasses; do not edit.\n"
    SNAPSHOT.write_text(HEADER
                        + OmegaConf.to_yaml(OmegaConf.create(build_snapshot())))
    print(f"wrote {SNAPSHOT}", file=sys.stderr)

"""Typed schemas for config nodes that name a class by `_target_` (an optimizer, a callback, a logger).

The schema is derived from the class's signature: its arguments become the fields, typed by their annotations
where OmegaConf can check the type (int, float, bool, str, Optional and lists of those; a Literal of strings is a
string checked against its choices), anything else is taken as given. So a misspelt argument is refused naming
the arguments the class accepts, and a wrong type is the schema's usual one line, before any data is loaded.

Importing a class to read its signature imports its package (torch, Lightning): that happens here, lazily, only
for a config that uses such a node, and after the torch-free checks of the `_target_` allowlist.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import pathlib
import types
import typing
from typing import Any, ClassVar, List, Optional

from omegaconf import MISSING

from layerwise.errors import ConfigError
from layerwise.options import import_object

#: Keys of a `_target_` node that Hydra's instantiate reads itself.
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
SIMPLE = (bool, int, float, str)


def target_class(path: str, target: Any):
    """The class (or callable) a `_target_` names; one line if it cannot be imported."""
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"{path}._target_={target!r} must be an import path such as torch.optim.RMSprop")
    return import_object(target, f"{path}._target_")


def _signature(cls) -> inspect.Signature:
    try:
        return inspect.signature(cls, eval_str=True)
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: the raw signature, types unchecked
        return inspect.signature(cls)


def arguments(cls, skip: int = 0) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword arguments of `cls` (after `skip` leading positional ones, e.g. an optimizer's params) and
    whether it also takes **kwargs."""
    params = [p for p in _signature(cls).parameters.values() if p.kind is not p.VAR_POSITIONAL]
    named = [p for p in params if p.kind is not p.VAR_KEYWORD]
    return {p.name: p for p in named[skip:]}, len(named) != len(params)


def _simple(tp: Any) -> Any:
    """The OmegaConf-checkable type of an annotation, or Any."""
    if tp in SIMPLE:
        return tp
    if tp is pathlib.Path or (isinstance(tp, type) and issubclass(tp, pathlib.PurePath)):
        return str
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal and args and all(isinstance(a, str) for a in args):
        return str
    if origin in (typing.Union, types.UnionType):
        inner = {_simple(a) for a in args if a is not type(None)} - {Any}
        if type(None) in args and len(inner) == 1:
            return Optional[inner.pop()]
        if inner and inner <= {int, float} and not any(a is type(None) for a in args):
            return float if float in inner else int
        if inner == {str}:  # Union[str, Path]
            return str
        return Any
    if origin in (list, tuple, List, typing.Tuple) and args:
        elements = {a for a in args if a is not Ellipsis}
        if len(elements) == 1 and next(iter(elements)) in SIMPLE:
            return List[next(iter(elements))]
    return Any


def _fits(tp: Any, value: Any) -> bool:
    if value is None or value is MISSING:
        return True
    base = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Union else tp
    if typing.get_origin(base) is list:
        return isinstance(value, (list, tuple)) and all(_fits(typing.get_args(base)[0], v) for v in value)
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return base is Any or (isinstance(value, base) and not (base is int and isinstance(value, bool)))


def _field(param: inspect.Parameter) -> tuple[Any, Any]:
    tp = _simple(param.annotation) if param.annotation is not param.empty else Any
    default = MISSING if param.default is param.empty else param.default
    if not _fits(tp, default):  # e.g. a Tensor default: keep the default, check nothing
        tp = Any
    if default is None and tp is not Any and typing.get_origin(tp) is not typing.Union:
        tp = Optional[tp]
    if isinstance(default, (list, tuple)):
        value = list(default)
        return tp, dataclasses.field(default_factory=lambda: list(value))
    if not (default is MISSING or default is None or isinstance(default, SIMPLE)):
        return Any, dataclasses.field(default=None)  # an object default (a callable, an enum): not a YAML value
    return tp, dataclasses.field(default=default)


def choices(cls, skip: int = 0) -> dict[str, tuple]:
    """Arguments typed as a Literal of strings: their allowed values."""
    params, _ = arguments(cls, skip)
    found = {}
    for name, p in params.items():
        ann = p.annotation
        for tp in (ann, *typing.get_args(ann)):
            if typing.get_origin(tp) is typing.Literal:
                found[name] = typing.get_args(tp)
    return found


class TargetNode:
    """Base of the derived schemas. `PARTIAL`: the default of `_partial_` (an optimizer is built per train
    group, so it is a partial waiting for the parameters)."""
    PATH: ClassVar[str] = ""
    PARTIAL: ClassVar[bool] = False
    TARGET: ClassVar[Any] = None
    SKIP: ClassVar[int] = 0

    def __post_init__(self) -> None:
        for name, allowed in choices(self.TARGET, self.SKIP).items():
            value = getattr(self, name, None)
            if value is not None and value not in allowed:
                raise ConfigError(f"{self.PATH}.{name}={value!r} is not known; choose one of "
                                  f"{', '.join(map(str, allowed))}")


def check_keys(path: str, cls, node: dict, skip: int = 0, own: tuple = ()) -> None:
    """Every key of `node` is an argument of `cls` (or a Hydra key, or one of `own`: layerwise's keys)."""
    params, takes_kwargs = arguments(cls, skip)
    if takes_kwargs:
        return
    for key in node:
        if key in params or key in HYDRA_KEYS or key in own:
            continue
        close = difflib.get_close_matches(str(key), list(params), n=1, cutoff=0.6)
        hint = f"did you mean {path}.{close[0]}? " if close else ""
        raise ConfigError(f"{path}.{key} is not an argument of {node.get('_target_') or _name(cls)}, which takes "
                          f"{', '.join(params) or 'no arguments'}; {hint}remove it or fix its name")


def _name(cls) -> str:
    return f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', cls)}".lstrip(".")


@functools.lru_cache(maxsize=128)
def _derived(cls, path: str, skip: int, extra: tuple, base: type) -> type:
    params, _ = arguments(cls, skip)
    fields = [("_target_", str, dataclasses.field(default=MISSING)),
              ("_partial_", bool, dataclasses.field(default=base.PARTIAL))]
    own = {f.name for f in dataclasses.fields(base)} if dataclasses.is_dataclass(base) else set()
    fields += [(name, *_field(p)) for name, p in params.items() if name not in own]
    fields += [(name, Any, dataclasses.field(default=None)) for name in extra if name not in params]
    return dataclasses.make_dataclass(f"{getattr(cls, '__name__', 'Target')}Schema", fields, bases=(base,),
                                      namespace={"PATH": path, "TARGET": cls, "SKIP": skip})


def derived_schema(path: str, node: dict, skip: int = 0, base: type = TargetNode, own: tuple = ()) -> type:
    """The schema of the `_target_` node at `path`: unknown keys refused (naming the accepted arguments), the
    arguments typed from the signature. `base`: a dataclass adding layerwise's own keys (`own`)."""
    cls = target_class(path, node.get("_target_"))
    check_keys(path, cls, node, skip, own)
    params, _ = arguments(cls, skip)
    # Hydra's other keys (_recursive_, _convert_) and a **kwargs class's own: typed as given, only when present.
    extra = tuple(sorted(k for k in node if k not in params and k not in ("_target_", "_partial_") and k not in own))
    schema = _derived(cls, path, skip, extra, base)
    required = [n for n, p in params.items() if p.default is p.empty and n not in node and n not in own]
    if required:
        raise ConfigError(f"{path}.{required[0]} has no value; {_name(cls)} needs it, e.g. "
                          f"{path}.{required[0]}=...")
    return schema


def build(node: Any, **fill: Any):
    """Instantiate a `_target_` node with Hydra. `fill`: arguments the node leaves out that layerwise supplies
    (a logger's save_dir), passed only if the class takes them. A null the schema stored for an argument whose
    default is an object (not a YAML value) is left out, so the class's own default applies."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    given = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    cls = import_object(given["_target_"], "_target_")
    params, _ = arguments(cls)
    for name, value in fill.items():
        if name in params and given.get(name) in (None, ""):
            given[name] = value
    for name, param in params.items():
        if given.get(name, 0) is None and param.default is not param.empty and param.default is not None:
            del given[name]
    return instantiate(given, _convert_="all")

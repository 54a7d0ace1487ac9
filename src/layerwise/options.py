"""Range and choice checks for the schema's `__post_init__`s, each failing with one ConfigError line.

Every message names the key path, the bad value, what is allowed and a fix (`e.g. key=value`). A dataclass
knows its own place in the config through the class attribute `PATH` (e.g. "method.aux"), since OmegaConf
builds it without telling it where it sits.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, ListConfig

from layerwise.errors import ConfigError


def key(obj: Any, name: str) -> str:
    prefix = getattr(obj, "PATH", "")
    return f"{prefix}.{name}" if prefix else name


def shown(value: Any) -> str:
    """A value as the user likely typed it: OmegaConf turns lr=-1 into -1.0 in a float field."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def bounds_words(low, high, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"{'<' if high_open else '<='} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def in_range(obj: Any, name: str, low=None, high=None, *, low_open: bool = False, high_open: bool = False,
             example=None, what: str = "") -> None:
    """`obj.name` within the bounds (None passes: Optional fields are typed, and null means 'off')."""
    value = getattr(obj, name)
    if value is None:
        return
    path = key(obj, name)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        hint = f" ({what})" if what else ""
        fix = f", e.g. {path}={example}" if example is not None else ""
        bounds = bounds_words(low, high, low_open, high_open)
        raise ConfigError(f"{path}={shown(value)} is out of range; it must be {bounds}{hint}{fix}")


def items_in_range(obj: Any, name: str, low=None, high=None, *, length: int | None = None, min_length: int = 0,
                   example: str = "") -> None:
    """Every item of the list `obj.name` within the bounds, and the list of the given length."""
    values = getattr(obj, name)
    if values is None:
        return
    path = key(obj, name)
    fix = f", e.g. {path}={example}" if example else ""
    if length is not None and len(values) != length:
        raise ConfigError(f"{path}={list(values)} must have {length} items{fix}")
    if len(values) < min_length:
        raise ConfigError(f"{path}={list(values)} must have at least {min_length} items{fix}")
    bad = [v for v in values if (low is not None and v < low) or (high is not None and v > high)]
    if bad:
        raise ConfigError(f"{path}={list(values)} is out of range; every item must be "
                          f"{bounds_words(low, high, False, False)}{fix}")


def one_of(obj: Any, name: str, choices: Iterable) -> None:
    value = getattr(obj, name)
    choices = list(choices)
    if value not in choices or (isinstance(value, bool) and not any(c is value for c in choices)):
        named = dict.fromkeys(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)  # 32 and '32'
        raise ConfigError(f"{key(obj, name)}={value!r} is not known; choose one of {', '.join(named)}")


def number_or(obj: Any, name: str, words: Iterable[str], low=None, example=None) -> None:
    """A field that is a word (e.g. auto) or an integer >= low."""
    value = getattr(obj, name)
    words = list(words)
    if value in words and not isinstance(value, bool):
        return
    path = key(obj, name)
    if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise ConfigError(f"{path}={value!r} must be {' or '.join(words)} or an integer{bound}, "
                          f"e.g. {path}={example if example is not None else words[0]}")


def checked_options(options: type, cfg: Any, **defaults: Any):
    """`cfg` (a mapping, or None) on top of the dataclass `options`' defaults, checked by its `__post_init__`s.

    For objects built from code (tests, notebooks): the CLI checks the whole config first, with the key's
    expected type in its message (layerwise.config.schema); here a wrong type is one line too. Returns a
    DictConfig typed by `options`. `defaults` fill fields `cfg` leaves out (e.g. the rule's name).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    given = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
    given = {**{k: v for k, v in defaults.items() if given.get(k) is None}, **given} if defaults else given
    prefix = getattr(options, "PATH", "")
    schema = OmegaConf.structured(options)
    try:
        merged = OmegaConf.merge(schema, given)
        OmegaConf.to_object(merged)  # runs the checks
    except OmegaConfBaseException as err:
        path = getattr(err, "full_key", "") or ""
        where = f"{prefix}.{path}" if prefix and path else (path or prefix or "the options")
        expected = expected_words(schema, path) if path else "of another type"
        if expected != "of another type":
            value = OmegaConf.select(OmegaConf.create(given), path, default=None)
            raise ConfigError(f"{where} must be {expected}, got {value!r}") from None
        raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None
    return merged


NODE_WORDS = {"IntegerNode": "an integer", "FloatNode": "a number", "BooleanNode": "true or false",
              "StringNode": "a string", "ListConfig": "a list", "DictConfig": "a mapping"}
TYPE_WORDS = {int: "integers", float: "numbers", bool: "true or false", str: "strings"}


def expected_words(schema: DictConfig, path: str) -> str:
    """What the schema wants at `path` ("an integer", "a list of integers", ...), from its OmegaConf node."""
    node: Any = schema
    item = "[" in path
    for part in path.split("[")[0].split("."):
        node = node._get_node(part) if isinstance(node, DictConfig) else None
        if node is None:
            return "of another type"
    if isinstance(node, ListConfig) or item:
        element = getattr(node._metadata, "element_type", None)
        words = f"a list of {TYPE_WORDS[element]}" if element in TYPE_WORDS else "a list"
    else:
        words = NODE_WORDS.get(type(node).__name__, "of another type")
    return words + (" or null" if node._is_optional() else "")


SEED_MAX = 2**32 - 1  # numpy's seed range, which Lightning's seed_everything checks


def check_seed(obj: Any, name: str) -> None:
    """A seed numpy accepts (the range Lightning's seed_everything checks)."""
    in_range(obj, name, 0, SEED_MAX, example=0, what="numpy's seed range")


def import_object(path: str, key: str):
    """The object at a `package.module.name` import path (a `_target_` of the user's); one line if it is not there."""
    import importlib

    module, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{key}={path} cannot be imported ({type(err).__name__}: {err}); check the module path and "
                          "that its package is installed or on PYTHONPATH") from None

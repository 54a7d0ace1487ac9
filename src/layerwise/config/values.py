"""Values of the right type that a library or the file system would still refuse, checked for every field at once.

The per-field range checks (`__post_init__`) say what each option means; these say what no option may hold:
- a non-finite float (nan, inf, -inf, or 1e400, which the override parser turns into inf): every comparison with
  nan is false, so a range check alone lets `optimizer.lr=nan` through to a run that diverges at its first
  step. A field that means something by inf opts in by naming itself in its dataclass's `NONFINITE` ClassVar.
- an integer beyond int64, where torch and numpy stop (OverflowError deep inside a library).
- a seed beyond numpy's range, [0, 2**32 - 1] (Lightning's seed_everything raises a ValueError on it).
- a run name the file system refuses as a directory name (too long, a '/', a control character).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from layerwise.errors import ConfigError

INT_MAX = 2**63 - 1           # int64: torch tensors, numpy arrays, C loops
RUN_DIR_PREFIX = "HH-MM-SS_"  # hydra.run.dir names a run <time>_<name> (conf/config.yaml)
DEFAULT_NAME_MAX = 255        # bytes per path component on ext4, xfs, btrfs, APFS, NTFS


def _example(schema: DictConfig | None, path: str) -> str:
    """`, e.g. key=default` from the schema, when the default is a finite value to show."""
    if schema is None:
        return ""
    key = path.split("[")[0]
    default = OmegaConf.select(schema, key, default=None, throw_on_missing=False)
    if isinstance(default, ListConfig):
        default = str(OmegaConf.to_container(default)).replace(" ", "")
    if default is None:
        return ", or null" if _optional(schema, key) else ""
    if isinstance(default, float) and not math.isfinite(default):
        return ""
    return f", e.g. {key}={default}"


def _optional(schema: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(schema, parent) if parent else schema
    child = node._get_node(leaf) if isinstance(node, DictConfig) else None
    return child is not None and child._is_optional()


def _allowed_nonfinite(node: DictConfig) -> tuple:
    object_type = node._metadata.object_type
    return tuple(getattr(object_type, "NONFINITE", ()) or ())


def _check_leaf(path: str, value: Any, nonfinite_ok: bool, schema: DictConfig | None) -> None:
    if isinstance(value, float) and not math.isfinite(value) and not nonfinite_ok:
        raise ConfigError(f"{path}={value} is not a finite number; give a finite value{_example(schema, path)}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
        raise ConfigError(f"{path}={value} is beyond the 64-bit integer range torch and numpy use (|value| <= "
                          f"{INT_MAX}){_example(schema, path)}")


def _walk(node: Any, path: str, nonfinite_ok: bool, schema: DictConfig | None) -> None:
    if isinstance(node, DictConfig):
        if node._is_none() or node._is_missing():
            return
        allowed = _allowed_nonfinite(node)
        for k in node.keys():
            child = node._get_node(k)
            _walk(child, f"{path}.{k}" if path else str(k), k in allowed, schema)
    elif isinstance(node, ListConfig):
        if node._is_none() or node._is_missing():
            return
        for i in range(len(node)):
            _walk(node._get_node(i), f"{path}[{i}]", nonfinite_ok, schema)
    elif node is not None and not node._is_missing():
        _check_leaf(path, node._value(), nonfinite_ok, schema)


def check_values(merged: DictConfig, schema: DictConfig | None = None) -> None:
    """Every leaf of the merged config (typed by the schema): finite floats, int64 integers. `schema` supplies the
    defaults shown as examples. Runs before the `__post_init__`s, which then compare only real numbers."""
    _walk(merged, "", False, schema)


def name_max(directory: Path | None = None) -> int:
    """The longest file name (in bytes) the file system at `directory` (or its nearest existing parent) takes."""
    where = Path(directory) if directory is not None else Path.cwd()
    for candidate in (where, *where.parents):
        try:
            return int(os.pathconf(candidate, "PC_NAME_MAX"))
        except (OSError, ValueError, AttributeError):  # missing dir, no such limit, or no pathconf (Windows)
            continue
    return DEFAULT_NAME_MAX


def check_run_name(name: Any, output_root: Path | None = None) -> None:
    """`name` becomes the run directory's name (<time>_<name>) and the wandb run's: one path component that the
    file system accepts. ConfigError naming the problem otherwise."""
    if name is None:
        return
    name = str(name)
    fix = "e.g. name=dgl_vgg11c_lr0.1"
    if not name.strip():
        raise ConfigError(f"name={name!r} is empty; give the run a name, {fix} (or leave name unset)")
    if "/" in name or "\\" in name:
        raise ConfigError(f"name={name!r} contains a path separator; a run name is one directory name, so use "
                          f"'_' or '-' instead ({fix}), and paths.output_root=... to choose where runs go")
    bad = sorted({c for c in name if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ConfigError(f"name={name!r} contains control characters ({', '.join(repr(c) for c in bad)}), which "
                          f"file systems and terminals refuse or mangle; use printable characters, {fix}")
    try:
        size = len(os.fsencode(RUN_DIR_PREFIX + name))
    except UnicodeError:
        raise ConfigError(f"name={name!r} cannot be encoded as a file name on this system; use plain characters, "
                          f"{fix}") from None
    limit = name_max(output_root)
    if size > limit:
        raise ConfigError(f"name is {size - len(RUN_DIR_PREFIX)} bytes long; the run directory <time>_<name> may "
                          f"have at most {limit} bytes on this file system, so give a name of at most "
                          f"{limit - len(RUN_DIR_PREFIX)} bytes, {fix}")

"""The configuration reference of the manual, generated from the options dataclasses (never written by hand).

A mkdocs hook (mkdocs.yml `hooks:`): the markers in docs/ pages are replaced at build time,
- `<!-- config-reference -->` by every key of every group: field, type, default and the comment beside it in the
  source (or the comment block right above it);
- `<!-- group-options: GROUP -->` by the options of a config group (the YAML files in conf/GROUP/, and for
  `method` every rule the registry knows).
Only the registries are read (layerwise.rules.rule_names/rule_class, layerwise.models.MODEL_OPTIONS,
layerwise.data.DATA_OPTIONS, the dataclasses of layerwise.config.groups), so the page follows the code wherever its
classes live. `python scripts/config_reference.py` prints the reference.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
REFERENCE_MARKER = "<!-- config-reference -->"
OPTIONS_MARKER = re.compile(r"<!-- group-options: ([\w/]+) -->")


# ------------------------------------------------------------------------------------------------ one dataclass

def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source, the subclass's over its bases' (an inherited field keeps its base's)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(_own_field_comments(klass))
    return out


def _own_field_comments(cls: type) -> dict[str, str]:
    """The fields written in `cls` itself: the comment on a field's line(s), after any comment lines right above."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        match = re.match(r"^    (\w+)\s*:", line)  # a field of the class body (not a nested def's line)
        if not match or line.lstrip().startswith("#"):
            continue
        above, i = [], number - 1
        while i >= 1 and lines[i - 1].strip().startswith("#"):
            above.insert(0, comments.get(i, ""))
            i -= 1
        own = [comments[number]] if number in comments else []
        text = " ".join(part for part in [*above, *own] if part)
        if text:
            out[match.group(1)] = text
    return out


def _words(values) -> str:
    return " | ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values)


def field_checks(cls: type) -> dict[str, str]:
    """What each field's `__post_init__` check allows, read from its calls of layerwise.options' checks
    (`one_of`, `in_range`, `items_in_range`, `number_or`): the choices and ranges the schema enforces."""
    from layerwise.options import bounds_words

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        method = klass.__dict__.get("__post_init__")
        if method is None:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(method)))
        except (OSError, TypeError, SyntaxError):
            continue
        namespace = vars(sys.modules[klass.__module__])

        def value(node, namespace=namespace):
            return eval(compile(ast.Expression(node), "<check>", "eval"), dict(namespace))  # noqa: S307 - our code

        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and len(call.args) >= 2
                    and isinstance(call.args[0], ast.Name) and call.args[0].id == "self"
                    and isinstance(call.args[1], ast.Constant)):
                continue
            name, kind = call.args[1].value, call.func.id
            keywords = {k.arg: k.value for k in call.keywords}
            try:
                if kind == "one_of":
                    out[name] = "one of " + _words(value(call.args[2]))
                elif kind in ("in_range", "items_in_range"):
                    low = value(call.args[2]) if len(call.args) > 2 else value(keywords["low"]) if "low" in keywords \
                        else None
                    high = value(call.args[3]) if len(call.args) > 3 else value(keywords["high"]) \
                        if "high" in keywords else None
                    opened = {k: bool(value(keywords[k])) if k in keywords else False
                              for k in ("low_open", "high_open")}
                    text = bounds_words(low, high, opened["low_open"], opened["high_open"])
                    out[name] = f"each item {text}" if kind == "items_in_range" else text
                elif kind == "number_or":
                    low = value(keywords["low"]) if "low" in keywords else None
                    out[name] = f"a number{'' if low is None else ' ' + bounds_words(low, None, False, False)}, or " \
                                + _words(value(call.args[2]))
            except Exception:  # noqa: BLE001 - a check written another way: no note rather than a wrong one
                continue
    return out


def _comments(cls: type) -> dict[str, str]:
    """Comments of `cls` and of the classes it inherits fields from (the nearest definition wins)."""
    merged: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            merged.update(field_comments(klass))
    return merged


def _own_doc(cls: type) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    if doc.startswith(f"{cls.__name__}("):  # dataclasses write a signature where a class has no docstring
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def _type(field: dataclasses.Field) -> str:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    return kind.replace("typing.", "")


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _shown(value) -> str:
    from omegaconf import MISSING

    if value is dataclasses.MISSING or value == MISSING:
        return "required"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple)):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def yaml_comments(path: Path) -> dict[str, str]:
    """The comment above (or beside) each top-level key of a YAML file: where the root config explains its keys."""
    out, above = {}, []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            above.append(line.lstrip("#").strip())
            continue
        match = re.match(r"^(\w+):(.*?)(?:\s#\s*(.*))?$", line)
        if match and match.group(1) != "defaults":
            out[match.group(1)] = " ".join([*above, *([match.group(3)] if match.group(3) else [])])
        above = []
    return out


def rows(cls: type, prefix: str, skip: frozenset[str] = frozenset(), fallback: dict | None = None) -> list[str]:
    """Table rows of `cls`'s fields under `prefix` (nested dataclasses expanded as dotted keys); `fallback`: notes
    for fields whose source has no comment."""
    comments = {**(fallback or {}), **_comments(cls)}
    checks = field_checks(cls)
    out = []
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = _default(field)
        key = f"{prefix}.{field.name}" if prefix else field.name
        if dataclasses.is_dataclass(default):
            out += rows(type(default), key)
            continue
        notes = comments.get(field.name, "")
        if field.name in checks:
            notes = f"{notes} ({checks[field.name]})" if notes else checks[field.name]
        out.append(f"| `{key}` | `{_cell(_type(field))}` | {_cell(_shown(default))} | {_cell(notes)} |")
    return out


def table(cls: type, prefix: str, skip: frozenset[str] = frozenset(), fallback: dict | None = None) -> list[str]:
    body = rows(cls, prefix, skip, fallback)
    if not body:
        return []
    return ["| key | type | default | notes |", "|---|---|---|---|", *body, ""]


def _inherited(cls: type, base: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(base)) if base is not cls else frozenset()


# ------------------------------------------------------------------------------------------------ the groups

def group_options(group: str) -> list[str]:
    """The options `group=` can take: its YAML files, and for method the rules the registry finds too."""
    names = {p.stem for p in (CONF / group).glob("*.yaml")}
    if group == "method":
        from layerwise.rules import rule_names

        names |= set(rule_names())
    return sorted(names)


def _rule_section(name: str, base: type) -> list[str]:
    from layerwise.rules import options_class

    options = options_class({"name": name})  # the rule's options module: no torch for the manual's build
    page = ROOT / "docs" / "rules" / f"{name}.md"
    link = f" ([{name}](rules/{name}.md))" if page.is_file() else ""
    out = [f"### `method={name}`{link}", ""]
    if options is base:
        return out + ["No options beyond the common ones.", ""]
    doc = _own_doc(options)
    if doc:
        out += [doc, ""]
    body = table(options, "method", _inherited(options, base))
    return out + (body or ["No options beyond the common ones.", ""])


def reference_markdown() -> str:
    from layerwise.config import groups
    from layerwise.config.schema import RootSchema
    from layerwise.data import DATA_OPTIONS, DataOptions
    from layerwise.models import MODEL_OPTIONS, ModelOptions
    from layerwise.rules import rule_names
    from layerwise.rules.options.base import RuleOptions

    groups_of_root = frozenset(f.name for f in dataclasses.fields(RootSchema) if f.name in {
        "data", "model", "method", "optimizer", "trainer", "logger", "diagnostics"})
    out = ["## Top-level keys", "", "Notes from `conf/config.yaml`, where these keys are set.", "",
           *table(RootSchema, "", groups_of_root, yaml_comments(CONF / "config.yaml"))]

    out += ["## `method`: learning rules", "", "Every rule has these keys:", "", *table(RuleOptions, "method")]
    for name in rule_names():
        out += _rule_section(name, RuleOptions)

    out += ["## `model`: networks", "", "Every network has these keys:", "", *table(ModelOptions, "model")]
    by_class: dict[type, list[str]] = {}
    for arch, cls in MODEL_OPTIONS.items():
        by_class.setdefault(cls, []).append(arch)
    for cls, archs in by_class.items():
        if cls is ModelOptions:
            continue
        out += [f"### `model.arch`: {', '.join(archs)}", "", *table(cls, "model", _inherited(cls, ModelOptions))]

    out += ["## `data`: datasets", "", "Every dataset has these keys:", "", *table(DataOptions, "data")]
    data_classes: dict[type, list[str]] = {}
    for name, cls in DATA_OPTIONS.items():
        data_classes.setdefault(cls, []).append(name)
    for cls, names in data_classes.items():
        out += [f"### `data={'|'.join(names)}`", "", *table(cls, "data", _inherited(cls, DataOptions))]

    out += ["## The other groups", "",
            "The schemas of `layerwise.config.groups`, one per config node (a nested node is listed under its "
            "parent's keys).", ""]
    nested = set()
    classes = [c for c in vars(groups).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
               and c.__module__ == groups.__name__]
    for cls in classes:
        for field in dataclasses.fields(cls):
            default = _default(field)
            if dataclasses.is_dataclass(default):
                nested.add(type(default))
    for cls in sorted(classes, key=lambda c: inspect.getsourcelines(c)[1]):
        path = getattr(cls, "PATH", "")
        if cls in nested or not path:  # no PATH: a node of the root (paths, above) or a holder of nodes
            continue
        parents = [b for b in cls.__mro__[1:] if dataclasses.is_dataclass(b)]
        base = parents[0] if parents else cls
        out += [f"### `{path}` ({cls.__name__})", ""]
        doc = _own_doc(cls)
        if doc:
            out += [doc, ""]
        if base is not cls:
            out += [f"All keys of {base.__name__}, and:", ""]
        out += table(cls, path, _inherited(cls, base)) or ["No keys of its own.", ""]
    return "\n".join(out).rstrip() + "\n"


def options_markdown(group: str) -> str:
    return ", ".join(group_options(group))


# ------------------------------------------------------------------------------------------------ mkdocs hook

def on_page_markdown(markdown: str, page=None, config=None, files=None) -> str:
    if REFERENCE_MARKER in markdown:
        markdown = markdown.replace(REFERENCE_MARKER, reference_markdown())
    return OPTIONS_MARKER.sub(lambda m: options_markdown(m.group(1)), markdown)


if __name__ == "__main__":
    print(reference_markdown())

#!/usr/bin/env python
"""Compare finished (or still running) layerwise runs offline: one Markdown table and curve plots.

    python scripts/compare.py experiments/multirun/2026-11-23/22-56-19
    python scripts/compare.py 'experiments/multirun/2026-11-*' --metric test/loss --out reports/sweep1
    python scripts/compare.py experiments --group-by method,optimizer.lr

Inputs are run directories, sweep directories or any folder above them (searched recursively), or globs.
A run directory is one holding `summary.json` or `.hydra/config.yaml`. Runs whose saved configs differ only by
`seed` (and `name`, `paths.*`, `hydra.*`, `logger.*` and a few other bookkeeping keys, see IGNORED) form one
group; the table shows each group's mean ± sample std (ddof=1) over its completed runs. Runs that did not
complete (no summary.json yet, or status interrupted/failed/diverged) are listed under the table and left out
of the means unless --include-incomplete is given; their curves are drawn anyway.

Writes into --out (default: `compare/` in the deepest folder holding all the runs, e.g. the sweep dir, so
reports stay next to their runs, git-ignored under experiments/): table.md (the printed table), table.csv (one
row per group, raw fractions), runs.csv (one row per run) and <metric>.png for --metric and its train/test
counterpart. Needs only numpy, PyYAML and matplotlib, no torch: about 1.5 s of CPU for 100 runs with plots.
"""
from __future__ import annotations

import argparse
import csv
import difflib
import glob
import json
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

PROG = "compare.py"
DEFAULT_METRIC = "test/acc"
# Config keys (and key prefixes) that do not make two runs different experiments: the seed, the run's name and
# where it writes, the launcher, logging, data location/loading, console output.
IGNORED = ("seed", "name", "paths", "hydra", "logger", "data.root", "data.download", "data.num_workers",
           "trainer.progress_bar", "trainer.log_every_n_steps", "trainer.images_every_n_epochs", "allowed_targets",
           "callbacks.lr_monitor")
# Their own table columns; never repeated in the "config" column.
IDENTITY = {"method": "method.name", "model": "model.name", "data": "data.name"}
INCOMPLETE = "running/incomplete"
FULL_LEGEND = 8  # up to this many groups the plot legend describes them; beyond, it gives their table number
_RUN_FILES = {"summary.json", "metrics.csv", "run.log"}
_SKIP_DIRS = {"checkpoints", "wandb", "__pycache__", "node_modules", "images"}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MISSING = object()
_BLOCK_TEST_ACC = re.compile(r"block(\d+)/test_acc$")


class UsageError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------------------------- loading runs

@dataclass
class Run:
    path: Path
    summary: dict | None = None
    config: dict | None = None  # flattened, nothing dropped
    epochs: np.ndarray = field(default_factory=lambda: np.zeros(0))  # 1-based epoch numbers
    metrics: dict[str, np.ndarray] = field(default_factory=dict)  # column -> value per epoch (NaN: not logged)
    group: int = 0

    @property
    def status(self) -> str:
        if self.summary is None:
            return INCOMPLETE
        return str(self.summary.get("status") or "unknown")

    @property
    def complete(self) -> bool:
        return self.status == "completed"

    def ident(self, key: str):
        """method / model / data / seed: from summary.json, else from the saved config."""
        if self.summary and self.summary.get(key) is not None:
            return self.summary[key]
        if self.config:
            return self.config.get(IDENTITY.get(key, key))
        return None

    def value(self, key: str):
        """A summary.json value; for runs without one (or keys it lacks) the same value from metrics.csv."""
        if self.summary and self.summary.get(key) is not None:
            return self.summary[key]
        return self._from_metrics(key)

    def _from_metrics(self, key: str):
        m = self.metrics
        if key == "test_acc":
            return _last(m.get("test/acc"))
        if key == "best_test_acc":
            return _max(m.get("test/acc"))
        if key == "test_loss":
            return _last(m.get("test/loss"))
        if key == "block_test_acc":
            cols = sorted((int(b.group(1)), b.string) for b in map(_BLOCK_TEST_ACC.match, m) if b)
            return [_last(m[name]) for _, name in cols]
        if key == "imgs_per_sec":  # as summary.py: the first epoch (warm-up) is left out when there are more
            v = _finite(m.get("train/imgs_per_sec"))
            return None if v.size == 0 else float(v[1:].mean() if v.size > 1 else v[0])
        if key == "peak_activation_mb":
            return _max(m.get("train/peak_activation_mb"))
        if key == "epochs_done":
            if not self.metrics:
                return None
            logged = np.zeros(len(self.epochs), dtype=bool)
            for col in m.values():
                logged |= np.isfinite(col)
            return int(logged.sum())
        return None

    def last(self, metric: str):
        return _last(self.metrics.get(metric))


def _finite(a) -> np.ndarray:
    if a is None:
        return np.zeros(0)
    return a[np.isfinite(a)]


def _last(a):
    v = _finite(a)
    return float(v[-1]) if v.size else None


def _max(a):
    v = _finite(a)
    return float(v.max()) if v.size else None


def _natural(path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_run_dirs(inputs: list[str]) -> list[Path]:
    """Run directories in or under the inputs (dirs or globs), in natural path order, each once."""
    roots, missing = [], []
    for inp in inputs:
        if os.path.exists(inp):
            roots.append(inp)
        elif glob.has_magic(inp) and (matches := sorted(glob.glob(inp, recursive=True))):
            roots.extend(matches)
        else:
            missing.append(inp)
    if missing:
        raise UsageError(f"no such file or directory: {', '.join(missing)}")
    found: dict[Path, None] = {}
    for root in roots:
        if os.path.isfile(root):  # a run's own file (summary.json, .hydra/config.yaml, ...) stands for its run
            parent = os.path.dirname(os.path.abspath(root))
            if os.path.basename(parent) == ".hydra":
                parent = os.path.dirname(parent)
            elif os.path.basename(root) not in _RUN_FILES:
                continue  # e.g. a sweep's multirun.yaml matched by a glob
            root = parent
        for dirpath, dirnames, filenames in os.walk(root):
            if "summary.json" in filenames or os.path.isfile(os.path.join(dirpath, ".hydra", "config.yaml")):
                found.setdefault(Path(dirpath).resolve(), None)
                dirnames[:] = []
            else:
                dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS]
    return sorted(found, key=_natural)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_metrics(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """metrics.csv -> (1-based epochs, {column: per-epoch values}). Lightning writes train and test values of
    one epoch on separate rows; they are merged (the last value logged in an epoch wins)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return np.zeros(0), {}
    header, rows = rows[0], rows[1:]
    ecol = header.index("epoch") if "epoch" in header else None
    cols = [(i, c) for i, c in enumerate(header) if c not in ("epoch", "step")]
    per_epoch: dict[int, dict[str, float]] = {}
    for n, row in enumerate(rows):
        try:
            e = int(float(row[ecol])) if ecol is not None else n
        except (ValueError, IndexError):
            continue
        slot = per_epoch.setdefault(e, {})
        for i, c in cols:
            if i < len(row) and row[i] != "":
                try:
                    slot[c] = float(row[i])
                except ValueError:
                    pass
    epochs = sorted(per_epoch)
    metrics = {c: np.array([per_epoch[e].get(c, np.nan) for e in epochs], dtype=float) for _, c in cols}
    return np.array(epochs, dtype=float) + 1, metrics


def load_run(path: Path, warn) -> Run:
    run = Run(path)
    try:
        run.summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        if not isinstance(run.summary, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        run.summary = None
    except (OSError, ValueError) as err:
        warn(f"{path}/summary.json unreadable ({err}); treating the run as incomplete")
        run.summary = None
    cfg_path = path / ".hydra" / "config.yaml"
    if cfg_path.is_file():
        try:
            cfg = yaml.load(cfg_path.read_text(encoding="utf-8"), Loader=_LOADER)
            run.config = flatten(cfg) if isinstance(cfg, dict) else None
        except (OSError, yaml.YAMLError) as err:
            warn(f"{cfg_path} unreadable ({err}); grouping it by method/model/data only")
    if (path / "metrics.csv").is_file():
        try:
            run.epochs, run.metrics = read_metrics(path / "metrics.csv")
        except (OSError, csv.Error, UnicodeDecodeError) as err:
            warn(f"{path}/metrics.csv unreadable ({err})")
    return run


# ----------------------------------------------------------------------------------------------- grouping

@dataclass
class Group:
    runs: list[Run]
    config: dict | None  # the flattened config the runs share (ignored keys dropped); None without .hydra
    label: str = ""
    id: int = 0

    def ident(self, key: str) -> str:
        vals = sorted({str(r.ident(key)) for r in self.runs})
        return ",".join(vals)

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.complete]


def _canon(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _fmt_value(v) -> str:
    if v is _MISSING:
        return "-"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"), default=str)
    return str(v)


def _ignored(key: str, ignore) -> bool:
    return any(key == p or key.startswith(p + ".") for p in ignore)


def _resolve_key(key: str, runs: list[Run]) -> str:
    """`method` -> `method.name` etc.; an unknown key is a usage error with a suggestion."""
    known = {k for r in runs if r.config for k in r.config} | {"method.name", "model.name", "data.name", "seed"}
    if key in known:
        return key
    if key in IDENTITY or f"{key}.name" in known:
        return IDENTITY.get(key, f"{key}.name")
    by_suffix = sorted(k for k in known if k.endswith("." + key))
    if len(by_suffix) == 1:  # `lr` -> `optimizer.lr`
        return by_suffix[0]
    close = difflib.get_close_matches(key, sorted(known), n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise UsageError(f"unknown --group-by key {key!r} (not in any run's .hydra/config.yaml){hint}")


def _run_key_value(run: Run, key: str):
    if run.config is not None and key in run.config:
        return run.config[key]
    for ident, name in IDENTITY.items():
        if key == name:
            return run.ident(ident)
    if key == "seed":
        return run.ident("seed")
    return _MISSING


def group_runs(runs: list[Run], ignore=IGNORED, group_by: list[str] | None = None) -> list[Group]:
    """Groups of runs that differ only in ignored keys (the seed), or share the values of `group_by` keys;
    each labelled with the config keys that tell it apart, ordered by method, model, data and those values."""
    buckets: dict[str, list[Run]] = {}
    shared: dict[str, dict | None] = {}
    if group_by:
        keys = [_resolve_key(k, runs) for k in group_by]
        for r in runs:
            vals = {k: _run_key_value(r, k) for k in keys}
            h = _canon({k: _canon(v) if v is not _MISSING else "<missing>" for k, v in vals.items()})
            buckets.setdefault(h, []).append(r)
            shared[h] = vals
    else:
        for r in runs:
            if r.config is None:
                flat = None
                h = _canon(["<no config>", r.ident("method"), r.ident("model"), r.ident("data")])
            else:
                flat = {k: v for k, v in r.config.items() if not _ignored(k, ignore)}
                h = _canon(flat)  # sort_keys: the order keys were saved in does not matter
            buckets.setdefault(h, []).append(r)
            shared[h] = flat
    groups = [Group(rs, shared[h]) for h, rs in buckets.items()]
    if group_by:
        for g in groups:
            g.label = " ".join(f"{k}={_fmt_value(v)}" for k, v in g.config.items() if k not in IDENTITY.values())
        sort_vals = {id(g): [v for k, v in g.config.items()] for g in groups}
    else:
        diff = differing_keys(groups)
        sort_vals = {}
        for g in groups:
            if g.config is None:
                g.label = "(no .hydra/config.yaml)"
                sort_vals[id(g)] = []
            else:
                g.label = " ".join(f"{k}={_fmt_value(g.config[k])}" for k in diff if k in g.config)
                sort_vals[id(g)] = [g.config.get(k, _MISSING) for k in diff]

    def order(g: Group):
        def one(v):  # numbers numerically, anything else as text
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return (0, float(v), "")
            return (1, 0.0, _fmt_value(v))
        return (g.ident("method"), g.ident("model"), g.ident("data"), [one(v) for v in sort_vals[id(g)]])

    groups.sort(key=order)
    for i, g in enumerate(groups, 1):
        g.id = i
        g.runs.sort(key=lambda r: (_num_or_inf(r.ident("seed")), _natural(r.path)))
        for r in g.runs:
            r.group = i
    return groups


def _num_or_inf(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.inf


def differing_keys(groups: list[Group]) -> list[str]:
    """Config keys whose value (or presence) differs between groups. `method.*` keys are compared only between
    groups of the same method (bp has no `method.aux.*`; that is not worth a label), `model.*` within a model,
    `data.*` within a dataset; every other key across all groups. method/model/data names are columns."""
    with_cfg = [g for g in groups if g.config is not None]
    keys: dict[str, None] = {}
    for g in with_cfg:
        keys.update(dict.fromkeys(g.config))
    out = []
    for k in keys:
        if k in IDENTITY.values():
            continue
        scope = IDENTITY.get(k.split(".", 1)[0]) if "." in k else None
        parts: dict[str, set] = defaultdict(set)
        for g in with_cfg:
            part = _canon(g.config.get(scope)) if scope else ""
            parts[part].add(_canon(g.config[k]) if k in g.config else "<missing>")
        if any(len(vals) > 1 for vals in parts.values()):
            out.append(k)
    return out


# ----------------------------------------------------------------------------------------------- statistics

def mean_std(values) -> tuple[float | None, float | None, int]:
    """Mean and sample std (ddof=1; None for one value) of the values that are not None."""
    v = np.array([x for x in map(_float, values) if x is not None], dtype=float)
    if v.size == 0:
        return None, None, 0
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None), int(v.size)


def _float(x) -> float | None:
    try:
        return None if x is None or isinstance(x, bool) else float(x)
    except (TypeError, ValueError):
        return None


def pct(v) -> str:
    """A fraction as a percentage with 2 decimals (the format of the end-of-sweep table in report.py)."""
    return "-" if v is None else f"{100 * v:.2f}"


def num(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_mean_std(mean, std, percent: bool = True, digits: int = 4) -> str:
    if mean is None:
        return "-"
    f = pct if percent else (lambda x: f"{x:.{digits}f}")
    return f(mean) if std is None else f"{f(mean)} ± {f(std)}"


def _is_acc(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1].endswith("acc")


def group_stats(g: Group, include_incomplete: bool, metric: str | None = None) -> dict:
    runs = g.runs if include_incomplete else g.done
    s = {"runs": len(g.runs), "done": len(g.done), "used": len(runs)}
    for key in ("test_acc", "best_test_acc", "imgs_per_sec", "peak_activation_mb", "wall_s", "epochs_done"):
        s[key] = mean_std(r.value(key) for r in runs)
    for key in ("block_test_acc", "angle_wb"):  # per-block lists; angle_wb: diagnostics=alignment, feedback rules
        blocks = [r.value(key) or [] for r in runs]
        s[key] = [mean_std(b[i] if i < len(b) else None for b in blocks)[0]
                  for i in range(max(map(len, blocks), default=0))]
    if metric:
        s["metric"] = mean_std(r.last(metric) for r in runs)
    return s


COLUMNS = ["#", "method", "model", "data", "config", "seeds", "epochs", "test acc %", "best test acc %",
           "per-block test acc %", "img/s", "peak act MB", "wall s"]


def table_rows(groups: list[Group], include_incomplete: bool, metric: str | None) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the groups table. `metric` (when not test/acc) adds a column of its last value."""
    extra = metric if metric and metric != DEFAULT_METRIC else None
    header = list(COLUMNS)
    if extra:
        header.insert(COLUMNS.index("per-block test acc %"), f"last {extra}" + (" %" if _is_acc(extra) else ""))
    stats = [group_stats(g, include_incomplete, extra) for g in groups]
    # The W/B angle (degrees, per block, last measured) where any run of a feedback rule logged one.
    angles = any(any(a is not None for a in s["angle_wb"]) for s in stats)
    if angles:
        header.insert(header.index("img/s"), "final W/B angle °")
    rows = []
    for g, s in zip(groups, stats):
        seeds = str(s["runs"]) if s["done"] == s["runs"] else f"{s['runs']} ({s['done']} done)"
        ep = s["epochs_done"][0]
        cells = [str(g.id), g.ident("method"), g.ident("model"), g.ident("data"), g.label or "-", seeds,
                 "-" if ep is None else (f"{ep:.0f}" if float(ep).is_integer() else f"{ep:.1f}"),
                 fmt_mean_std(*s["test_acc"][:2]), fmt_mean_std(*s["best_test_acc"][:2])]
        if extra:
            cells.append(fmt_mean_std(*s["metric"][:2], percent=_is_acc(extra)))
        cells.append(" ".join(pct(b) for b in s["block_test_acc"]) or "-")
        if angles:
            cells.append(" ".join(num(a, 1) for a in s["angle_wb"]) or "-")
        cells += [num(s["imgs_per_sec"][0], 0), num(s["peak_activation_mb"][0], 1), num(s["wall_s"][0], 1)]
        rows.append(cells)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    rows = [[c.replace("|", "\\|") for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    left = {"method", "model", "data", "config"}

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if h in left else c.rjust(w)
                                 for c, w, h in zip(cells, widths, header)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if h not in left else ("-" * (w + 2))
                         for w, h in zip(widths, header)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def _rel(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel


def incomplete_notes(groups: list[Group], include_incomplete: bool) -> list[str]:
    runs = [r for g in groups for r in g.runs if not r.complete]
    if not runs:
        return []
    total = sum(len(g.runs) for g in groups)
    head = (f"{len(runs)} of {total} runs did not complete; "
            + ("they are included in the means (--include-incomplete):" if include_incomplete
               else "the means leave them out (--include-incomplete to use them):"))
    lines = [head]
    for r in runs:
        ep = r.value("epochs_done")
        what = r.status + (" (no summary.json: still running, or killed)" if r.summary is None else "")
        if r.summary and r.summary.get("error"):
            what += f": {r.summary['error']}"
        acc = r.value("test_acc")
        progress = "no epoch logged yet" if not ep else f"{ep} epoch{'s' * (ep != 1)}, last test acc {pct(acc)}"
        lines.append(f"- `{_rel(r.path)}`: {what}; group {r.group}, seed {r.ident('seed')}, {progress}")
    return lines


def duplicate_seed_notes(groups: list[Group]) -> list[str]:
    out = []
    for g in groups:
        seeds = [r.ident("seed") for r in g.runs]
        dups = sorted({str(s) for s in seeds if seeds.count(s) > 1})
        if dups:
            out.append(f"- group {g.id} has more than one run with seed {', '.join(dups)}")
    return out


# ----------------------------------------------------------------------------------------------- files

def counterpart(metric: str) -> str | None:
    """test/acc <-> train/acc, block2/test_acc <-> block2/train_acc."""
    for a, b in (("test", "train"), ("train", "test")):
        new = re.sub(rf"(^|/|_){a}(/|_|$)", rf"\g<1>{b}\g<2>", metric, count=1)
        if new != metric:
            return new
    return None


def curve(runs: list[Run], metric: str):
    """Per-epoch mean, sample std (NaN below 2 runs) and run count of `metric` over the runs that logged it."""
    series = []
    for r in runs:
        v = r.metrics.get(metric)
        if v is not None:
            ok = np.isfinite(v)
            if ok.any():
                series.append((r.epochs[ok], v[ok]))
    if not series:
        return None
    xs = np.unique(np.concatenate([e for e, _ in series]))
    grid = np.full((len(series), len(xs)), np.nan)
    for i, (e, v) in enumerate(series):
        grid[i, np.searchsorted(xs, e)] = v
    n = np.isfinite(grid).sum(0)
    mean = np.nansum(grid, 0) / n
    dev = np.where(np.isfinite(grid), grid - mean, 0.0)
    std = np.where(n > 1, np.sqrt((dev ** 2).sum(0) / np.maximum(n - 1, 1)), np.nan)
    return xs, mean, std, n


def legend_labels(groups: list[Group]) -> tuple[dict[int, str], str]:
    """Short legend entries: method/model/data only where they vary, config keys by their last part where that
    is unambiguous; and what is common to all groups (for the title)."""
    common, varying = [], []
    for key in ("method", "model", "data"):
        vals = {g.ident(key) for g in groups}
        (common if len(vals) == 1 else varying).append(key)
    keys = [kv.split("=", 1)[0] for g in groups for kv in g.label.split(" ") if "=" in kv]
    short: dict[str, str] = {}
    for k in dict.fromkeys(keys):
        tail = k.rsplit(".", 1)[-1]
        short[k] = tail if sum(1 for o in set(keys) if o.rsplit(".", 1)[-1] == tail) == 1 else k
    labels = {}
    for g in groups:
        parts = [g.ident(k) for k in varying]
        for kv in g.label.split(" "):
            k, eq, v = kv.partition("=")
            parts.append(f"{short.get(k, k)}={v}" if eq else kv)
        labels[g.id] = f"{g.id}: " + " ".join(p for p in parts if p) + f" (n={len(g.runs)})"
    return labels, ", ".join(groups[0].ident(k) for k in common) if groups else ""


def plot_metric(groups: list[Group], metric: str, path: Path) -> bool:
    """One PNG: a line per group (mean over its runs, every run incl. incomplete ones) with a ±1 std band."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    curves = [(g, curve(g.runs, metric)) for g in groups]
    curves = [(g, c) for g, c in curves if c is not None]
    if not curves:
        return False
    few = len(curves) <= FULL_LEGEND
    labels, common = legend_labels([g for g, _ in curves])
    if not few:  # long legends cost more to draw than the plot: number the lines as the table's # column
        labels = {g.id: str(g.id) for g, _ in curves}
    fig = Figure(figsize=(7.5, 4.5), dpi=100)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)] + [f"tab:{c}" for c in ("olive", "cyan", "pink", "brown", "gray")]
    scale = 100.0 if _is_acc(metric) else 1.0
    for g, (xs, mean, std, _n) in curves:
        color = colors[(g.id - 1) % len(colors)]
        style = ("-", "--", ":", "-.")[(g.id - 1) // len(colors) % 4]  # past 15 groups colours repeat
        ax.plot(xs, mean * scale, color=color, linestyle=style, label=labels[g.id],
                marker="o" if len(xs) <= 20 else None, ms=3)
        band = np.isfinite(std)
        if band.any():
            ax.fill_between(xs[band], (mean - std)[band] * scale, (mean + std)[band] * scale, color=color,
                            alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric + (" (%)" if scale == 100 else ""))
    ax.set_title(f"{metric}{f' ({common})' if common else ''}: mean ± std over seeds")
    ax.grid(alpha=0.3)
    if all(len(c[0]) <= 20 for _, c in curves):
        ax.xaxis.get_major_locator().set_params(integer=True)
    if few:
        ax.legend(fontsize="small", loc="best")
        fig.tight_layout()
    else:  # beside the plot, where it covers nothing
        ncols = 1 + (len(curves) - 1) // 20
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=ncols, title="#",
                  handlelength=1.5, columnspacing=0.8)
        fig.subplots_adjust(left=0.09, bottom=0.11, top=0.92, right=1 - 0.09 * ncols - 0.04)
    fig.savefig(path)
    return True


def write_csvs(groups: list[Group], out: Path, include_incomplete: bool) -> list[Path]:
    table, runs = out / "table.csv", out / "runs.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["group", "method", "model", "data", "config", "runs", "done", "used", "epochs_done",
                    "test_acc_mean", "test_acc_std", "best_test_acc_mean", "best_test_acc_std",
                    "block_test_acc_mean", "imgs_per_sec", "peak_activation_mb", "wall_s"])
        for g in groups:
            s = group_stats(g, include_incomplete)
            w.writerow([g.id, g.ident("method"), g.ident("model"), g.ident("data"), g.label, s["runs"], s["done"],
                        s["used"], _csv(s["epochs_done"][0]), _csv(s["test_acc"][0]), _csv(s["test_acc"][1]),
                        _csv(s["best_test_acc"][0]), _csv(s["best_test_acc"][1]),
                        " ".join(_csv(b) for b in s["block_test_acc"]), _csv(s["imgs_per_sec"][0]),
                        _csv(s["peak_activation_mb"][0]), _csv(s["wall_s"][0])])
    keys = ["epochs_done", "test_acc", "best_test_acc", "test_loss", "imgs_per_sec", "peak_activation_mb", "wall_s"]
    with open(runs, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["group", "dir", "method", "model", "data", "seed", "status", *keys, "block_test_acc"])
        for g in groups:
            for r in g.runs:
                w.writerow([g.id, str(r.path), r.ident("method"), r.ident("model"), r.ident("data"), r.ident("seed"),
                            r.status, *(_csv(r.value(k)) for k in keys),
                            " ".join(_csv(b) for b in r.value("block_test_acc") or [])])
    return [table, runs]


def _csv(v) -> str:
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))


# ----------------------------------------------------------------------------------------------- CLI

def default_out(dirs: list[Path]) -> Path:
    """compare/ in the deepest folder holding all the runs: a sweep's own dir, or the run dir for one run."""
    return Path(os.path.commonpath([str(d) for d in dirs])) / "compare"


def _split(values) -> list[str]:
    return [k.strip() for v in values or [] for k in v.split(",") if k.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Compare layerwise runs offline: a Markdown table of seed-averaged groups "
        "and train/test curve plots.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python scripts/compare.py experiments/multirun/2026-11-23/22-56-19\n"
               "  python scripts/compare.py 'experiments/multirun/*' --metric test/loss --out reports/sweeps\n"
               "  python scripts/compare.py experiments --group-by method,optimizer.lr")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="run dirs, sweep dirs or folders above them (searched recursively), or globs")
    p.add_argument("--metric", default=None,
                   help=f"metrics.csv column to plot, with its train/test counterpart (default {DEFAULT_METRIC})")
    p.add_argument("--out", default=None,
                   help="folder for table.md, table.csv, runs.csv and the PNGs (default: compare/ in the deepest "
                        "folder that holds all the runs, e.g. the sweep dir)")
    p.add_argument("--group-by", action="append", metavar="KEYS",
                   help="group by these config keys only (comma-separated, e.g. method,optimizer.lr; "
                        "`method` means method.name) instead of by the whole config minus the seed")
    p.add_argument("--ignore", action="append", metavar="KEYS",
                   help="more config keys (or prefixes, comma-separated) to ignore when grouping, "
                        f"besides {', '.join(IGNORED)}")
    p.add_argument("--include-incomplete", action="store_true",
                   help="use runs that did not complete in the means too")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def compare(args, out_stream=None, err_stream=None) -> int:
    out_stream = out_stream or sys.stdout
    err_stream = err_stream or sys.stderr

    def warn(msg):
        print(f"{PROG}: warning: {msg}", file=err_stream)

    dirs = find_run_dirs(args.paths)
    if not dirs:
        raise UsageError("no run directories (with summary.json or .hydra/config.yaml) found in: "
                         + ", ".join(args.paths))
    runs = [load_run(d, warn) for d in dirs]

    available = sorted({c for r in runs for c in r.metrics}, key=_natural)
    metric = args.metric or DEFAULT_METRIC
    if available and metric not in available:
        close = difflib.get_close_matches(metric, available, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"unknown --metric {metric!r}{hint}; metrics.csv columns: {', '.join(available)}")
    if not available and args.metric:
        raise UsageError(f"--metric {metric!r}: none of the {len(runs)} runs has a metrics.csv to plot from")

    ignore = _split(args.ignore)
    keys = {k for r in runs if r.config for k in r.config}
    for k in ignore:
        if not any(_ignored(c, [k]) for c in keys):
            warn(f"--ignore {k}: no run's config has this key")
    groups = group_runs(runs, ignore=IGNORED + tuple(ignore), group_by=_split(args.group_by) or None)
    header, rows = table_rows(groups, args.include_incomplete, metric)
    notes = incomplete_notes(groups, args.include_incomplete)
    if not args.group_by:  # with --group-by, runs of one seed in one group are expected
        notes += duplicate_seed_notes(groups)
    text = markdown_table(header, rows) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"
    print(text, end="", file=out_stream)

    out = Path(args.out) if args.out else default_out(dirs)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(text, encoding="utf-8")
        written = [out / "table.md", *write_csvs(groups, out, args.include_incomplete)]
        if not args.no_plots:
            if not available:
                warn("no metrics.csv in these runs (logger=none?): no curves to plot")
            for m in dict.fromkeys([metric, counterpart(metric)]):
                if m is None or m not in available:
                    continue
                png = out / f"{m.replace('/', '_')}.png"
                if plot_metric(groups, m, png):
                    written.append(png)
    except OSError as err:
        print(f"{PROG}: error: cannot write to {out}: {err.strerror or err}", file=err_stream)
        return 1
    done = sum(r.complete for r in runs)
    print(f"{len(runs)} run{'s' * (len(runs) != 1)} ({done} completed) in {len(groups)} "
          f"group{'s' * (len(groups) != 1)}; wrote "
          + ", ".join(_rel(p) for p in written), file=err_stream)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage and the error (or --help)
        return int(exc.code or 0)
    try:
        return compare(args)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

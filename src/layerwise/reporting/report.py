"""The side-by-side table of runs, printed after a run or a sweep (a Hydra callback)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from rich.console import Console
from rich.table import Table

from layerwise.hydra_job import process_rank
from layerwise.runlog import use_color


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _num(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def load_summaries(paths) -> list[dict]:
    rows = []
    for p in sorted(paths, key=lambda q: (len(str(q)), str(q))):
        try:
            rows.append({**json.loads(Path(p).read_text()), "_dir": str(Path(p).parent)})
        except (OSError, json.JSONDecodeError):
            continue
    return rows


def runs_table(rows: list[dict], title: str = "layerwise runs") -> Table:
    table = Table(title=title)
    # A sweep's jobs differ in their own overrides (an Optuna trial's sampled values): shown when any row has them.
    own = any(r.get("_own") for r in rows)
    # The final W/B angle per block (diagnostics=alignment with a feedback rule), when any run measured one.
    angles = any(any(a is not None for a in r.get("angle_wb") or []) for r in rows)
    for col in ("method", "model", "data", "seed", *(["overrides"] if own else []), "status", "test acc %",
                "best %", "per-block acc %", *(["W/B angle °"] if angles else []), "img/s", "peak act MB", "wall s"):
        table.add_column(col, justify="left" if col in ("method", "model", "data", "overrides", "status")
                         else "right")
    for r in rows:
        blocks = " ".join(_pct(v) for v in r.get("block_test_acc") or []) or "-"
        ips = r.get("imgs_per_sec")
        table.add_row(str(r.get("method")), str(r.get("model")), str(r.get("data")), str(r.get("seed")),
                      *([r.get("_own") or "-"] if own else []),
                      str(r.get("status")), _pct(r.get("test_acc")), _pct(r.get("best_test_acc")), blocks,
                      *([" ".join(_num(a, 1) for a in r.get("angle_wb") or []) or "-"] if angles else []),
                      _num(ips, 0), _num(r.get("peak_activation_mb"), 1), _num(r.get("wall_s"), 1))
    return table


def print_runs(rows: list[dict], title: str) -> None:
    if rows:
        color_system = "auto" if use_color(sys.stdout) else None  # the console log's rule: no codes in a pipe
        console = Console(color_system=color_system)
        if not console.is_terminal:
            console = Console(width=180, color_system=color_system)  # logs and CI: no wrapping at 80 columns
        console.print(runs_table(rows, title))


class RunReportCallback(Callback):
    """Prints the runs table when a single run or a whole sweep has finished."""

    def on_run_end(self, config, **kwargs) -> None:
        if process_rank() != 0:  # a DDP worker process Lightning started with the same command
            return
        print_runs(load_summaries([Path(config.hydra.runtime.output_dir) / "summary.json"]), "run summary")

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = with_own_overrides(load_summaries(sweep_dir.glob("*/summary.json")))
        print_runs(rows, f"sweep {sweep_dir}")
        failed = failed_jobs(sweep_dir)
        if failed:
            jobs = len(list(sweep_dir.glob("*/.hydra")))
            lines = [f"{len(failed)} of {jobs} jobs failed (logs: <job dir>/run.log):", *failed]
            print("\n  ".join(lines), file=sys.stderr)
            raise SystemExit(1)  # after the report: the finished jobs' results are all on disk


def _overrides(job: Path) -> list[str]:
    try:
        return list(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or [])
    except (OSError, yaml.YAMLError):
        return []


def _short(override: str) -> str:
    """key=value with a float value in 4 significant digits: Optuna samples e.g. lr=0.0012345678901234."""
    key, eq, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}={number:.4g}" if eq and ("." in value or "e" in value.lower()) else override


def with_own_overrides(rows: list[dict]) -> list[dict]:
    """Each sweep row with `_own`: the overrides that set its job apart from the sweep's other jobs."""
    jobs = {row["_dir"]: _overrides(Path(row["_dir"])) for row in rows}
    shared = set.intersection(*(set(o) for o in jobs.values())) if jobs else set()
    return [{**row, "_own": " ".join(_short(o) for o in jobs[row["_dir"]] if o not in shared)} for row in rows]


def failed_jobs(sweep_dir: Path) -> list[str]:
    """One line per job of the sweep that did not complete: its dir, its own overrides, and the error."""
    jobs = sorted((p.parent for p in sweep_dir.glob("*/.hydra")), key=lambda p: (len(str(p)), str(p)))
    overrides = {job: _overrides(job) for job in jobs}
    shared = set.intersection(*(set(o) for o in overrides.values())) if jobs else set()
    lines = []
    for job in jobs:
        try:
            summary = json.loads((job / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            summary = {"status": "no summary.json (killed?)"}
        if summary.get("status") == "completed":
            continue
        own = " ".join(_short(o) for o in overrides[job] if o not in shared)
        error = f": {summary['error']}" if summary.get("error") else ""
        lines.append(f"{job} [{own}] {summary.get('status')}{error}")
    return lines

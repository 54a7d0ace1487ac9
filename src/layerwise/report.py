"""The side-by-side table of runs, printed after a run or a sweep (a Hydra callback)."""
from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from rich.console import Console
from rich.table import Table


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


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
    for col in ("method", "model", "data", "seed", "status", "test acc %", "best %", "per-block acc %",
                "img/s", "peak act MB", "wall s"):
        table.add_column(col, justify="left" if col in ("method", "model", "data", "status") else "right")
    for r in rows:
        blocks = " ".join(_pct(v) for v in r.get("block_test_acc") or []) or "-"
        ips = r.get("imgs_per_sec")
        table.add_row(str(r.get("method")), str(r.get("model")), str(r.get("data")), str(r.get("seed")),
                      str(r.get("status")), _pct(r.get("test_acc")), _pct(r.get("best_test_acc")), blocks,
                      "-" if ips is None else f"{ips:.0f}", f"{r.get('peak_activation_mb', 0):.1f}",
                      f"{r.get('wall_s', 0):.1f}")
    return table


def print_runs(rows: list[dict], title: str) -> None:
    if rows:
        console = Console()
        if not console.is_terminal:
            console = Console(width=180)  # logs and CI: do not wrap the table at 80 columns
        console.print(runs_table(rows, title))


class RunReportCallback(Callback):
    """Prints the runs table when a single run or a whole sweep has finished."""

    def on_run_end(self, config, **kwargs) -> None:
        print_runs(load_summaries([Path(config.hydra.runtime.output_dir) / "summary.json"]), "run summary")

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = load_summaries(sweep_dir.glob("*/summary.json"))
        print_runs(rows, f"sweep {sweep_dir}")

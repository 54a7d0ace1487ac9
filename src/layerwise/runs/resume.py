"""Resuming a run: which checkpoint and run directory `resume=` names, and whether a checkpoint fits this run.

`resume=` accepts a run directory (its `checkpoints/last.ckpt`), a `.ckpt` file, or `last` (the newest run
directory under `paths.output_root` holding a `checkpoints/last.ckpt`). The run continues in that run
directory (main.py points Hydra's `hydra.run.dir` there), so logs, metrics and summary.json stay in one place;
the resuming command's Hydra config is saved in `.hydra/resume-<time>/` once the resume is accepted. A completed
run is continued only with a higher `trainer.max_epochs` (it then grows in place). A run directory whose summary.json
says `"status": "interrupted"` is resumed without `resume=` when a job is started in it again (a requeued
Slurm/submitit job recomputes the same directory).

This module imports no torch: main.py uses it before Hydra starts.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from layerwise.core.layout import ResumeTarget, run_dir_of
from layerwise.errors import ConfigError

LAST = "last"
CHECKPOINT = Path("checkpoints") / "last.ckpt"
FIX = "pass a run directory (it holds checkpoints/last.ckpt), a .ckpt file, or resume=last"


def override_value(overrides: list[str], key: str) -> str | None:
    """The value the last `key=value` (or `+key=value`) override gives, unquoted; None if there is none."""
    values = [a.split("=", 1)[1] for a in overrides if a.split("=", 1)[0].lstrip("+") == key]
    return values[-1].strip("'\"") if values else None


def default_output_root(overrides: list[str] | None = None) -> Path:
    """paths.output_root as the config will resolve it (an override, else LAYERWISE_OUTPUT_ROOT, else experiments)."""
    value = override_value(overrides or [], "paths.output_root")
    return Path(value if value is not None else os.environ.get("LAYERWISE_OUTPUT_ROOT", "experiments"))


def _newest_run(output_root: Path) -> Path:
    candidates = [p.parent.parent for p in output_root.glob(f"**/{CHECKPOINT.as_posix()}")]
    if not candidates:
        raise ConfigError(f"resume=last: no run under {output_root} has a {CHECKPOINT}; {FIX} "
                          f"(or set paths.output_root to where your runs are)")
    return max(candidates, key=lambda d: (d / CHECKPOINT).stat().st_mtime)


def resolve(value: str, output_root: Path) -> ResumeTarget:
    """The run directory and checkpoint `resume=value` names; ConfigError (one line, with the fix) otherwise."""
    if value == LAST:
        run_dir = _newest_run(output_root)
        return ResumeTarget(run_dir.resolve(), (run_dir / CHECKPOINT).resolve())
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(f"resume={value}: no such run directory or checkpoint; {FIX}")
    if path.is_dir():
        if path.name == CHECKPOINT.parent.name and (path / CHECKPOINT.name).is_file():
            path = path.parent  # <run>/checkpoints stands for its run
        if not (path / CHECKPOINT).is_file():
            raise ConfigError(f"resume={value}: this directory has no {CHECKPOINT} (the run stopped before its "
                              f"first checkpoint, or it is not a run directory); {FIX}, or start without resume=")
        return ResumeTarget(path.resolve(), (path / CHECKPOINT).resolve())
    path = path.resolve()
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else cannot be a checkpoint
        raise ConfigError(f"resume={value}: {path} is not a checkpoint (a torch checkpoint is a zip archive; this "
                          f"file is not one: truncated, or another kind of file); {FIX}")
    return ResumeTarget(run_dir_of(path), path)


def read_summary(run_dir: Path) -> dict | None:
    """The run directory's summary.json, or None when it is missing or unreadable."""
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def interrupted_run(run_dir: Path) -> Path | None:
    """The checkpoint to continue from when `run_dir` holds an interrupted run, else None."""
    status = (read_summary(run_dir) or {}).get("status")
    checkpoint = run_dir / CHECKPOINT
    return checkpoint if status == "interrupted" and checkpoint.is_file() else None


def is_multirun_argv(args: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in args)


MULTIRUN_FIX = ("resume= continues one run, not a sweep; rerun the sweep with hydra.sweep.dir=<its dir> instead: its "
                "interrupted jobs then continue from their checkpoints")


def hydra_run_dir_override(overrides: list[str]) -> list[str]:
    """`hydra.run.dir=<the resumed run's directory>` for a `resume=` override; ConfigError for a bad one."""
    value = override_value(overrides, "resume")
    if value in (None, "", "null", "None"):
        return []
    if is_multirun_argv(overrides):
        raise ConfigError(MULTIRUN_FIX)
    target = resolve(value, default_output_root(overrides))
    if override_value(overrides, "hydra.run.dir") is not None:
        return []
    # Quoted: Hydra's grammar then takes any path. Hydra writes no .hydra/ there (see preflight): the job saves the
    # resuming command's config in .hydra/resume-<time>/ once the resume is accepted (rundir.save_job_config).
    return [f"hydra.run.dir='{target.run_dir}'"]

"""Who may write into a run directory, and when.

Rules (DESIGN.md: "a completed run directory is never modified by a later command; one run directory has one
writer at a time"):
- One process per run directory: `RunDirLock` holds an OS file lock (the `filelock` package, `flock` on Linux) for
  the run's life. The lock file and a note naming its holder (pid, host, start time) lie *beside* the run
  directory (`<parent>/.<name>.lock`, `.<name>.lock.holder`), so taking and releasing it never touches the run
  directory itself; both are removed on release, and a process killed with SIGKILL leaves a file whose OS lock
  is already gone, so it never blocks the next run.
- Nothing is written into a directory that already holds a run before this process is allowed to write there:
  messages go to `DeferredRunLog`'s memory until `open()`, and Hydra's `.hydra/` config is written by
  `save_job_config` at that point (preflight turns Hydra's own writing off for single runs).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout
from loguru import logger
from omegaconf import OmegaConf

from layerwise.errors import ConfigError
from layerwise.runs.resume import read_summary

# Files and folders a run writes; a directory holding any of them holds a run (.hydra alone: a fresh directory).
RUN_FILES = ("summary.json", "run.log", "metrics.csv", "checkpoints", "images", "wandb")
# Set by preflight when it turned Hydra's `.hydra/` writing off for this job: the job writes it once accepted.
SAVE_CONFIG_ENV = "LAYERWISE_SAVE_JOB_CONFIG"


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RUN_FILES)


def describe(run_dir: Path) -> str:
    """`status completed after 3 epochs, bp/mlp/digits seed 0` (what a refusal names)."""
    summary = read_summary(run_dir)
    if summary is None:
        return "a run without summary.json (still running, or killed)"
    what = "/".join(str(summary.get(k)) for k in ("method", "model", "data"))
    return (f"a {summary.get('status')} run ({what}, seed {summary.get('seed')}, "
            f"{summary.get('epochs_done')} epochs)")


class RunDirLock:
    """An exclusive lock on a run directory; `acquire()` raises ConfigError naming the holder when it is taken."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        base = run_dir.parent / f".{run_dir.name}.lock"
        self.path, self.holder_path = base, base.with_name(base.name + ".holder")
        self._lock = FileLock(str(self.path), timeout=0)
        self.held = False

    def acquire(self) -> None:
        try:
            self._lock.acquire()
        except Timeout:
            raise ConfigError(f"{self.run_dir} is in use by another process ({self._holder()}); wait for it to "
                              "finish or stop it, or write to another directory") from None
        except OSError as err:
            raise ConfigError(f"cannot lock {self.run_dir} ({err.strerror or type(err).__name__} on {self.path}); "
                              "check permissions on its parent directory") from None
        self.held = True
        note = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        try:
            self.holder_path.write_text(json.dumps(note) + "\n")
        except OSError:
            pass  # the lock holds without the note

    def _holder(self) -> str:
        try:
            note = json.loads(self.holder_path.read_text())
            return f"pid {note['pid']} on {note['host']}, started {note['started']}"
        except (OSError, ValueError, KeyError):
            return f"see {self.path}"

    def release(self) -> None:
        if not self.held:
            return
        self.holder_path.unlink(missing_ok=True)
        # Removed while still held: filelock re-checks after flock that its file was not unlinked meanwhile, so
        # a process waiting on the old file retries on a new one instead of sharing the lock.
        self.path.unlink(missing_ok=True)
        self._lock.release()
        self.held = False


class DeferredRunLog:
    """run.log, kept in memory until `open()` says this process may write into the run directory."""

    def __init__(self, run_dir: Path):
        from layerwise.runlog import FILE_FORMAT

        self.run_dir = run_dir
        self.buffer: list[str] = []
        self.sink_id = logger.add(self.buffer.append, level="DEBUG", format=FILE_FORMAT, colorize=False)
        self.file_sink: int | None = None

    def open(self) -> None:
        from layerwise.runlog import add_run_log, redact

        if self.file_sink is not None:
            return
        logger.remove(self.sink_id)
        self.sink_id = None
        with open(self.run_dir / "run.log", "a", encoding="utf-8") as f:
            f.writelines(redact(line) for line in self.buffer)
        self.buffer.clear()
        self.file_sink = add_run_log(self.run_dir)

    def close(self) -> None:
        for sink in (self.sink_id, self.file_sink):
            if sink is not None:
                logger.remove(sink)
        self.sink_id = self.file_sink = None


def save_job_config(run_dir: Path, cfg, fresh: bool) -> Path | None:
    """Hydra's `.hydra/{config,hydra,overrides}.yaml`, written now that the job may write here: in `.hydra/` for
    a new run, in `.hydra/resume-<time>/` when it continues one (the original record stays)."""
    if os.environ.get(SAVE_CONFIG_ENV) != "1":
        return None  # Hydra wrote it (multirun, or the user set hydra.output_subdir)
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    first = fresh or not (run_dir / ".hydra" / "config.yaml").is_file()
    out = run_dir / ".hydra" if first else run_dir / ".hydra" / f"resume-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    hydra_cfg = HydraConfig.get()
    OmegaConf.save(cfg, out / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), out / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, out / "overrides.yaml")
    return out


def clear_run(run_dir: Path) -> None:
    """What overwrite=true removes before a new run starts in `run_dir`: the old run's files, `.hydra/` included."""
    import shutil

    for name in (*RUN_FILES, ".hydra"):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

"""Checks on the command line before Hydra starts (no torch imported): where the run will write.

Hydra creates the run directory before any layerwise code runs, so an unwritable output root would otherwise
end in Hydra's traceback; and `resume=` must point Hydra at the resumed run's own directory.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from layerwise.errors import ConfigError
from layerwise.hydra_job import process_rank
from layerwise.runs.resume import default_output_root, hydra_run_dir_override, is_multirun_argv, override_value
from layerwise.runs.rundir import SAVE_CONFIG_ENV

# Invocations that print something and run no job.
NO_JOB_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--version", "--shell-completion", "-sc"}


def output_dir(args: list[str]) -> Path:
    explicit = override_value(args, "hydra.sweep.dir" if is_multirun_argv(args) else "hydra.run.dir")
    return Path(explicit) if explicit and "${" not in explicit else default_output_root(args)


def check_writable(directory: Path) -> None:
    try:
        if directory.is_dir() and any(directory.iterdir()):
            # A directory that holds something (a run to resume or to refuse) is not touched: even a test file
            # would change it. os.access also reports a read-only file system (EROFS).
            if not os.access(directory, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
            return
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".layerwise-write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(f"cannot write to the output directory {directory} ({reason}); set "
                          "paths.output_root=<a writable directory> (or the LAYERWISE_OUTPUT_ROOT environment "
                          "variable)") from None


def _check_name(args: list[str]) -> None:
    """Hydra makes the run directory <time>_<name> before any job code runs: a name the file system refuses
    would end in Hydra's OSError traceback (a sweep's jobs are numbered dirs: their schema check names it)."""
    from layerwise.config.values import check_run_name

    name = override_value(args, "name")
    if name is not None and "${" not in name and not is_multirun_argv(args):
        check_run_name(name, output_dir(args))


def prepare(args: list[str]) -> list[str]:
    """Extra overrides for Hydra (the resumed run's directory); ConfigError for an unwritable output dir.

    A single run's `.hydra/` is written by the job once it may write into its run directory (see
    layerwise.runs.rundir): Hydra would otherwise write it into a completed run, a locked one, or one a refused
    `resume=` names, before any check ran. Sweeps keep Hydra's own writing; an explicit hydra.output_subdir wins.
    """
    if NO_JOB_FLAGS & {a.split("=", 1)[0] for a in args}:
        return []
    extra = hydra_run_dir_override(args)
    _check_name(args)
    check_writable(Path(override_value(extra, "hydra.run.dir")) if extra else output_dir(args))
    if not is_multirun_argv(args) and override_value(args, "hydra.output_subdir") is None:
        extra.append("hydra.output_subdir=null")
        if process_rank() == 0:
            os.environ[SAVE_CONFIG_ENV] = "1"
        # else: a process of another node, started with the same command (torchrun-style): rank 0 writes .hydra/
    return extra

"""Checks on the command line before Hydra starts (no torch imported): where the run will write.

Hydra creates the run directory before any layerwise code runs, so an unwritable output root would otherwise
end in Hydra's traceback; and `resume=` must point Hydra at the resumed run's own directory.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from layerwise.errors import ConfigError
from layerwise.resume import default_output_root, hydra_run_dir_override, is_multirun_argv, override_value

# Invocations that print something and run no job.
NO_JOB_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--version", "--shell-completion", "-sc"}


def output_dir(args: list[str]) -> Path:
    explicit = override_value(args, "hydra.sweep.dir" if is_multirun_argv(args) else "hydra.run.dir")
    return Path(explicit) if explicit and "${" not in explicit else default_output_root(args)


def check_writable(directory: Path) -> None:
    try:
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
    from layerwise.schema.values import check_run_name

    name = override_value(args, "name")
    if name is not None and "${" not in name and not is_multirun_argv(args):
        check_run_name(name, output_dir(args))


def prepare(args: list[str]) -> list[str]:
    """Extra overrides for Hydra (the resumed run's directory); ConfigError for an unwritable output dir."""
    if NO_JOB_FLAGS & {a.split("=", 1)[0] for a in args}:
        return []
    extra = hydra_run_dir_override(args)
    _check_name(args)
    check_writable(Path(override_value(extra, "hydra.run.dir")) if extra else output_dir(args))
    return extra

"""The config gate of a job, torch-free: the entry point runs it before importing the trainer, so a config error
costs well under a second, not the seconds torch and Lightning take to import.

A single run with a bad config exits 2 with one line and leaves no run directory. A sweep job's directory already
exists (Hydra made it): the job is marked failed there (summary.json), so the sweep report lists it, unless the
directory holds a run (then it is left as it was); the sweep goes on.
"""
from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from loguru import logger
from omegaconf import DictConfig, OmegaConf

from layerwise.config.checks import check_config
from layerwise.config.search import check_optimized_metric
from layerwise.core.layout import config_hash
from layerwise.errors import LayerwiseError
from layerwise.hydra_job import is_multirun, process_rank
from layerwise.runlog import redact, setup_console
from layerwise.runs.resume import read_summary, write_json_atomic
from layerwise.runs.rundir import holds_run


def run_dir(cfg: DictConfig) -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_root) / str(cfg.name)


def config_is_valid(cfg: DictConfig, where: Path, checks=None) -> bool:
    """The config checks, before anything is written (see the module's docstring). `checks`: what to run, by
    default the torch-free ones (the schema, the zero-derivative activation, the optimized metric)."""
    setup_console()  # the error is one console line in the run's format
    try:
        for check in checks or (check_config, check_optimized_metric):
            check(cfg)
        return True
    except LayerwiseError as err:
        logger.opt(exception=err if cfg.get("debug") is True else None).error(f"{err}")
        if not is_multirun():
            sys.exit(2)
        if process_rank() == 0 and not holds_run(where):
            mark_failed(cfg, where, str(err))
        return False


def identity_summary(cfg: DictConfig) -> dict:
    """What summary.json says of a run that stopped before training wrote one."""
    return {"name": str(cfg.get("name")), "method": str(OmegaConf.select(cfg, "method.name")),
            "model": str(OmegaConf.select(cfg, "model.name")), "data": str(OmegaConf.select(cfg, "data.name")),
            "seed": cfg.get("seed"), "config_hash": _safe_config_hash(cfg)}


def _safe_config_hash(cfg: DictConfig) -> str | None:
    try:
        return config_hash(cfg)
    except Exception:  # noqa: BLE001 - an unresolvable config (the error being reported) has no hash
        return None


def mark_failed(cfg: DictConfig, where: Path, error: str) -> None:
    """summary.json says failed and why (it may already exist if training started)."""
    if process_rank() != 0:
        return
    data = read_summary(where) or identity_summary(cfg)
    status = "diverged" if data.get("status") == "diverged" else "failed"  # keep the guard's status
    write_json_atomic(where / "summary.json",
                      {**data, "status": status, "error": redact(error.splitlines()[0]) if error else ""})

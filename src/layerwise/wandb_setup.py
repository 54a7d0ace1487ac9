"""Choosing how wandb runs: online with an API key, otherwise offline; never prompting."""
from __future__ import annotations

import netrc
import os
from pathlib import Path

from loguru import logger


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any(rc.authenticators(host) for host in ("api.wandb.ai",))


def resolve_mode(requested: str) -> str:
    """`auto` -> online if a key is configured else offline; WANDB_MODE in the environment wins."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    if requested == "online" and not has_api_key():
        logger.warning("logger.mode=online but no wandb API key is configured (wandb login / WANDB_API_KEY); "
                       "logging offline instead")
        return "offline"
    if requested == "auto":
        return "online" if has_api_key() else "offline"
    return requested


def build_wandb_logger(cfg, run_dir: Path, name: str, config: dict, group: str | None = None,
                       tags: list[str] | None = None):
    from lightning.pytorch.loggers import WandbLogger

    mode = resolve_mode(cfg.logger.mode)
    if mode == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    wandb_logger = WandbLogger(
        project=cfg.logger.project, entity=cfg.logger.entity or None, name=name, save_dir=str(run_dir),
        group=group if group is not None else (cfg.logger.group or None),
        tags=tags if tags is not None else list(cfg.logger.tags or []), job_type=cfg.logger.job_type,
        mode=mode, config=config, log_model=False,
    )
    if mode == "offline":
        logger.info(f"wandb offline (no API key): upload later with `wandb sync {run_dir / 'wandb'}/offline-run-*`")
    return wandb_logger

"""Choosing how wandb runs: online with an API key, otherwise offline; never prompting.

wandb is a convenience, never a reason to lose a run: if wandb cannot start (no network, bad key, service error)
the run goes on with its local logs and says so in one warning line; a wandb error while logging or finishing is
a warning too, after which wandb is left alone for the rest of the run.
"""
from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from loguru import logger

from layerwise.runlog import wandb_netrc_entry

DEFAULT_INIT_TIMEOUT = 30.0  # seconds wandb.init may take (wandb's own default is 90)


def has_api_key() -> bool:
    return bool(os.environ.get("WANDB_API_KEY")) or bool(wandb_netrc_entry())


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


def init_timeout(cfg) -> float:
    """`logger.init_timeout` if the config has it, else WANDB_INIT_TIMEOUT, else 30 s."""
    value = cfg.logger.get("init_timeout") if hasattr(cfg.logger, "get") else None
    if value is None:
        value = os.environ.get("WANDB_INIT_TIMEOUT") or DEFAULT_INIT_TIMEOUT
    return float(value)


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "no message"
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(err).__name__}: {text}"


class SafeWandbLogger(WandbLogger):
    """A WandbLogger whose failures after start-up (logging, finalising) are one warning, then silence."""

    _broken = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Lightning passes anonymous=None to wandb.init when anonymous logging is off; wandb >= 0.19 warns about
        # any value it is given ("The anonymous setting has no effect"). Not passing it is the same setting.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    def _safely(self, what: str, fn, *args, **kwargs):
        if self._broken:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - wandb must never end a training run
            self._broken = True
            logger.warning(f"wandb failed while {what} ({_reason(err)}); no more wandb logging for this run, "
                           "metrics.csv and run.log go on")
            return None

    def log_metrics(self, metrics, step=None):
        return self._safely("logging metrics", super().log_metrics, metrics, step)

    def log_hyperparams(self, params):
        return self._safely("logging the config", super().log_hyperparams, params)

    def log_table(self, *args, **kwargs):
        return self._safely("logging a table", super().log_table, *args, **kwargs)

    def log_text(self, *args, **kwargs):
        return self._safely("logging text", super().log_text, *args, **kwargs)

    def log_image(self, *args, **kwargs):
        return self._safely("logging images", super().log_image, *args, **kwargs)

    def after_save_checkpoint(self, checkpoint_callback):
        return self._safely("noting a checkpoint", super().after_save_checkpoint, checkpoint_callback)

    def finalize(self, status):
        return self._safely("finalising", super().finalize, status)


def _start(mode: str, timeout: float, **kwargs) -> SafeWandbLogger:
    """A logger whose wandb run is started now (inside the caller's try), not lazily at the first log call."""
    import wandb

    wandb_logger = SafeWandbLogger(mode=mode, settings=wandb.Settings(init_timeout=timeout), **kwargs)
    wandb_logger.experiment  # noqa: B018 - wandb.init happens here
    return wandb_logger


def build_wandb_logger(cfg, run_dir: Path, name: str, config: dict, group: str | None = None,
                       tags: list[str] | None = None, run_id: str | None = None):
    """The run's WandbLogger with its wandb run started, or None when wandb is disabled or cannot start.

    `run_id`: a resumed run's wandb id, so its metrics continue in the same wandb run."""
    mode = resolve_mode(cfg.logger.mode)
    if mode == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    kwargs = dict(
        project=cfg.logger.project, entity=cfg.logger.entity or None, name=name, save_dir=str(run_dir),
        group=group if group is not None else (cfg.logger.group or None),
        tags=tags if tags is not None else list(cfg.logger.tags or []), job_type=cfg.logger.job_type,
        config=config, log_model=False,
        **({"id": run_id, "resume": "allow"} if run_id else {}),
    )
    timeout = init_timeout(cfg)
    sync = f"wandb sync {run_dir / 'wandb'}/offline-run-*"
    local = "metrics.csv" if cfg.logger.get("csv", True) else "run.log and summary.json"
    try:
        wandb_logger = _start(mode, timeout, **kwargs)
    except Exception as err:  # noqa: BLE001 - no network, bad key, wandb service error: the run goes on
        reason = _reason(err)
        finish_wandb(quiet=True)
        wandb_logger = None
        if mode == "online":  # keep the run's wandb record locally, to upload once wandb is reachable
            try:
                wandb_logger = _start("offline", timeout, **kwargs)
            except Exception:  # noqa: BLE001
                finish_wandb(quiet=True)
                wandb_logger = None
        if wandb_logger is not None:
            logger.warning(f"wandb unavailable ({reason}); continuing with {local} and an offline wandb run "
                           f"— later: `{sync}`")
        else:
            logger.warning(f"wandb unavailable ({reason}); continuing with {local} only")
        return wandb_logger
    if mode == "offline":
        logger.info(f"wandb offline (no API key): upload later with `{sync}`")
    return wandb_logger


def finish_wandb(quiet: bool = False) -> None:
    """Close this job's wandb run (each multirun job needs its own); a wandb error here is a warning only
    (`quiet`: not even that, for a start-up that has already failed and said so)."""
    import sys

    if "wandb" not in sys.modules:
        return
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception as err:  # noqa: BLE001 - the run is over; its local outputs are already written
        if not quiet:
            logger.warning(f"wandb could not finish the run ({_reason(err)}); local outputs are complete")

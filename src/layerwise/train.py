"""One experiment from a composed config: data, network, rule, Lightning trainer, outputs."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from loguru import logger
from omegaconf import DictConfig, OmegaConf

from layerwise.checks import check_config, check_device
from layerwise.data import ImageDataModule
from layerwise.diagnostics import build_diagnostics
from layerwise.errors import LayerwiseError
from layerwise.hydra_job import is_multirun
from layerwise.images import RuleImages
from layerwise.methods import build_rule
from layerwise.models import build_network
from layerwise.module import LayerwiseModule
from layerwise.runlog import add_run_log, redact, setup_console
from layerwise.search import check_optimized_metric, objective
from layerwise.summary import EpochLine, SummaryCallback, write_json_atomic
from layerwise.wandb_setup import build_wandb_logger, finish_wandb


def _run_dir(cfg: DictConfig) -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_root) / str(cfg.name)


def _wandb_group_and_tags(cfg: DictConfig) -> tuple[str | None, list[str]]:
    """All jobs of a sweep share one wandb group (named after the sweep dir) unless logger.group is set; the
    experiment preset's name is a tag. The dashboard then groups a sweep's runs by method.name, model.name, seed."""
    tags = [str(t) for t in cfg.logger.tags or []]
    group = cfg.logger.group or None
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        experiment = hydra_cfg.runtime.choices.get("experiment")
        if experiment and experiment not in tags:
            tags.append(str(experiment))
        if group is None and is_multirun():
            sweep = Path(hydra_cfg.sweep.dir)
            group = f"{experiment or 'sweep'}_{sweep.parent.name}_{sweep.name}"
    return group, tags


def _loggers(cfg: DictConfig, run_dir: Path) -> list:
    loggers = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="", version=""))
    if cfg.logger.wandb:
        config = OmegaConf.to_container(cfg, resolve=True)
        group, tags = _wandb_group_and_tags(cfg)
        wandb_logger = build_wandb_logger(cfg, run_dir, str(cfg.name), config, group=group, tags=tags)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
    return loggers


def _progress_callbacks(cfg: DictConfig) -> list:
    show = cfg.trainer.progress_bar
    if show == "auto":
        show = sys.stderr.isatty()
    return [RichProgressBar(leave=False)] if show else []


def _limit(value):
    return None if value in (None, 1.0) else value


def build_experiment(cfg: DictConfig):
    """Data module, network, rule and LightningModule for `cfg` (no trainer)."""
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    rule = build_rule(cfg.method)  # rejects bad rule options before any data is loaded
    datamodule = ImageDataModule(cfg.data, pin_memory=cfg.trainer.accelerator in ("gpu", "cuda"))
    datamodule.setup("fit")
    info = datamodule.info
    net = build_network(cfg.model, info.spec)
    example = datamodule.example_batch()
    rule.setup(net, example, info.num_classes)
    module = LayerwiseModule(net, rule, cfg.optimizer, info.num_classes, example,
                             max_epochs=int(cfg.trainer.max_epochs), grad_clip=cfg.trainer.grad_clip,
                             memory_batches=int(cfg.trainer.memory_batches),
                             nonfinite=str(cfg.trainer.get("nonfinite", "stop")))
    return datamodule, module


def fit(cfg: DictConfig, run_dir: Path) -> dict:
    diagnostics = build_diagnostics(cfg)  # rejects bad diagnostics options before any data is loaded
    datamodule, module = build_experiment(cfg)
    n_params = sum(p.numel() for p in module.parameters())
    logger.info(f"{cfg.name}: {module.rule.describe()} on {cfg.model.name} ({len(module.net.blocks)} blocks, "
                f"{len(module.groups)} optimizers, {n_params / 1e6:.2f}M params incl. aux) -> {run_dir}")
    identity = {"name": str(cfg.name), "method": str(cfg.method.name), "model": str(cfg.model.name),
                "data": str(cfg.data.name), "seed": int(cfg.seed)}
    summary = SummaryCallback(run_dir / "summary.json", identity, extras=diagnostics)
    # With a validation split, "best" is chosen on it, not on the test set.
    monitor = "val/acc" if getattr(datamodule, "val_set", None) is not None else "test/acc"
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode="max",
                                  save_top_k=1, save_last=True, auto_insert_metric_name=False)
    t = cfg.trainer
    progress = _progress_callbacks(cfg)
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, precision=t.precision, max_epochs=int(t.max_epochs),
        limit_train_batches=_limit(t.limit_train_batches), limit_val_batches=_limit(t.limit_val_batches),
        check_val_every_n_epoch=int(t.check_val_every_n_epoch), log_every_n_steps=int(t.log_every_n_steps),
        deterministic=t.deterministic, benchmark=t.benchmark, num_sanity_val_steps=0,
        logger=_loggers(cfg, run_dir) or False,
        callbacks=[summary, checkpoints, EpochLine(console=not progress), *progress,
                   RuleImages(run_dir / "images", t.images_every_n_epochs), *diagnostics],
        enable_progress_bar=bool(progress), enable_model_summary=False,
        default_root_dir=str(run_dir),
    )
    trainer.fit(module, datamodule=datamodule)
    result = summary.data
    logger.info(f"{cfg.name}: {result.get('status')} after {result.get('epochs_done')} epochs, "
                f"test acc {result.get('test_acc') or 0:.4f} (best {result.get('best_test_acc') or 0:.4f})")
    return result


def run(cfg: DictConfig) -> float | None:
    """Hydra task: train one configuration; returns its `optimized_metric` (test/acc by default) to sweepers."""
    setup_console()
    run_dir = _run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    sink = add_run_log(run_dir)
    try:
        check_config(cfg)
        check_device(cfg.trainer)
        check_optimized_metric(cfg)
        return objective(cfg, fit(cfg, run_dir))
    except LayerwiseError as err:
        logger.error(f"{err}")
        if not is_multirun():
            sys.exit(2)
        _mark_failed(cfg, run_dir, str(err))
        return math.nan
    except Exception as err:
        if not is_multirun():
            raise
        # One job's crash must not cost a sweep the other jobs' results: the job is marked failed (traceback in
        # its run.log), and the sweep report lists it and exits non-zero. NaN tells Optuna the trial failed.
        logger.opt(exception=err).error(f"job failed: {type(err).__name__}: {err}")
        _mark_failed(cfg, run_dir, f"{type(err).__name__}: {err}")
        return math.nan
    finally:
        finish_wandb()  # each (multirun) job closes its own wandb run, or the next job logs into it
        logger.remove(sink)


def _mark_failed(cfg: DictConfig, run_dir: Path, error: str) -> None:
    """summary.json says failed and why (it may already exist if training started)."""
    path = run_dir / "summary.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        data = {"name": str(cfg.get("name")), "method": str(OmegaConf.select(cfg, "method.name")),
                "model": str(OmegaConf.select(cfg, "model.name")), "data": str(OmegaConf.select(cfg, "data.name")),
                "seed": cfg.get("seed")}
    status = "diverged" if data.get("status") == "diverged" else "failed"  # keep the guard's status
    write_json_atomic(path, {**data, "status": status, "error": redact(error.splitlines()[0]) if error else ""})


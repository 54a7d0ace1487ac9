"""One experiment from a composed config: data, network, rule, Lightning trainer, outputs."""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import AsyncCheckpointIO
from loguru import logger
from omegaconf import DictConfig, OmegaConf

from layerwise.config.checks import check_config, check_device
from layerwise.config.groups import TRAINER_KEYS
from layerwise.config.search import check_optimized_metric, objective
from layerwise.config.trainer_args import lightning_args
from layerwise.core.checkpoint import AtomicCheckpointIO, CheckpointError, RunCheckpoint, load_checkpoint
from layerwise.core.experiment import build_experiment, config_hash, run_identity
from layerwise.core.layout import ResumeTarget
from layerwise.core.module import LayerwiseModule
from layerwise.core.preemption import Interrupted, Preemption
from layerwise.core.resources import memory_errors
from layerwise.core.run_state import KEY, check_compatible, group_layout
from layerwise.diagnostics.images import RuleImages
from layerwise.diagnostics.probes import build_diagnostics
from layerwise.errors import ConfigError, LayerwiseError
from layerwise.hydra_job import is_multirun, process_rank
from layerwise.parallel.distributed import build_strategy, use_sync_batchnorm
from layerwise.rules.base import LearningRule
from layerwise.runlog import setup_console
from layerwise.runs.csv_continue import ContinuedCSVLogger
from layerwise.runs.gate import config_is_valid, identity_summary, mark_failed
from layerwise.runs.gate import run_dir as job_run_dir
from layerwise.runs.progress import EpochProgressBar
from layerwise.runs.resume import MULTIRUN_FIX, interrupted_run, read_summary, resolve, write_json_atomic
from layerwise.runs.rundir import DeferredRunLog, RunDirLock, clear_run, describe, holds_run, save_job_config
from layerwise.runs.summary import EpochLine, SummaryCallback
from layerwise.runs.wandb_setup import build_wandb_logger, finish_wandb


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


def _loggers(cfg: DictConfig, run_dir: Path, resumed: dict | None = None) -> list:
    """`resumed`: the resumed checkpoint's run state; its metrics.csv rows are kept and its wandb run continues."""
    loggers = []
    if cfg.logger.csv:
        where = dict(save_dir=str(run_dir), name="", version="")
        loggers.append(ContinuedCSVLogger(**where, keep_through_epoch=resumed["position"]["epoch"]) if resumed
                       else CSVLogger(**where))
    if cfg.logger.wandb:
        config = OmegaConf.to_container(cfg, resolve=True)
        group, tags = _wandb_group_and_tags(cfg)
        wandb_logger = build_wandb_logger(cfg, run_dir, str(cfg.name), config, group=group, tags=tags,
                                          run_id=resumed.get("wandb_id") if resumed else None)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
    loggers += _extra_loggers(cfg, run_dir)
    return loggers


def _extra_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """logger.extra: any Lightning logger by `_target_` (logger=tensorboard); save_dir defaults to the run dir."""
    from layerwise.config.targets import build

    extra = cfg.logger.get("extra") or {}
    return [build(node, save_dir=str(run_dir)) for node in extra.values() if node is not None]


def _config_callbacks(cfg: DictConfig) -> list:
    """callbacks: Lightning callbacks by `_target_` (+callbacks=early_stopping), after layerwise's own."""
    from layerwise.config.targets import build

    return [build(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]


def _progress_callbacks(cfg: DictConfig) -> list:
    show = cfg.trainer.progress_bar
    if show == "auto":
        show = sys.stderr.isatty()
    return [EpochProgressBar()] if show else []


def _image_callbacks(module: LayerwiseModule, run_dir: Path, t) -> list:
    """RuleImages for a rule that draws images (every callback costs Lightning's hook calls in every step)."""
    if type(module.rule).images is LearningRule.images:
        return []
    return [RuleImages(run_dir / "images", t.images_every_n_epochs)]


def _limit(value):
    return None if value in (None, 1.0) else value


def _checkpoint_callbacks(dirpath: Path, monitor: str) -> list[RunCheckpoint]:
    """best.ckpt (highest `monitor`) and last.ckpt after every epoch. Two callbacks, because Lightning 2.6's
    save_last=True only refreshes last.ckpt in epochs where the best one changed."""
    best = RunCheckpoint(dirpath=dirpath, filename="best", monitor=monitor, mode="max", save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    last = RunCheckpoint(dirpath=dirpath, filename="last", monitor=None, save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    return [best, last]


def checkpoint_epochs_done(checkpoint: dict) -> int:
    """Epochs a checkpoint has fully trained: Lightning counts an epoch `processed` once its training batches
    all ran (a checkpoint from a stop mid-epoch, even before its last batch, has not)."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress.get("processed", checkpoint[KEY]["position"]["epoch"]))


def _prepare_resume(target: ResumeTarget, datamodule, module: LayerwiseModule, identity: dict,
                    max_epochs: int, run_dir: Path) -> dict:
    """Check that the checkpoint fits this run and point the data module at its position; its run state."""
    checkpoint = load_checkpoint(target.checkpoint, map_location="cpu")
    if "pipeline" in checkpoint:  # per-stage optimizer states, which Lightning cannot restore
        raise CheckpointError(f"{target.checkpoint} was written by trainer=pipeline; resume it with trainer=pipeline")
    check_compatible(checkpoint, target.checkpoint, module.state_dict(), group_layout(module.groups,
                     module._group_params), identity)
    meta = checkpoint[KEY]
    position = meta["position"]
    done = checkpoint_epochs_done(checkpoint)
    if done >= max_epochs:
        raise ConfigError(f"resume={target.checkpoint}: it has trained {done} epochs, trainer.max_epochs={max_epochs} "
                          f"leaves none to train; raise trainer.max_epochs to train longer")
    later = (read_summary(run_dir) or {}).get("epochs_done") if run_dir == target.run_dir else None
    if isinstance(later, int) and later > done:
        raise ConfigError(f"resume={target.checkpoint}: this checkpoint is from epoch {done}, but {run_dir} went on "
                          f"to epoch {later}; continuing from it would overwrite those epochs. Resume with "
                          f"resume={run_dir} (its last checkpoint), or continue into a new directory with "
                          f"hydra.run.dir=<new dir>")
    if hasattr(datamodule, "resume_at"):
        datamodule.resume_at(position["epoch"], position["batches_done"])
    logger.info(f"resuming {target.checkpoint} at epoch {position['epoch'] + 1}, after batch "
                f"{position['batches_done']}")
    return meta


def fit(cfg: DictConfig, run_dir: Path, resume: ResumeTarget | None = None,
        stop: Preemption | None = None, accept=None) -> dict:
    """Train `cfg` into `run_dir`. `accept()` is called once the run may write into `run_dir` (after a resumed
    checkpoint was checked against this run): nothing is written there before."""
    if cfg.trainer.get("pipeline"):
        from layerwise.runs.pipeline import fit_pipeline
        return fit_pipeline(cfg, run_dir, resume, stop, accept=accept)
    diagnostics = build_diagnostics(cfg)  # rejects bad diagnostics options before any data is loaded
    with memory_errors(cfg, "loading the data and building the network"):
        datamodule, module = build_experiment(cfg)
    n_params = sum(p.numel() for p in module.parameters())
    logger.info(f"{cfg.name}: {module.rule.describe()} on {cfg.model.name} ({len(module.net.blocks)} blocks, "
                f"{len(module.groups)} optimizers, {n_params / 1e6:.2f}M params incl. aux) -> {run_dir}")
    identity = run_identity(cfg)
    module.run_identity = identity
    resumed = (_prepare_resume(resume, datamodule, module, identity, int(cfg.trainer.max_epochs), run_dir)
               if resume else None)
    if accept is not None:
        accept()
    # With a validation split, "best" (best.ckpt) is chosen on it, else on the test set; summary.json says which.
    selected_on = "val" if getattr(datamodule, "val_set", None) is not None else "test"
    monitor = f"{selected_on}/acc"
    summary = SummaryCallback(run_dir / "summary.json", {**identity, "config_hash": config_hash(cfg),
                                                         "selected_on": selected_on}, extras=diagnostics)
    checkpoints = _checkpoint_callbacks(run_dir / "checkpoints", monitor)
    t = cfg.trainer
    progress = _progress_callbacks(cfg)
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, precision=t.precision, max_epochs=int(t.max_epochs),
        strategy=build_strategy(t), sync_batchnorm=use_sync_batchnorm(t),
        limit_train_batches=_limit(t.limit_train_batches), limit_val_batches=_limit(t.limit_val_batches),
        check_val_every_n_epoch=int(t.check_val_every_n_epoch), log_every_n_steps=int(t.log_every_n_steps),
        deterministic=t.deterministic, benchmark=t.benchmark,
        # Every other trainer key is a lightning.Trainer argument checked by the config checks (num_nodes, ...); it
        # wins over these two defaults (a sanity evaluation leaves metrics.csv as it was, but for throughput).
        **{"num_sanity_val_steps": 0, "enable_model_summary": False, **lightning_args(t, TRAINER_KEYS)},
        # Only a run continued in its own directory continues its metrics.csv rows and wandb run.
        logger=_loggers(cfg, run_dir, resumed if resume and resume.run_dir == run_dir else None) or False,
        # Written by a background thread (tensors copied first; one write at a time; fit waits for the last one
        # before on_fit_end): the file write and fsync, ~2/3 of a small run's checkpoint, overlap training.
        plugins=[AsyncCheckpointIO(AtomicCheckpointIO())],
        use_distributed_sampler=False,  # the data module shards by itself, so a resume can skip exact batches
        callbacks=[*([stop] if stop else []), summary, *checkpoints, EpochLine(console=not progress), *progress,
                   *_image_callbacks(module, run_dir, t), *diagnostics, *_config_callbacks(cfg)],
        enable_progress_bar=bool(progress),
        default_root_dir=str(run_dir),
    )
    with warnings.catch_warnings(), memory_errors(cfg, "training"):
        if resume:  # a resumed run writes into its own checkpoint directory on purpose
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.checkpoint if resume else None,
                    weights_only=True)
    result = summary.data
    logger.info(f"{cfg.name}: {result.get('status')} after {result.get('epochs_done')} epochs, "
                f"test acc {result.get('test_acc') or 0:.4f} (best {result.get('best_test_acc') or 0:.4f})")
    return result


def run(cfg: DictConfig, config_checked: bool = False) -> float | None:
    """Hydra task: train one configuration; returns its `optimized_metric` (test/acc by default) to sweepers.
    `config_checked`: the entry point already ran the torch-free config checks (layerwise.runs.gate).

    Nothing is written into the run directory until it is this run's: a new directory, this run's own
    interrupted run, a checked `resume=`, or `overwrite=true`. A refusal leaves an existing directory as it was;
    an error in a directory this run owns leaves summary.json saying `failed` (compare.py then lists it so).
    """
    setup_console()
    run_dir = job_run_dir(cfg)
    if not _config_is_valid(cfg, run_dir, config_checked):
        return math.nan
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = process_rank() == 0  # DDP workers share rank 0's run dir, lock and logs
    lock = RunDirLock(run_dir) if writer else None
    run_log = DeferredRunLog(run_dir) if writer else None
    owned = False
    stop = Preemption(run_dir / "checkpoints" / "last.ckpt")

    def accept(fresh: bool = False) -> None:
        nonlocal owned
        if owned:
            return
        owned = True
        if writer:
            run_log.open()
            save_job_config(run_dir, cfg, fresh)

    try:
        with stop:
            if lock is not None:
                lock.acquire()
            # A resume is accepted once its checkpoint is checked (fit), even into a directory that holds no run.
            fresh = not writer or (not holds_run(run_dir) and not cfg.get("resume"))
            if fresh:
                accept(fresh=True)
            done = _completed_sweep_job(cfg, run_dir)
            if done is not None:
                return objective(cfg, done)
            resume = _claim(cfg, run_dir, fresh, accept)
            return objective(cfg, fit(cfg, run_dir, resume, stop, accept=accept))
    except Interrupted as err:
        if owned:
            _report_interrupted(cfg, run_dir, err, stop)
        else:
            logger.warning(f"interrupted by {err} before the run started; {run_dir} is unchanged")
        stop.requeue()  # under submitit: requeue the job (it continues from the checkpoint); exits
        sys.exit(err.exit_code)
    except LayerwiseError as err:
        # A user's mistake: one line, no traceback, unless debug=true asks for where it was raised.
        logger.opt(exception=err if cfg.get("debug") is True else None).error(f"{err}")
        if owned:
            mark_failed(cfg, run_dir, str(err))
        if not is_multirun():
            sys.exit(2)
        return math.nan
    except Exception as err:
        if owned:
            mark_failed(cfg, run_dir, f"{type(err).__name__}: {err}")
        if not is_multirun():
            raise
        # One job's crash must not cost a sweep the other jobs' results: the job is marked failed (traceback in
        # its run.log), and the sweep report lists it and exits non-zero. NaN tells Optuna the trial failed.
        logger.opt(exception=err).error(f"job failed: {type(err).__name__}: {err}")
        return math.nan
    finally:
        finish_wandb()  # each (multirun) job closes its own wandb run, or the next job logs into it
        if run_log is not None:
            run_log.close()
        if lock is not None:
            lock.release()


def _config_is_valid(cfg: DictConfig, run_dir: Path, checked: bool = False) -> bool:
    """The config checks (layerwise.runs.gate), before anything is written; `checked`: the entry point ran the
    torch-free ones already, only the machine's (check_device) remain."""
    def device(job: DictConfig) -> None:
        check_device(job.trainer)

    return config_is_valid(cfg, run_dir, (device,) if checked else (check_config, check_optimized_metric, device))


def _completed_sweep_job(cfg: DictConfig, run_dir: Path) -> dict | None:
    """A sweep rerun in its old dir (hydra.sweep.dir=...) keeps the jobs that completed: their summary, not a
    retrained (and overwritten) run."""
    if cfg.get("resume") or not is_multirun():
        return None
    summary = read_summary(run_dir) or {}
    if summary.get("status") != "completed" or summary.get("config_hash") != config_hash(cfg):
        return None
    logger.info(f"{run_dir} already holds this job's completed run; keeping it (delete the directory to rerun)")
    return summary


def _claim(cfg: DictConfig, run_dir: Path, fresh: bool, accept) -> ResumeTarget | None:
    """What this run does with `run_dir`: the checkpoint to resume (accepted by fit once it is checked), or None
    to train from scratch (accepted here). ConfigError, with nothing written, when `run_dir` holds another run."""
    value = cfg.get("resume")
    if value:
        if is_multirun():
            raise ConfigError(MULTIRUN_FIX)
        target = resolve(str(value), Path(cfg.paths.output_root))
        _refuse_completed(cfg, target)
        if target.run_dir != run_dir and holds_run(run_dir):  # continuing into another directory that holds a run
            _refuse_occupied(cfg, run_dir)
        return target
    if fresh:
        return None
    summary = read_summary(run_dir) or {}
    if summary.get("status") == "interrupted" and summary.get("config_hash") == config_hash(cfg):
        checkpoint = interrupted_run(run_dir)
        if checkpoint is not None:
            logger.info(f"{run_dir} holds an interrupted run: continuing it from {checkpoint}")
            return ResumeTarget(run_dir, checkpoint)
        logger.info(f"{run_dir} holds this run, interrupted before its first checkpoint: starting it again")
    elif is_multirun():
        pass  # a rerun sweep's job whose config changed: trained again in its numbered directory, as before
    elif cfg.get("overwrite"):
        logger.warning(f"overwrite=true: replacing {describe(run_dir)} in {run_dir}")
        clear_run(run_dir)
        accept(fresh=True)
        return None
    else:
        _refuse_occupied(cfg, run_dir)
    accept()
    return None


def _refuse_occupied(cfg: DictConfig, run_dir: Path) -> None:
    summary = read_summary(run_dir) or {}
    how = (f"continue it with resume={run_dir}" if summary.get("status") != "completed"
           else "train it longer with resume=<it> and a higher trainer.max_epochs")
    raise ConfigError(f"{run_dir} already holds {describe(run_dir)}; start a new directory (leave out "
                      f"hydra.run.dir), {how}, or replace it with overwrite=true")


def _refuse_completed(cfg: DictConfig, target: ResumeTarget) -> None:
    """A completed run is only continued to train longer (a higher trainer.max_epochs)."""
    summary = read_summary(target.run_dir) or {}
    done, max_epochs = summary.get("epochs_done"), int(cfg.trainer.max_epochs)
    if summary.get("status") == "completed" and isinstance(done, int) and done >= max_epochs:
        raise ConfigError(f"resume={cfg.resume}: {target.run_dir} already completed at epoch {done}; raise "
                          f"trainer.max_epochs (now {max_epochs}) to train longer")


def _report_interrupted(cfg: DictConfig, run_dir: Path, err: Interrupted, stop: Preemption) -> None:
    resume = f"python main.py <same overrides> resume={run_dir}"
    checkpoint = stop.checkpoint_path
    if stop.saved:
        saved = f"checkpoint saved to {checkpoint}"
    elif checkpoint.is_file():  # e.g. a second Ctrl-C: the state mid-batch is not saved, the last epoch's is kept
        saved = f"stopped at once; {checkpoint} is the last epoch's checkpoint"
    else:
        saved, resume = "no checkpoint was written", None
    if process_rank() == 0:
        summary = read_summary(run_dir) or identity_summary(cfg)
        write_json_atomic(run_dir / "summary.json", {**summary, "status": "interrupted", "signal": str(err),
                                                     "resume": resume})
    logger.warning(f"interrupted by {err}: {saved}" + (f"; continue with: {resume}" if resume else ""))

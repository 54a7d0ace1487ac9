"""Schemas of the config groups other than method: data, model, optimizer, trainer, logger, diagnostics, paths.

Field types are checked by OmegaConf when the config is merged into them (wrong type, unknown key); ranges,
choices and cross-field rules by each `__post_init__`, which OmegaConf.to_object calls.
A group whose options differ in their keys (data=synthetic has n_train, model=mlp has widths) has one subclass
per kind, picked by `data.name` / `model.arch` / `optimizer.name`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Dict, List, Optional

from omegaconf import MISSING

from layerwise.config.targets import TargetNode, arguments, derived_schema, target_class
from layerwise.config.trainer_args import check_trainer_args, lightning_precisions
from layerwise.errors import ConfigError
from layerwise.options import checked_options, in_range, is_number, items_in_range, key, one_of
from layerwise.parallel.processes import START_METHODS

# ----------------------------------------------------------------------------------------------- optimizer

SCHEDULERS = ("none", "constant", "step", "multistep", "cosine")


@dataclass
class SchedulerSchema:
    PATH: ClassVar[str] = "optimizer.scheduler"
    name: Optional[str] = "cosine"
    step_size: int = 30
    milestones: List[int] = field(default_factory=lambda: [50, 75])
    gamma: float = 0.1
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.name is not None:
            one_of(self, "name", SCHEDULERS)
        in_range(self, "step_size", 1, example=30)
        items_in_range(self, "milestones", 1, example="[50,75]")
        if list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"optimizer.scheduler.milestones={list(self.milestones)} must be increasing, "
                              f"e.g. optimizer.scheduler.milestones=[50,75]")
        in_range(self, "gamma", 0, low_open=True, example=0.1)
        in_range(self, "min_lr", 0, example=0.0)


@dataclass
class OptimizerSchema:
    PATH: ClassVar[str] = "optimizer"
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = 0.0
    scheduler: SchedulerSchema = field(default_factory=SchedulerSchema)

    def __post_init__(self) -> None:
        one_of(self, "name", OPTIMIZER_SCHEMAS)
        in_range(self, "lr", 0, low_open=True, example=0.05 if self.name == "sgd" else 0.001)
        in_range(self, "weight_decay", 0, example=5e-4)


@dataclass
class SgdSchema(OptimizerSchema):
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        in_range(self, "momentum", 0, 1, example=0.9)


@dataclass
class AdamSchema(OptimizerSchema):
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])

    def __post_init__(self) -> None:
        super().__post_init__()
        items_in_range(self, "betas", 0, 1, length=2, example="[0.9,0.999]")


OPTIMIZER_SCHEMAS: dict[str, type[OptimizerSchema]] = {"sgd": SgdSchema, "adam": AdamSchema, "adamw": AdamSchema}


@dataclass
class TargetOptimizerSchema(TargetNode):
    """An optimizer named by `_target_` (conf/optimizer/rmsprop.yaml, optimizer=custom): its arguments are the
    class's own (layerwise.config.targets derives their types), plus layerwise's `name` and `scheduler`."""
    PATH: ClassVar[str] = "optimizer"
    PARTIAL: ClassVar[bool] = True
    name: Optional[str] = None
    scheduler: SchedulerSchema = field(default_factory=SchedulerSchema)

    def __post_init__(self) -> None:
        super().__post_init__()
        if is_number(getattr(self, "lr", None)):
            in_range(self, "lr", 0, low_open=True, example=0.001)
        if is_number(getattr(self, "weight_decay", None)):
            in_range(self, "weight_decay", 0, example=0.01)


def optimizer_schema(node: dict) -> type:
    """The schema of the optimizer in use: by `_target_` (any torch.optim class, checked against its signature),
    else by `name` (sgd, adam, adamw: layerwise's own schemas)."""
    if isinstance(node, dict) and node.get("_target_") is not None:
        target, name = node["_target_"], node.get("name")
        if name in OPTIMIZER_SCHEMAS:  # +optimizer._target_=... on sgd/adam: their keys are for their own class
            params, _ = arguments(target_class("optimizer", target), skip=1)
            foreign = [k for k in node if k not in params and k not in ("_target_", "_partial_", "name", "scheduler")]
            if foreign:
                raise ConfigError(f"optimizer._target_={target} does not take optimizer.{foreign[0]} (a key of "
                                  f"optimizer={name}); start from optimizer=custom optimizer._target_={target}, "
                                  f"which sets only lr")
        return derived_schema("optimizer", node, skip=1, base=TargetOptimizerSchema, own=("name", "scheduler"))
    choice = node.get("name") if isinstance(node, dict) else None
    if choice not in OPTIMIZER_SCHEMAS:
        raise ConfigError(f"optimizer={choice!r} is not known; available: {', '.join(sorted(OPTIMIZER_SCHEMAS))} "
                          f"(or any torch.optim class: optimizer=custom optimizer._target_=torch.optim.RMSprop)")
    return OPTIMIZER_SCHEMAS[choice]

# ------------------------------------------------------------------------------------------------- trainer


def _check_limit(obj: Any, name: str) -> None:
    """Lightning's limit_*_batches: a fraction in (0, 1] or a number of batches >= 1."""
    value = getattr(obj, name)
    path = key(obj, name)
    ok = is_number(value) and ((isinstance(value, float) and 0 < value <= 1) or (isinstance(value, int) and value >= 1))
    if not ok:
        raise ConfigError(f"{path}={value!r} must be a fraction in (0, 1] or a number of batches >= 1, "
                          f"e.g. {path}=1.0 (all) or {path}=10")


@dataclass
class PipelineSchema:
    """trainer=pipeline (conf/trainer/pipeline.yaml): blocks split over stage processes."""
    PATH: ClassVar[str] = "trainer.pipeline"
    stages: int = 2
    split: Optional[List[int]] = None
    buffer: int = 0
    backend: str = "auto"
    threads_per_stage: int = 1
    timeout_s: float = 300
    warmup_batches: int = 2

    def __post_init__(self) -> None:
        in_range(self, "stages", 1, example=2)
        if self.split is not None:
            items_in_range(self, "split", 1, length=self.stages, example="[2,1]")
        in_range(self, "buffer", 0, example=0, what="0 = synchronous, as sequential DGL")
        one_of(self, "backend", ("auto", "gloo", "nccl"))
        in_range(self, "threads_per_stage", 1, example=1)
        in_range(self, "timeout_s", 0, low_open=True, example=300)
        in_range(self, "warmup_batches", 0, example=2)


@dataclass
class TrainerSchema:
    PATH: ClassVar[str] = "trainer"
    accelerator: str = "auto"
    devices: Any = 1                 # an int, a list of GPU indices, or auto
    precision: Any = "32-true"
    max_epochs: int = 30
    limit_train_batches: Any = 1.0   # a fraction or a number of batches
    limit_val_batches: Any = 1.0
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 50
    grad_clip: Optional[float] = None
    nonfinite: str = "stop"
    deterministic: Any = False       # true | false | warn (Lightning's choices)
    benchmark: bool = False
    progress_bar: Any = "auto"       # auto | true | false
    memory_batches: int = 2
    images_every_n_epochs: Optional[int] = None
    strategy: str = "auto"
    sync_batchnorm: bool = False
    channels_last: bool = False
    compile: Any = False             # false | true | a torch.compile mode
    compile_backend: str = "inductor"
    pipeline: Optional[PipelineSchema] = None

    def __post_init__(self) -> None:
        one_of(self, "accelerator", ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu"))
        devices = self.devices
        ok = (devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= -1)
              or (isinstance(devices, str) and devices.replace(",", "").strip().isdigit())
              or (isinstance(devices, (list, tuple)) and devices and all(
                  isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)))
        if not ok:
            raise ConfigError(f"trainer.devices={devices!r} must be a device count (-1 = all), a list of GPU indices "
                              f"or auto, e.g. trainer.devices=1 or trainer.devices=[0]")
        processes = (isinstance(devices, int) and devices >= 1) or (
            isinstance(devices, str) and devices.strip().isdigit() and int(devices) >= 1)
        if self.accelerator == "cpu" and not (devices == "auto" or processes):
            # Lightning's CPUAccelerator takes a process count only (a TypeError traceback otherwise).
            raise ConfigError(f"trainer.devices={devices!r} names GPU indices (or all devices) but "
                              f"trainer.accelerator=cpu runs a number of processes; use trainer.devices=1 "
                              f"(or N), or trainer.accelerator=gpu")
        one_of(self, "precision", lightning_precisions())
        in_range(self, "max_epochs", 1, example=30)
        _check_limit(self, "limit_train_batches")
        _check_limit(self, "limit_val_batches")
        in_range(self, "check_val_every_n_epoch", 1, example=1)
        in_range(self, "log_every_n_steps", 1, example=50)
        in_range(self, "grad_clip", 0, low_open=True, example=1.0)
        one_of(self, "nonfinite", ("stop", "skip"))
        one_of(self, "deterministic", (True, False, "warn"))
        one_of(self, "progress_bar", ("auto", True, False))
        in_range(self, "memory_batches", 0, example=2)
        in_range(self, "images_every_n_epochs", 1, example=10)
        one_of(self, "strategy", ["auto", *START_METHODS])
        from layerwise.core.compile_modes import compile_mode

        compile_mode(self.compile)  # its own one-line ConfigError
        if not self.compile_backend:
            raise ConfigError("trainer.compile_backend is empty; use e.g. trainer.compile_backend=inductor")


#: The trainer config's own keys; any other key of it is a lightning.Trainer argument (config/trainer_args.py).
TRAINER_KEYS = frozenset(f.name for f in fields(TrainerSchema))


def split_lightning_args(container: dict) -> dict:
    """Take the lightning.Trainer pass-through keys out of `container["trainer"]` (a plain copy of the config) once
    they are checked, so that the typed TrainerSchema sees only its own keys; returns them."""
    trainer = container.get("trainer")
    if not isinstance(trainer, dict):
        return {}
    extra = check_trainer_args(trainer, TRAINER_KEYS)
    for name in extra:
        del trainer[name]
    return extra


# -------------------------------------------------------------------------------------------------- logger

@dataclass
class LoggerSchema:
    PATH: ClassVar[str] = "logger"
    csv: bool = True
    wandb: bool = True
    mode: str = "auto"
    project: str = "layerwise"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    job_type: str = "train"
    init_timeout: Optional[float] = 30
    # Loggers besides csv and wandb, each a node with a `_target_` (conf/logger/tensorboard.yaml); a logger that
    # takes save_dir and is given none writes into the run directory.
    extra: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        one_of(self, "mode", ("auto", "online", "offline", "disabled"))
        in_range(self, "init_timeout", 0, low_open=True, example=30)
        check_parts("logger.extra", self.extra, defaults=("save_dir",))

    @property
    def any(self) -> bool:
        return bool(self.csv or self.wandb or self.extra)


# ------------------------------------------------------------------------- callbacks and other `_target_` parts

#: The metrics a callback may monitor: the logged ones (rules add their own under train/ and block{i}/).
MONITORED = ("test/acc", "test/loss", "val/acc", "val/loss", "train/loss", "train/acc", "train/lr")


def check_parts(path: str, parts: Any, defaults: tuple = ()) -> None:
    """Each node of `parts` (callbacks, logger.extra) names a class by `_target_`; its keys are that class's
    arguments, of their annotated types. `defaults`: arguments layerwise fills in when the node leaves them out."""
    if parts is None:
        return
    if not isinstance(parts, dict):
        raise ConfigError(f"{path} must be a mapping of name -> node with a _target_, got {parts!r}")
    for name, node in parts.items():
        where = f"{path}.{name}"
        if node is None:
            continue  # switched off on the command line (callbacks.early_stopping=null)
        if not isinstance(node, dict) or "_target_" not in node:
            raise ConfigError(f"{where} must be a node with a _target_ (the class to build), e.g. "
                              f"{where}._target_=lightning.pytorch.callbacks.EarlyStopping")
        params, _ = arguments(target_class(where, node["_target_"]))
        given = {**{d: "." for d in defaults if d in params and d not in node}, **node}  # filled in at run time
        checked_options(derived_schema(where, given), given)
        monitor = node.get("monitor")
        if isinstance(monitor, str):
            check_monitor(f"{where}.monitor", monitor)


def check_monitor(path: str, metric: str) -> None:
    """A metric layerwise logs; rules' own metrics are under train/ and block{i}/, so those pass."""
    import re

    if metric in MONITORED or metric.startswith("train/") or re.fullmatch(r"block\d+/\w+", metric):
        return
    close = difflib.get_close_matches(metric, MONITORED, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ConfigError(f"{path}={metric!r} is not a metric layerwise logs; {hint}choose one of "
                      f"{', '.join(MONITORED)} (or train/<rule metric>, block<i>/<metric>)")


# --------------------------------------------------------------------------------------------- diagnostics

@dataclass
class AlignmentSchema:
    PATH: ClassVar[str] = "diagnostics.alignment"
    every_n_steps: int = 50

    def __post_init__(self) -> None:
        if self.every_n_steps < 1:  # the wording of AlignmentDiagnostic's own check
            raise ConfigError(f"diagnostics.alignment.every_n_steps={self.every_n_steps} must be >= 1, "
                              f"e.g. diagnostics.alignment.every_n_steps=50")


@dataclass
class ProbeSchema:
    PATH: ClassVar[str] = "diagnostics.probe"
    max_train_samples: Optional[int] = 10000
    max_test_samples: Optional[int] = None
    pool_size: int = 4
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 256
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        in_range(self, "max_train_samples", 1, example=10000)
        in_range(self, "max_test_samples", 1, example=1000)
        in_range(self, "pool_size", 1, example=4)
        in_range(self, "epochs", 1, example=30)
        in_range(self, "lr", 0, low_open=True, example=0.001)
        in_range(self, "batch_size", 1, example=256)
        in_range(self, "weight_decay", 0, example=0.0)


@dataclass
class LocalitySchema:
    PATH: ClassVar[str] = "diagnostics.locality"
    check_later_blocks: bool = True


@dataclass
class DiagnosticsSchema:
    alignment: Optional[AlignmentSchema] = None
    probe: Optional[ProbeSchema] = None
    locality: Optional[LocalitySchema] = None


@dataclass
class PathsSchema:
    output_root: str = "experiments"

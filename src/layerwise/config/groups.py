"""Schemas of the config groups other than method: data, model, optimizer, trainer, logger, diagnostics, paths.

Field types are checked by OmegaConf when the config is merged into them (wrong type, unknown key); ranges,
choices and cross-field rules by each `__post_init__`, which OmegaConf.to_object calls.
A group whose options differ in their keys (data=synthetic has n_train, model=mlp has widths) has one subclass
per kind, picked by `data.name` / `model.arch` / `optimizer.name`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, List, Optional

from omegaconf import MISSING

from layerwise.errors import ConfigError
from layerwise.options import in_range, is_number, items_in_range, key, one_of

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

# ------------------------------------------------------------------------------------------------- trainer


#: Lightning's trainer.precision values (lightning.fabric.connector's _PRECISION_INPUT_*), written out so that the
#: config check imports no Lightning; tests/test_layout.py fails when the installed Lightning's differ.
LIGHTNING_PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
                        "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16", 64, 32, 16)


def _lightning_precisions() -> list:
    return list(LIGHTNING_PRECISIONS)


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
        one_of(self, "precision", _lightning_precisions())
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
        from layerwise.parallel import START_METHODS

        one_of(self, "strategy", ["auto", *START_METHODS])
        from layerwise.core.compile_modes import compile_mode

        compile_mode(self.compile)  # its own one-line ConfigError
        if not self.compile_backend:
            raise ConfigError("trainer.compile_backend is empty; use e.g. trainer.compile_backend=inductor")


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

    def __post_init__(self) -> None:
        one_of(self, "mode", ("auto", "online", "offline", "disabled"))
        in_range(self, "init_timeout", 0, low_open=True, example=30)


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

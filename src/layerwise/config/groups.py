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
from layerwise.options import in_range, is_number, items_in_range, key, number_or, one_of
from layerwise.config.values import check_seed

# ---------------------------------------------------------------------------------------------------- data


@dataclass
class AugmentSchema:
    PATH: ClassVar[str] = "data.augment"
    random_crop: bool = True
    crop_padding: int = 4
    horizontal_flip: bool = True
    random_erasing: bool = False
    erasing_p: float = 0.5
    random_resized_crop: bool = False
    resized_crop_min_scale: float = 0.35

    def __post_init__(self) -> None:
        in_range(self, "crop_padding", 0, example=4)
        in_range(self, "erasing_p", 0, 1, example=0.5)
        in_range(self, "resized_crop_min_scale", 0, 1, low_open=True, example=0.35)


NORMALIZATIONS = ("minus_one_one", "gaussian", "none")
DATA_LOADERS = ("standard", "device")


@dataclass
class DataSchema:
    PATH: ClassVar[str] = "data"
    name: str = MISSING
    root: str = "./data"
    download: bool = True
    batch_size: int = 128
    num_workers: Optional[int] = None
    subset_train: Optional[int] = None
    subset_test: Optional[int] = None
    image_size: Optional[int] = None
    channels: int = 3
    seed: int = 0
    val_fraction: float = 0.0
    normalize: str = "minus_one_one"
    loader: str = "standard"
    augment: AugmentSchema = field(default_factory=AugmentSchema)

    def __post_init__(self) -> None:
        from layerwise.data import LOADERS

        one_of(self, "name", sorted(LOADERS))
        in_range(self, "batch_size", 1, example=128)
        in_range(self, "num_workers", 0, example=4)
        in_range(self, "subset_train", 1, example=1000)
        in_range(self, "subset_test", 1, example=1000)
        in_range(self, "image_size", 1, example=32)
        one_of(self, "channels", (1, 3))
        check_seed(self, "seed")
        in_range(self, "val_fraction", 0, 1, high_open=True, example=0.1,
                 what="the fraction of the training set held out for validation; 0 = off")
        one_of(self, "normalize", NORMALIZATIONS)
        one_of(self, "loader", DATA_LOADERS)


@dataclass
class SyntheticDataSchema(DataSchema):
    num_classes: int = 10
    n_train: int = 1024
    n_test: int = 256
    noise: float = 0.1
    max_shift: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        in_range(self, "num_classes", 2, example=10)
        in_range(self, "n_train", 1, example=1024)
        in_range(self, "n_test", 1, example=256)
        in_range(self, "noise", 0, example=0.1)
        in_range(self, "max_shift", 0, example=2)


@dataclass
class NpzDataSchema(DataSchema):
    path: str = MISSING


@dataclass
class FolderDataSchema(DataSchema):
    folder: str = MISSING  # the dataset's sub-folder of data.root (imagenet, imagenette, imagenet32)


DATA_SCHEMAS: dict[str, type[DataSchema]] = {"synthetic": SyntheticDataSchema, "npz": NpzDataSchema,
                                             **dict.fromkeys(("imagenet", "imagenette", "imagenet32"),
                                                             FolderDataSchema)}

# --------------------------------------------------------------------------------------------------- model

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")


@dataclass
class ModelSchema:
    PATH: ClassVar[str] = "model"
    name: str = MISSING
    arch: str = MISSING
    dropout: float = 0.0
    padding_mode: str = "zeros"
    batch_norm: bool = True
    activation: str = "relu"
    kernel_size: int = 3
    width_mult: float = 1.0
    head_hidden: List[int] = field(default_factory=list)
    # null = one block per layer | K groups | a list of group sizes
    blocks: Any = None

    def __post_init__(self) -> None:
        from layerwise.models import ACTIVATIONS, VGG_PLANS
        from layerwise.models.resnets import RESNET_ARCHES

        one_of(self, "arch", ["mlp", "basic_cnn", "lenet", *VGG_PLANS, *RESNET_ARCHES])
        in_range(self, "dropout", 0, 1, high_open=True, example=0.2)
        one_of(self, "padding_mode", PADDING_MODES)
        one_of(self, "activation", ACTIVATIONS)
        in_range(self, "kernel_size", 1, example=3)
        in_range(self, "width_mult", 0, low_open=True, example=0.5)
        items_in_range(self, "head_hidden", 1, example="[256]")
        blocks = self.blocks
        if blocks is None or (isinstance(blocks, int) and not isinstance(blocks, bool) and blocks >= 1):
            return
        if isinstance(blocks, (list, tuple)) and blocks and all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in blocks):
            return
        raise ConfigError(f"model.blocks={blocks!r} must be null (one block per layer), a number of blocks >= 1 "
                          f"or a list of group sizes >= 1, e.g. model.blocks=[2,2,4]")


@dataclass
class MlpModelSchema(ModelSchema):
    widths: List[int] = field(default_factory=lambda: [256, 256, 256])

    def __post_init__(self) -> None:
        super().__post_init__()
        items_in_range(self, "widths", 1, min_length=1, example="[256,256]")


@dataclass
class ConvModelSchema(ModelSchema):
    channels: List[int] = field(default_factory=lambda: [128, 128, 128])

    def __post_init__(self) -> None:
        super().__post_init__()
        items_in_range(self, "channels", 1, min_length=1, example="[32,32,32]")


@dataclass
class LenetModelSchema(ConvModelSchema):
    first_padding: Any = "auto"   # auto | an int

    def __post_init__(self) -> None:
        super().__post_init__()
        items_in_range(self, "channels", 1, length=2, example="[6,16]")
        number_or(self, "first_padding", ["auto"], low=0, example=2)


@dataclass
class ResNetModelSchema(ModelSchema):
    split: str = "even"      # even | flops | memory | infopro: how model.blocks=K groups the residual blocks
    shortcut: str = "A"      # CIFAR ResNets: A = zero-padded identity (He et al.'s CIFAR choice) | B = 1x1 projection
    stem: str = "cifar"      # torchvision ResNets: cifar = 3x3/1 conv, no max-pool | imagenet = 7x7/2 + max-pool

    def __post_init__(self) -> None:
        from layerwise.models.resnets import SHORTCUTS, SPLITS, STEMS, check_split

        super().__post_init__()
        one_of(self, "split", SPLITS)
        check_split(self.split, self.blocks)
        one_of(self, "shortcut", SHORTCUTS)
        one_of(self, "stem", STEMS)


def _resnet_arches() -> tuple[str, ...]:
    from layerwise.models.resnets import RESNET_ARCHES
    return RESNET_ARCHES


MODEL_SCHEMAS: dict[str, type[ModelSchema]] = {"mlp": MlpModelSchema, "basic_cnn": ConvModelSchema,
                                               "lenet": LenetModelSchema,
                                               **{a: ResNetModelSchema for a in _resnet_arches()}}

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


def _lightning_precisions() -> list:
    from typing import get_args

    from lightning.fabric.connector import _PRECISION_INPUT_INT, _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    return [*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS), *get_args(_PRECISION_INPUT_INT)]


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
        from layerwise.parallel.distributed import START_METHODS

        one_of(self, "strategy", ["auto", *START_METHODS])
        from layerwise.core.acceleration import compile_mode

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

"""The options of every dataset (`data.*`), torch-free: the CLI checks a config before torch is imported.

`DATASETS` names what `data.name` may be (datasets.py and extra.py hold a loader for each: `LOADERS`);
`DATA_OPTIONS` maps a dataset to its options dataclass where it has keys of its own; `data_options(cfg)` picks
the one a config uses (a user's loader named by `data._target_` declares its own as `Options`, read by importing
its module).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from omegaconf import MISSING

from layerwise.errors import ConfigError
from layerwise.options import check_seed, import_object, in_range, one_of

# torchvision datasets: class name, per-channel stats, native size, channels, classes, folder for errors.
TORCHVISION_SETS = {
    "cifar10": ("CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32, 3, 10, "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32, 3, 100, "cifar-100-python"),
    "mnist": ("MNIST", (0.1307,), (0.3081,), 28, 1, 10, "MNIST/raw"),
    "fashion_mnist": ("FashionMNIST", (0.2860,), (0.3530,), 28, 1, 10, "FashionMNIST/raw"),
    # KMNIST (Clanuwat et al. 2018): MNIST's idx format; mean/std of its 60,000 training images as commonly used.
    "kmnist": ("KMNIST", (0.1918,), (0.3483,), 28, 1, 10, "KMNIST/raw"),
}
#: Every data.name with a loader: datasets.py's, then extra.py's (svhn .. imagenet32).
DATASETS = ("digits", "synthetic", "npz", "image_folder", *TORCHVISION_SETS,
            "svhn", "stl10", "imagenet", "imagenette", "imagenet32")


@dataclass
class AugmentOptions:
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
class DataOptions:
    PATH: ClassVar[str] = "data"
    name: str = MISSING
    _target_: Optional[str] = None   # a loader of the user's (cfg -> train set, test set, DataInfo), by import path
    root: str = "${oc.env:DATA_DIR,./data}"
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
    augment: AugmentOptions = field(default_factory=AugmentOptions)

    def __post_init__(self) -> None:
        if self._target_ is None:
            one_of(self, "name", sorted(DATASETS))
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
class SyntheticOptions(DataOptions):
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
class NpzOptions(DataOptions):
    path: str = MISSING


@dataclass
class FolderOptions(DataOptions):
    folder: str = MISSING  # the dataset's sub-folder of data.root (imagenet, imagenette, imagenet32)


#: data.name -> the options of that dataset where it has keys of its own (the others: DataOptions).
DATA_OPTIONS: dict[str, type[DataOptions]] = {"synthetic": SyntheticOptions, "npz": NpzOptions,
                                              **dict.fromkeys(("imagenet", "imagenette", "imagenet32"), FolderOptions)}


def data_options(cfg) -> type[DataOptions]:
    """The options dataclass of a data config: its loader's `Options` for a `_target_`, else its dataset's."""
    if cfg.get("_target_"):
        return getattr(import_object(cfg["_target_"], "data._target_"), "Options", DataOptions)
    return DATA_OPTIONS.get(cfg.get("name"), DataOptions)


def check_val_fraction(cfg) -> float:
    """`data.val_fraction` as a float in [0, 1) (null or absent: 0 = no validation split)."""
    value = cfg.get("val_fraction") if hasattr(cfg, "get") else None
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"data.val_fraction={value!r} is out of range; it must be a number in [0, 1), e.g. "
                          f"data.val_fraction=0.1 holds out 10% of the training set for validation (0 = off)")
    return float(value)

"""Datasets and the LightningDataModule.

Every dataset loader returns a train set, a test set and its `DataInfo`; transforms are built from the
`data.augment` switches with torchvision.transforms.v2, on PIL images and on tensors alike.
Offline sets: `digits` (scikit-learn's bundled 8x8 digits) and `synthetic` (procedural, seeded).

`data.val_fraction > 0` holds out part of the training set as a validation set (see `ImageDataModule`).
`data.loader=device` keeps the whole dataset on the training device and augments whole batches there
(device_loader.py); both loader kinds draw the training order and augmentations from (run seed, epoch, sample)
alone, and `resume_at` restarts an epoch after its first batches (sampling.py).
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from loguru import logger
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from layerwise.data_checks import (NPZ_KEYS, NPZ_SAVE, check_class_sets, check_images_decode, check_npz_splits,
                                   check_split_samples, class_folders, expect_file, expect_folder,
                                   image_channel_stats, npz_images, npz_labels)
from layerwise.device_loader import LOADER_KINDS, DeviceImages, DeviceLoader, check_device_loader
from layerwise.errors import ConfigError, DataError
from layerwise.models import InputSpec
from layerwise.sampling import WORKER_SEEDS, EpochSampler, SeededSamples, mix_seed


@dataclass
class DataInfo:
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    from_pil: bool  # samples arrive as PIL images (torchvision sets) rather than float tensors
    stats_from: str = ""  # where mean/std come from, for the log line of data.normalize=gaussian

    @property
    def spec(self) -> InputSpec:
        return InputSpec(self.channels, self.size, self.num_classes)


class TensorImages(Dataset):
    """Float images in [0, 1] (N, C, H, W) with integer labels, transformed per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None):
        self.images, self.labels, self.transform = images, labels.long(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx):
        x = self.images[idx]
        return (self.transform(x) if self.transform else x), self.labels[idx]


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return (tuple(images.mean(dim=(0, 2, 3)).tolist()),
            tuple(images.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()))


def _tensor_sets(x_train, y_train, x_test, y_test, num_classes=None):
    mean, std = _channel_stats(x_train)
    info = DataInfo(channels=x_train.shape[1], size=x_train.shape[-1],
                    num_classes=int(num_classes or int(max(y_train.max(), y_test.max())) + 1),
                    mean=mean, std=std, from_pil=False, stats_from=f"all {len(x_train)} training images")
    return TensorImages(x_train, y_train), TensorImages(x_test, y_test), info


def _resize(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    if tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    if images.shape[1] != channels:
        images = images.expand(-1, channels, -1, -1).contiguous()
    return images.clamp(0, 1)


def load_digits_sets(cfg):
    """scikit-learn's bundled 8x8 digits (1797 real images), resized, with a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    x = _resize(x, int(cfg.image_size), int(cfg.channels))
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=360, random_state=0, stratify=y)
    y = torch.tensor(y)
    return _tensor_sets(x[idx_train], y[idx_train], x[idx_test], y[idx_test], num_classes=10)


def synthetic_images(n: int, cfg, prototypes: torch.Tensor, gen: torch.Generator):
    """Class prototypes, randomly shifted and contrast-scaled, plus gaussian noise."""
    num_classes, channels, size = prototypes.shape[0], prototypes.shape[1], prototypes.shape[-1]
    labels = torch.randint(num_classes, (n,), generator=gen)
    images = prototypes[labels].clone()
    max_shift = int(cfg.max_shift)
    if max_shift > 0:
        shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen)
        for k in range(n):
            images[k] = torch.roll(images[k], shifts=(int(shifts[k, 0]), int(shifts[k, 1])), dims=(1, 2))
    contrast = 0.75 + 0.5 * torch.rand(n, 1, 1, 1, generator=gen)
    images = 0.5 + contrast * (images - 0.5) + float(cfg.noise) * torch.randn(images.shape, generator=gen)
    return images.clamp(0, 1), labels


def load_synthetic_sets(cfg):
    """A procedural, learnable classification set: deterministic given `data.seed`."""
    gen = torch.Generator().manual_seed(int(cfg.seed))
    size, channels, num_classes = int(cfg.image_size), int(cfg.channels), int(cfg.num_classes)
    # Smooth random patterns: low-resolution noise upsampled, so shifted copies stay recognisable.
    coarse = torch.rand(num_classes, channels, 4, 4, generator=gen)
    prototypes = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    x_train, y_train = synthetic_images(int(cfg.n_train), cfg, prototypes, gen)
    x_test, y_test = synthetic_images(int(cfg.n_test), cfg, prototypes, gen)
    return _tensor_sets(x_train, y_train, x_test, y_test, num_classes=num_classes)


def unreadable_part(path: Path) -> Path | None:
    """The first existing one of `path` and its parents, if this user may not read it (else None).

    Without this a folder without read permission looks like a missing dataset ("not found, download it").
    """
    for part in (path, *path.parents):
        try:
            if not part.exists():
                continue
            is_dir = part.is_dir()
        except PermissionError:  # a parent is not searchable: that parent is reported on the next step
            continue
        return None if os.access(part, os.R_OK | (os.X_OK if is_dir else 0)) else part
    return None


def check_readable(path: Path) -> None:
    part = unreadable_part(path)
    if part is not None:
        raise DataError(f"cannot read {part} (permission denied); fix its permissions (chmod -R u+rwX {part}) "
                        f"or point data.root / data.path at a readable copy")


def load_npz_sets(cfg):
    """User arrays: x_train, y_train, x_test, y_test; images NHWC/NCHW/NHW, uint8 or float in [0, 1].

    Labels are integers shared by both splits, so the classes line up by construction; a test label that
    training never uses is refused (data_checks.check_npz_splits), as is every malformed array."""
    path = Path(str(cfg.path)).expanduser()
    check_readable(path)
    expect_file(path, "data.path", f"an .npz file with {', '.join(NPZ_KEYS)} arrays ({NPZ_SAVE})")
    try:
        with np.load(path) as arrays:
            missing = set(NPZ_KEYS) - set(arrays.files)
            if missing:
                raise DataError(f"{path} lacks arrays {sorted(missing)}; save it with {NPZ_SAVE}")
            parts = {k: arrays[k] for k in NPZ_KEYS}
    except DataError:
        raise
    except ValueError as err:  # object arrays (pickled Python objects): not images or labels
        raise DataError(f"{path} holds an object array ({str(err).splitlines()[0]}); save numeric arrays: "
                        f"uint8 or float images and integer labels") from err
    except Exception as err:  # zipfile/pickle errors for truncated or foreign files
        raise DataError(f"{path} is not a readable .npz file ({err}); re-create it with np.savez") from err

    image_size = int(cfg.image_size) if cfg.image_size else None
    x_train = npz_images(path, "train", parts["x_train"], image_size)
    x_test = npz_images(path, "test", parts["x_test"], image_size)
    y_train = npz_labels(path, "train", parts["y_train"], len(x_train))
    y_test = npz_labels(path, "test", parts["y_test"], len(x_test))
    check_npz_splits(path, x_train, y_train, x_test, y_test, image_size)
    size = image_size or x_train.shape[-1]
    x_train, x_test = _resize(x_train, size, x_train.shape[1]), _resize(x_test, size, x_test.shape[1])
    return _tensor_sets(x_train, y_train, x_test, y_test, num_classes=int(y_train.max()) + 1)


# torchvision datasets: class name, per-channel stats, native size, channels, classes, folder for errors.
TORCHVISION_SETS = {
    "cifar10": ("CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32, 3, 10, "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32, 3, 100, "cifar-100-python"),
    "mnist": ("MNIST", (0.1307,), (0.3081,), 28, 1, 10, "MNIST/raw"),
    "fashion_mnist": ("FashionMNIST", (0.2860,), (0.3530,), 28, 1, 10, "FashionMNIST/raw"),
    # KMNIST (Clanuwat et al. 2018): MNIST's idx format; mean/std of its 60,000 training images as commonly used.
    "kmnist": ("KMNIST", (0.1918,), (0.3483,), 28, 1, 10, "KMNIST/raw"),
}


def load_torchvision_sets(cfg):
    import torchvision.datasets as tvd

    cls_name, mean, std, size, channels, classes, folder = TORCHVISION_SETS[cfg.name]
    cls = getattr(tvd, cls_name)
    root = Path(str(cfg.root)).expanduser()
    check_readable(root / folder)
    expect_folder(root, "data.root", f"the folder that holds (or receives) {folder}")
    corrupt = (f"{cls_name} files under {root / folder} are truncated or corrupt (torchvision's checksum or "
               f"parser rejects them); delete that folder and download again, or copy intact files there")

    def open_split(train: bool):
        try:
            return cls(str(root), train=train, download=False)
        except RuntimeError:
            pass  # not there, incomplete or failing the checksum: try to download below
        except Exception as err:
            raise DataError(f"{cls_name} files under {root / folder} are unreadable ({type(err).__name__}: "
                            f"{err}); delete that folder and download again") from err
        present = (root / folder).is_dir() and any((root / folder).iterdir())
        if not cfg.download:
            if present:
                raise DataError(corrupt)
            raise DataError(f"{cls_name} is not in {root / folder} and data.download=false; put the files there "
                            f"or set data.root=... (env DATA_DIR)")
        try:
            return cls(str(root), train=train, download=True)
        except Exception as err:
            if present:
                raise DataError(f"{corrupt} (re-downloading failed: {type(err).__name__})") from err
            raise DataError(
                f"{cls_name} is not in {root / folder} and could not be downloaded ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else 'no network?'}). Put the torchvision files there "
                f"(or set data.root=... / DATA_DIR), or use data=digits or data=synthetic offline") from err

    train, test = open_split(True), open_split(False)
    info = DataInfo(channels, size, classes, mean, std, from_pil=True,
                    stats_from=f"{cls_name}'s training-set statistics (all {len(train)} images)")
    return train, test, info


# data.normalize=gaussian on an image folder: mean/std of this many training images (a seeded choice). The
# standard error of a channel mean from ~1000 images x H x W pixels is far below the 3 digits that are logged.
FOLDER_STATS_IMAGES = 1000


class TrainClassesFolder(ImageFolder):
    """torchvision's ImageFolder numbered by a given class list (the *training* split's), so index k is the same
    class in every split: ImageFolder alone numbers each split's own sub-folders, and a test/ lacking one class
    would shift every later label. Module-level so that DataLoader workers can pickle it (spawn)."""

    def __init__(self, root: str, classes: list[str], **kwargs):
        self.given_classes = list(classes)
        super().__init__(root, **kwargs)

    def find_classes(self, directory):
        return list(self.given_classes), {name: k for k, name in enumerate(self.given_classes)}


def _image_folder(split_dir: Path, classes: list[str], every_class: bool) -> TrainClassesFolder:
    try:
        folder = TrainClassesFolder(str(split_dir), classes, allow_empty=True)
    except (OSError, RuntimeError) as err:
        raise DataError(f"cannot read images under {split_dir}: {err}; check the folder's contents and "
                        f"permissions") from err
    check_split_samples(split_dir, classes, folder.targets, every_class, IMG_EXTENSIONS)
    return folder


def load_image_folder_sets(cfg):
    """Class-subfolder images under data.root/train and data.root/test (or val), numbered by train's classes."""
    root = Path(str(cfg.root)).expanduser()
    check_readable(root)
    layout = f"{root}/train/<class>/* and {root}/test/<class>/* (or val/)"
    expect_folder(root, "data.root", f"a folder with {layout}")
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DataError(f"data=image_folder needs {layout}; set data.root to such a folder")
    if test_dir.name == "test" and (root / "val").is_dir():
        logger.info(f"data image_folder: {root}/val is not used ({root}/test is the test split; "
                    f"data.val_fraction holds out a validation split of train)")
    classes = class_folders(root / "train")
    absent = check_class_sets(root / "train", classes, test_dir, class_folders(test_dir))
    train = _image_folder(root / "train", classes, every_class=True)
    test = _image_folder(test_dir, classes, every_class=False)
    if absent:
        logger.warning(f"data image_folder: {test_dir} has no images of class(es) {', '.join(absent)}; the test "
                       f"accuracy covers the other classes (labels still follow {root}/train's classes)")
    check_images_decode([p for p, _ in train.samples] + [p for p, _ in test.samples])
    if not cfg.image_size:
        raise ConfigError(f"data.image_size={cfg.image_size} cannot size the images of {root}: image folders hold "
                          f"images of any size; set data.image_size=S to resize them to SxS (e.g. 32)")
    channels = int(cfg.channels)
    info = DataInfo(channels, int(cfg.image_size), len(classes), (0.5,) * channels, (0.5,) * channels, True)
    if cfg.normalize == "gaussian":
        decode = v2.Compose(_decode_steps(cfg, info, int(cfg.image_size)))
        mean, std, n = image_channel_stats(train, decode, FOLDER_STATS_IMAGES, int(cfg.seed))
        chosen = f"all {n}" if n == len(train) else f"{n} of {len(train)} (chosen by data.seed)"
        info.mean, info.std, info.stats_from = mean, std, f"{chosen} training images"
    return train, test, info


LOADERS: dict[str, Callable] = {
    "digits": load_digits_sets,
    "synthetic": load_synthetic_sets,
    "npz": load_npz_sets,
    "image_folder": load_image_folder_sets,
    **{name: load_torchvision_sets for name in TORCHVISION_SETS},
}  # + svhn, stl10, imagenet, imagenette, imagenet32 from extra_datasets.py (imported at the end of this module)
STREAMED_SETS: set[str] = set()  # files decoded one at a time: not for data.loader=device
CROP_PIPELINES: dict[str, Callable] = {}  # name -> (cfg, size, train) -> decode + crop steps (ImageNet recipe)


def _decode_steps(cfg, info: DataInfo, size: int) -> list:
    """PIL samples to float tensors in [0, 1] at `size` (nothing for in-memory float sets)."""
    steps: list = []
    if info.from_pil:
        if cfg.name == "image_folder":
            steps.append(v2.Grayscale(info.channels) if info.channels == 1 else v2.RGB())
        steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        if size != info.size or cfg.name == "image_folder":
            steps.append(v2.Resize((size, size), antialias=True))
    return steps


def build_transform(cfg, info: DataInfo, train: bool) -> v2.Compose | v2.Identity:
    """The thesis's augmentations as switches, then normalisation."""
    aug, size = cfg.augment, int(cfg.image_size or info.size)
    if cfg.name in CROP_PIPELINES:
        steps = CROP_PIPELINES[cfg.name](cfg, size, train)
    else:
        steps = _decode_steps(cfg, info, size)
    if train and cfg.name not in CROP_PIPELINES:
        if aug.random_resized_crop:
            steps.append(v2.RandomResizedCrop(size, scale=(float(aug.resized_crop_min_scale), 1.0), antialias=True))
        elif aug.random_crop:
            steps.append(v2.RandomCrop(size, padding=int(aug.crop_padding)))
        if aug.horizontal_flip:
            steps.append(v2.RandomHorizontalFlip())
    if cfg.normalize == "minus_one_one":
        steps.append(v2.Normalize([0.5] * info.channels, [0.5] * info.channels))
    elif cfg.normalize == "gaussian":
        steps.append(v2.Normalize(list(info.mean), list(info.std)))
    elif cfg.normalize != "none":
        raise ConfigError(f"data.normalize={cfg.normalize!r} is not known; choose minus_one_one, gaussian or none")
    if train and aug.random_erasing:
        steps.append(v2.RandomErasing(p=float(aug.erasing_p)))
    return v2.Compose(steps) if steps else v2.Identity()  # Compose refuses an empty list


def _subset(ds: Dataset, n, seed: int) -> Dataset:
    if not n or n >= len(ds):
        return ds
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    return Subset(ds, order[: int(n)].tolist())


def _with_transform(ds: Dataset, transform) -> Dataset:
    if isinstance(ds, TensorImages):
        return TensorImages(ds.images, ds.labels, transform)
    ds.transform = transform
    return ds


# ------------------------------------------------------------------------------------------ validation split
VAL_SEED_OFFSET = 2  # generator seed of the split = data.seed + 2 (subset_train uses data.seed, subset_test + 1)


def check_val_fraction(cfg) -> float:
    """`data.val_fraction` as a float in [0, 1) (null or absent: 0 = no validation split)."""
    value = cfg.get("val_fraction") if hasattr(cfg, "get") else None
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"data.val_fraction={value!r} is out of range; it must be a number in [0, 1), e.g. "
                          f"data.val_fraction=0.1 holds out 10% of the training set for validation (0 = off)")
    return float(value)


def _labels(ds: Dataset) -> np.ndarray | None:
    """Every sample's label without loading images, where the dataset keeps them (else None)."""
    if isinstance(ds, Subset):
        labels = _labels(ds.dataset)
        return None if labels is None else labels[np.asarray(ds.indices, dtype=np.int64)]
    if isinstance(ds, TensorImages):
        return ds.labels.numpy()
    targets = getattr(ds, "targets", None)
    if targets is None:
        return None
    labels = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets)
    return labels if labels.ndim == 1 and len(labels) == len(ds) else None


def split_indices(n: int, n_val: int, seed: int, labels: np.ndarray | None = None) -> tuple[list[int], list[int]]:
    """(train, val) positions in range(n), disjoint, covering it, sorted; deterministic given `seed`.

    With labels the split is stratified: within each class the samples are shuffled and spread evenly over
    [0, 1) (the k-th of m at (k + 0.5) / m), and the n_val samples with the lowest positions are held out,
    so each class gives about n_val / n of its samples (within one).
    """
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=gen).numpy()
    if labels is not None:
        shuffled = np.asarray(labels)[order]
        _, inverse, counts = np.unique(shuffled, return_inverse=True, return_counts=True)
        by_class = np.argsort(inverse, kind="stable")  # grouped by class, shuffled order within each
        rank = np.empty(n, dtype=np.int64)  # each sample's rank within its class
        rank[by_class] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
        position = (rank + 0.5) / counts[inverse]
        order = order[np.argsort(position, kind="stable")]  # ties keep the random order
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _validation_count(n: int, fraction: float, subset_train) -> int:
    n_val = math.floor(fraction * n + 0.5)
    if 1 <= n_val <= n - 1:
        return n_val
    source = f"{n} training samples" + (f" (after data.subset_train={subset_train})" if subset_train else "")
    if n < 2:
        raise ConfigError(f"data.val_fraction={fraction} cannot split {source}: it needs at least 2; use more "
                          f"training samples or data.val_fraction=0")
    if n_val < 1:
        fix = f"use data.val_fraction={1 / n:.2g} or more, or more training samples"
        raise ConfigError(f"data.val_fraction={fraction} of {source} holds out no sample for validation; {fix}")
    raise ConfigError(f"data.val_fraction={fraction} of {source} leaves no sample to train on; "
                      f"lower data.val_fraction (e.g. 0.1) or use more training samples")


class ImageDataModule(L.LightningDataModule):
    """Loads `data.name` once; `info` (channels, size, classes) is known after `setup()`.

    Validation split (`data.val_fraction` > 0): after `data.subset_train` has picked the training samples,
    round(val_fraction * n) of them are held out as `val_set`, stratified by label where the dataset keeps its
    labels (tensor sets, torchvision sets, image folders) and seeded by `data.seed` alone (not the run seed),
    so every seed and every trial of a search sees the same validation set. The validation samples get the
    test set's augmentation-free transform. `val_dataloader()` then returns [test, val] (dataloader 0 stays
    the test set, evaluated every epoch as before; dataloader 1 is the validation split); without a split it
    returns the test loader alone.

    Training order and augmentation depend only on (`seed`, epoch, sample): `seed` is the run seed (the
    caller passes it; default data.seed), see sampling.py. `device` is where `data.loader=device` keeps the
    samples (the training device); the standard loader ignores it.
    """

    def __init__(self, cfg, pin_memory: bool = False, device: str | torch.device = "cpu", seed: int | None = None):
        super().__init__()
        if cfg.name not in LOADERS:
            raise ConfigError(f"data={cfg.name!r} is not known; available: {', '.join(sorted(LOADERS))}")
        self.val_fraction = check_val_fraction(cfg)  # before any data is loaded
        self.loader_kind = str(cfg.get("loader") or "standard")
        if self.loader_kind not in LOADER_KINDS:
            raise ConfigError(f"data.loader={self.loader_kind!r} is not known; choose standard (DataLoader with "
                              f"per-sample transforms) or device (whole dataset on the training device)")
        if self.loader_kind == "device":
            if cfg.name in STREAMED_SETS:
                raise ConfigError(f"data.loader=device cannot hold data={cfg.name} (files are decoded one by one in "
                                  f"DataLoader workers); set data.loader=standard")
            check_device_loader(cfg)
        self.cfg, self.pin_memory, self.device = cfg, pin_memory, torch.device(device)
        self.seed = int(cfg.seed) if seed is None else int(seed)
        self.info: DataInfo | None = None
        self.train_set = self.test_set = self.val_set = None
        self._train_sampler: EpochSampler | None = None
        self._resume: tuple[int, int] | None = None  # (epoch, batches done) for the next train loader
        self._on_device: dict[str, DeviceImages] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, test, info = LOADERS[self.cfg.name](self.cfg)
        # The transforms compare data.image_size with the native size (info.size) to decide on a Resize, so
        # info.size becomes the model's input size only after they are built.
        eval_transform = build_transform(self.cfg, info, train=False)
        train_transform = build_transform(self.cfg, info, train=True)
        if self.cfg.image_size:
            info.size = int(self.cfg.image_size)
        self.info = info
        # A shallow copy shares the samples; it is taken before the training transform is set in place.
        val_base = _with_transform(copy.copy(train), eval_transform) if self.val_fraction > 0 else None
        train = _with_transform(train, train_transform)
        test = _with_transform(test, eval_transform)
        self.train_set = _subset(train, self.cfg.subset_train, int(self.cfg.seed))
        self.test_set = _subset(test, self.cfg.subset_test, int(self.cfg.seed) + 1)
        if val_base is not None:
            self.train_set, self.val_set = self._split_validation(train, val_base)
        val = f" / {len(self.val_set)} val (held out of train)" if self.val_set is not None else ""
        logger.info(f"data {self.cfg.name}: {len(self.train_set)} train{val} / {len(self.test_set)} test, "
                    f"{info.channels}x{info.size}x{info.size}, {info.num_classes} classes")
        if self.cfg.normalize == "gaussian":
            fmt = lambda values: "(" + ", ".join(f"{v:.4f}" for v in values) + ")"  # noqa: E731
            logger.info(f"data {self.cfg.name}: normalize=gaussian with per-channel mean {fmt(info.mean)}, "
                        f"std {fmt(info.std)} ({info.stats_from or 'the training set'})")

    def _split_validation(self, train: Dataset, val_base: Dataset) -> tuple[Dataset, Dataset]:
        """Split `self.train_set` (after subset_train) into (train', val) Subsets of the full training set."""
        chosen = self.train_set
        base_indices = list(chosen.indices) if isinstance(chosen, Subset) else list(range(len(chosen)))
        n = len(base_indices)
        n_val = _validation_count(n, self.val_fraction, self.cfg.subset_train)
        keep, held = split_indices(n, n_val, int(self.cfg.seed) + VAL_SEED_OFFSET, _labels(chosen))
        return (Subset(train, [base_indices[i] for i in keep]), Subset(val_base, [base_indices[i] for i in held]))

    def _workers(self) -> int:
        if self.cfg.num_workers is not None:
            return int(self.cfg.num_workers)
        # In-memory tensor sets are faster without worker processes.
        return 0 if not self.info.from_pil else min(8, os.cpu_count() or 1)

    def _loader(self, name: str, ds: Dataset, train: bool) -> DataLoader | DeviceLoader:
        rank, world_size = self._process_share()
        sampler = EpochSampler(len(ds), self.seed, int(self.cfg.batch_size), shuffle=train)
        sampler.shard(rank, world_size)
        if self.loader_kind == "device":
            if name not in self._on_device:  # converted once, reused by every later loader
                self._on_device[name] = DeviceImages(ds, self.device)
            return DeviceLoader(self._on_device[name], sampler, train=train)
        workers = self._workers()
        # Its own generator: creating an iterator draws a worker base seed, which would otherwise advance the
        # global RNG (and so change dropout and every later draw of the run) at each epoch and evaluation.
        generator = torch.Generator().manual_seed(mix_seed(self.seed, WORKER_SEEDS))
        # Evaluation under DDP: each process its share, like Lightning's own DistributedSampler injection.
        eval_sampler = DistributedSampler(ds, world_size, rank, shuffle=False) if world_size > 1 else None
        return DataLoader(SeededSamples(ds, self.seed) if train else ds, batch_size=int(self.cfg.batch_size),
                          sampler=sampler if train else eval_sampler, shuffle=False, num_workers=workers,
                          pin_memory=self.pin_memory, persistent_workers=workers > 0, drop_last=False,
                          generator=generator)

    def _process_share(self) -> tuple[int, int]:
        """(rank, world size) under DDP, else (0, 1); the Trainer leaves sharding to this module
        (use_distributed_sampler=False)."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader | DeviceLoader:
        trainer = self.trainer
        if self.loader_kind == "device" and trainer is not None and trainer.world_size > 1:
            raise ConfigError("data.loader=device keeps the data on one device and does not shard it; use "
                              "data.loader=standard with trainer.devices > 1")
        loader = self._loader("train", self.train_set, train=True)
        self._train_sampler = loader.sampler
        if self._resume is not None:
            self._train_sampler.skip_batches(*self._resume)
            self._resume = None
        return loader

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next pass over training epoch `epoch` starts after its first `batches_done` batches.

        Those batches are skipped by index (nothing is loaded or augmented); the rest are the same tensors an
        uninterrupted run gets, and later epochs are whole. Works before or after `train_dataloader()`. Call it
        for every resume, also with batches_done=0: Lightning creates the first iterator before it calls
        `set_epoch`, and this sets the epoch first. The loader's `len()` stays the full epoch, as Lightning's
        restored batch counter (starting at batches_done) expects.
        """
        if self._train_sampler is not None:
            self._train_sampler.skip_batches(epoch, batches_done)
        else:
            self._resume = (int(epoch), int(batches_done))

    def val_dataloader(self) -> DataLoader | DeviceLoader | list:
        """The test set (every epoch, as in the thesis), then the validation split when there is one."""
        test = self._loader("test", self.test_set, train=False)
        return test if self.val_set is None else [test, self._loader("val", self.val_set, train=False)]

    def example_batch(self) -> torch.Tensor:
        """Two (test-transformed) inputs, for building modules whose shapes depend on the network's."""
        return torch.stack([self.test_set[i][0] for i in range(min(2, len(self.test_set)))])


import layerwise.extra_datasets  # noqa: E402,F401  (registers svhn, stl10, imagenet, imagenette, imagenet32)

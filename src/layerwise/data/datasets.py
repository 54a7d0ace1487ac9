"""Dataset loaders: each returns a train set, a test set and its `DataInfo`.

Offline sets: `digits` (scikit-learn's bundled 8x8 digits) and `synthetic` (procedural, seeded); users' own data:
`npz` and `image_folder`; torchvision's sets (MNIST, Fashion-MNIST, KMNIST, CIFAR-10/100). extra.py registers more.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from loguru import logger
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from layerwise.data.checks import (
    NPZ_KEYS,
    NPZ_SAVE,
    check_class_sets,
    check_images_decode,
    check_npz_splits,
    check_split_samples,
    class_folders,
    expect_file,
    expect_folder,
    image_channel_stats,
    npz_images,
    npz_labels,
)
from layerwise.data.options import (  # noqa: F401  (re-exported; defined in data/options.py)
    DATA_LOADERS,
    DATA_OPTIONS,
    DATASETS,
    NORMALIZATIONS,
    TORCHVISION_SETS,
    AugmentOptions,
    DataOptions,
    NpzOptions,
    SyntheticOptions,
    data_options,
)
from layerwise.errors import ConfigError, DataError
from layerwise.models import InputSpec
from layerwise.options import import_object


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
    num_classes = prototypes.shape[0]
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




def loader_of(cfg) -> Callable:
    """The function that loads `data.name` (or the user's `data._target_`): cfg -> (train set, test set, DataInfo)."""
    return import_object(cfg._target_, "data._target_") if cfg.get("_target_") else LOADERS[cfg.name]

"""The field's other datasets: SVHN, STL-10, ImageNet (and Imagenette) as image folders, ImageNet-32.

Each loader reads the files in the format their publishers distribute (the layout torchvision downloads to,
where torchvision has the set) and returns (train, test, DataInfo) like the loaders in data.py; importing this
module (data/module.py does) registers them in datasets.LOADERS. KMNIST, in MNIST's format, is one of data.py's
TORCHVISION_SETS. Missing files give one line naming the files and where they go.

SVHN and STL-10 are read here rather than through torchvision's classes because those verify an MD5 of every
file before opening it (slow, and it rejects a re-packed copy); the arrays are checked for shape instead.
torchvision still does the downloading when `data.download=true`.

Normalisation statistics (`data.normalize=gaussian`): per-channel mean/std of each training split as commonly
published with these sets (not recomputed here; see NORMALIZATION below). ImageNet-32 computes its own from the
loaded training arrays, as no per-channel values are published with it.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from layerwise.data.checks import check_class_sets, class_folders, expect_folder
from layerwise.data.datasets import (
    CROP_PIPELINES,
    LOADERS,
    STREAMED_SETS,
    DataInfo,
    _image_folder,
    check_readable,
)
from layerwise.data.options import FolderOptions  # noqa: F401  (re-exported; defined in data/options.py)
from layerwise.errors import ConfigError, DataError

# Per-channel (mean, std) of pixels in [0, 1].
#  imagenet: torchvision's documented values for its ImageNet weights (ILSVRC-2012 train), also fast.ai's
#            imagenet_stats for Imagenette, a 10-class subset of it.
#  svhn:     the 73,257 `train_32x32.mat` images (values as used across the SVHN literature's code).
#  stl10:    the 5,000 labelled training images.
NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}


class UInt8Images(Dataset):
    """uint8 images (N, H, W, C) in memory, given out one by one as (C, H, W) image tensors.

    `data` / `targets` follow torchvision's CIFAR10, so data.loader=device and the stratified validation split
    read them the same way."""

    def __init__(self, data: np.ndarray, targets: np.ndarray, transform=None):
        self.data, self.targets, self.transform = data, [int(t) for t in targets], transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, idx):
        x = tv_tensors.Image(torch.from_numpy(self.data[idx]).permute(2, 0, 1))
        return (self.transform(x) if self.transform else x), self.targets[idx]


def _root(cfg) -> Path:
    root = Path(str(cfg.root)).expanduser()
    check_readable(root)
    expect_folder(root, "data.root", "the folder that holds the dataset's files")
    return root


def _fetch(cfg, name: str, needed: list[Path], where: str, torchvision_download) -> None:
    """Refuse missing files in one line, or let torchvision download them (data.download=true)."""
    missing = [p for p in needed if not p.is_file()]
    if not missing:
        return
    files = ", ".join(str(p) for p in missing)
    if cfg.download and torchvision_download is not None:
        try:
            torchvision_download()
        except Exception as err:
            raise DataError(f"{name} is not in {where} ({files} missing) and could not be downloaded "
                            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no network?'}); "
                            f"put the files there (or set data.root=... / DATA_DIR), or use data=digits "
                            f"offline") from err
        if all(p.is_file() for p in needed):
            return
    raise DataError(f"{name} is not in {where}: {files} missing; put the files there or set data.root=... "
                    f"(env DATA_DIR)" + ("" if torchvision_download is None or cfg.download
                                         else " (or data.download=true)"))


def _info(name: str, size: int, channels: int, classes: int, n_train: int, what: str) -> DataInfo:
    mean, std = NORMALIZATION[name]
    return DataInfo(channels, size, classes, mean, std, from_pil=True,
                    stats_from=f"{what}'s published training-set statistics ({n_train} images)")


# ----------------------------------------------------------------------------------------------------- SVHN
def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    except Exception as err:
        raise DataError(f"{path} is not a readable SVHN .mat file ({type(err).__name__}: {err}); delete it and "
                        f"download it again (http://ufldl.stanford.edu/housenumbers/)") from err
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise DataError(f"{path}: X has shape {x.shape} ({x.dtype}) for {len(y)} labels; SVHN's cropped digits "
                        f"are uint8 (32, 32, 3, N); delete the file and download it again")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{path}: labels span {y.min()}..{y.max()}; SVHN labels are 1..10 (10 = digit 0)")
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), y.astype(np.int64) % 10  # label 10 is the digit 0


def load_svhn_sets(cfg):
    """SVHN cropped digits (Netzer et al. 2011): <root>/train_32x32.mat and test_32x32.mat (torchvision's
    layout); labels 0..9. The 531,131 'extra' digits are not used."""
    import torchvision.datasets as tvd

    root = _root(cfg)
    files = [root / "train_32x32.mat", root / "test_32x32.mat"]
    download = lambda: [tvd.SVHN(str(root), split=s, download=True) for s in ("train", "test")]  # noqa: E731
    _fetch(cfg, "SVHN", files, str(root), download)
    (x_train, y_train), (x_test, y_test) = _read_svhn(files[0]), _read_svhn(files[1])
    info = _info("svhn", 32, 3, 10, 73257, "SVHN")
    return UInt8Images(x_train, y_train), UInt8Images(x_test, y_test), info


# --------------------------------------------------------------------------------------------------- STL-10
STL10_SIZE = 96


def _read_stl10(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    x_path, y_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    x = np.fromfile(x_path, dtype=np.uint8)
    y = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
    per_image = 3 * STL10_SIZE * STL10_SIZE
    if x.size != len(y) * per_image:
        raise DataError(f"{x_path} holds {x.size} bytes but {y_path} {len(y)} labels ({len(y) * per_image} bytes "
                        f"expected: 3x96x96 per image); the files are truncated or mismatched; download them again")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{y_path}: labels span {y.min()}..{y.max()}; STL-10 labels are 1..10")
    # Each image is stored channel by channel, column-major (MATLAB order): (C, W, H) -> (H, W, C).
    images = x.reshape(-1, 3, STL10_SIZE, STL10_SIZE).transpose(0, 3, 2, 1)
    return np.ascontiguousarray(images), y - 1


def load_stl10_sets(cfg):
    """STL-10 (Coates et al. 2011): the labelled 5,000 train / 8,000 test 96x96 images of <root>/stl10_binary/
    (train_X.bin, train_y.bin, test_X.bin, test_y.bin); the 100,000 unlabelled images are not used."""
    import torchvision.datasets as tvd

    root = _root(cfg)
    folder = root / "stl10_binary"
    files = [folder / f for f in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")]
    _fetch(cfg, "STL-10", files, str(folder), lambda: tvd.STL10(str(root), split="train", download=True))
    (x_train, y_train), (x_test, y_test) = _read_stl10(folder, "train"), _read_stl10(folder, "test")
    info = _info("stl10", STL10_SIZE, 3, 10, 5000, "STL-10")
    return UInt8Images(x_train, y_train), UInt8Images(x_test, y_test), info


# -------------------------------------------------------------------------------------- ImageNet, Imagenette
def dataset_folder(cfg) -> Path:
    """<data.root>/<data.folder>, or data.root itself when it already is the dataset's folder."""
    root = _root(cfg)
    own = root / str(cfg.folder)
    return root if not own.is_dir() and (root / "train").is_dir() else own


def load_imagenet_sets(cfg):
    """ImageNet-style class folders: <folder>/train/<class>/*.JPEG and <folder>/val/<class>/*.JPEG.

    Files are decoded one by one in DataLoader workers (never the whole set in memory). Unlike data=image_folder,
    images are not all test-decoded up front (1.28 million JPEGs); a broken file stops the run where it is read.
    """
    name = "ImageNet" if cfg.name == "imagenet" else cfg.name
    if not cfg.image_size:
        raise ConfigError(f"data.image_size={cfg.image_size} leaves the crop size of data={cfg.name} open; set "
                          f"data.image_size=S (the preset's is {224 if cfg.name == 'imagenet' else 128})")
    folder = dataset_folder(cfg)
    layout = f"{folder}/train/<class>/*.JPEG and {folder}/val/<class>/*.JPEG"
    if not (folder / "train").is_dir() or not (folder / "val").is_dir():
        sorted_val = " (val/ sorted into one folder per class, as for train/)" if cfg.name == "imagenet" else ""
        raise DataError(f"{name} is not in {folder}: it needs {layout}{sorted_val}; it is not downloaded "
                        f"automatically; put it there, or set data.root=... (the folder holding "
                        f"{cfg.folder}/, or that folder itself)")
    classes = class_folders(folder / "train")
    absent = check_class_sets(folder / "train", classes, folder / "val", class_folders(folder / "val"))
    if absent:
        logger.warning(f"data {cfg.name}: {folder}/val has no images of class(es) {', '.join(absent[:8])}; the "
                       f"test accuracy covers the other classes")
    train = _image_folder(folder / "train", classes, every_class=True)
    test = _image_folder(folder / "val", classes, every_class=False)
    mean, std = NORMALIZATION["imagenet"]
    info = DataInfo(3, int(cfg.image_size), len(classes), mean, std, from_pil=True,
                    stats_from="ImageNet's published training-set statistics (torchvision)")
    return train, test, info


def imagenet_transform_steps(cfg, size: int, train: bool) -> list:
    """The standard ImageNet recipe (He et al. 2016; torchvision's reference scripts), scaled to `size`:
    train: random-resized crop (scale from data.augment.resized_crop_min_scale, 0.08 in the preset) + flip;
    test: resize the short side to size * 256/224, centre crop `size`. Crops run on the decoded uint8 image,
    before conversion to float."""
    aug = cfg.augment
    steps: list = [v2.RGB(), v2.ToImage()]  # CMYK and grayscale JPEGs exist in ImageNet
    if train and aug.random_resized_crop:
        steps.append(v2.RandomResizedCrop(size, scale=(float(aug.resized_crop_min_scale), 1.0), antialias=True))
    elif train and aug.random_crop:
        steps += [v2.Resize(round(size * 256 / 224), antialias=True), v2.RandomCrop(size)]
    else:
        steps += [v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size)]
    if train and aug.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    return steps + [v2.ToDtype(torch.float32, scale=True)]


# ------------------------------------------------------------------------------------------------ ImageNet-32
IMAGENET32_FILES = [f"train_data_batch_{k}" for k in range(1, 11)] + ["val_data"]


def _imagenet32_file(folder: Path, name: str) -> Path:
    """The official archives unpack to Imagenet32_train/ and Imagenet32_val/; accept those or a flat folder."""
    for candidate in (folder / name, folder / "Imagenet32_train" / name, folder / "Imagenet32_val" / name):
        if candidate.is_file():
            return candidate
    return folder / name


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f)
        x, y = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
    except Exception as err:
        raise DataError(f"{path} is not a readable ImageNet-32 batch ({type(err).__name__}: {err}); it must be "
                        f"a pickled dict with 'data' (uint8, N x 3072) and 'labels'; download it again") from err
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape != (len(y), 3 * 32 * 32):
        raise DataError(f"{path}: 'data' has shape {x.shape} ({x.dtype}) for {len(y)} labels; ImageNet-32 "
                        f"batches hold uint8 (N, 3072) rows (1024 red, 1024 green, 1024 blue values)")
    if len(y) and (y.min() < 1 or y.max() > 1000):
        raise DataError(f"{path}: labels span {y.min()}..{y.max()}; ImageNet-32 labels are 1..1000")
    return x, y - 1


def _read_batches(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate batches into one (N, 32, 32, 3) array, filled batch by batch (no second full copy)."""
    out, labels, start = None, [], 0
    for path in paths:
        x, y = _read_batch(path)
        if out is None:  # the official batches hold ~128k images each (the last fewer)
            out = np.empty((len(x) * len(paths), 32, 32, 3), dtype=np.uint8)
        if start + len(x) > len(out):  # a later batch larger than the first
            out = np.concatenate([out, np.empty((start + len(x) - len(out), 32, 32, 3), dtype=np.uint8)])
        out[start:start + len(x)] = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels.append(y)
        start += len(x)
    return out[:start], np.concatenate(labels)


def load_imagenet32_sets(cfg):
    """Downsampled ImageNet 32x32 (Chrabaszcz, Loshchilov & Hutter 2017): <root>/<folder>/train_data_batch_1..10
    and val_data, pickled dicts of 'data' (uint8 N x 3072, channel-planar) and 'labels' (1..1000).

    The training set (1,281,167 images) is held in memory as uint8 (3.9 GB). No per-channel statistics are
    published, so data.normalize=gaussian uses the loaded training images' own."""
    folder = _root(cfg) / str(cfg.folder)
    paths = {name: _imagenet32_file(folder, name) for name in IMAGENET32_FILES}
    missing = [name for name, p in paths.items() if not p.is_file()]
    if missing:
        raise DataError(f"ImageNet-32 is not in {folder}: {', '.join(missing)} missing; put the unpacked "
                        f"Imagenet32_train and Imagenet32_val files (image-net.org, 'Downsampled ImageNet "
                        f"32x32') there, or set data.root=... (the folder holding {cfg.folder}/)")
    x_train, y_train = _read_batches([paths[f"train_data_batch_{k}"] for k in range(1, 11)])
    x_test, y_test = _read_batch(paths["val_data"])
    x_test = np.ascontiguousarray(x_test.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    info = DataInfo(3, 32, 1000, (0.5,) * 3, (0.5,) * 3, from_pil=True)
    if cfg.normalize == "gaussian":
        info.mean, info.std = uint8_channel_stats(x_train)
        info.stats_from = f"all {len(x_train)} training images"
    return UInt8Images(x_train, y_train), UInt8Images(x_test, y_test), info


def uint8_channel_stats(images: np.ndarray, chunk: int = 65536) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images in [0, 1], summed in chunks (float64 sums)."""
    total = np.zeros(images.shape[-1])
    total_sq = np.zeros(images.shape[-1])
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        total += part.sum(0)
        total_sq += (part * part).sum(0)
    count = images.size / images.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0)).clip(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


LOADERS.update({
    "svhn": load_svhn_sets,
    "stl10": load_stl10_sets,
    "imagenet": load_imagenet_sets,
    "imagenette": load_imagenet_sets,
    "imagenet32": load_imagenet32_sets,
})
STREAMED_SETS.update({"imagenet", "imagenette"})
CROP_PIPELINES.update({"imagenet": imagenet_transform_steps, "imagenette": imagenet_transform_steps})



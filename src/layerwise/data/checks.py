"""Checks of the users' own data (data=npz, data=image_folder) before anything trains.

Each problem is one `DataError` line naming the file, what is wrong and the fix: a wrong file kind, arrays of
the wrong dtype, rank or layout, empty or mismatched splits, test classes that training does not have, images
that cannot be decoded. Training on such data would otherwise stop mid-run in a traceback, or worse, finish
with wrong numbers (labels shifted between splits, pixels clamped to 1).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from loguru import logger

from layerwise.errors import DataError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_SAVE = "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
IMAGE_LAYOUTS = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3"


def _few(items: Sequence, n: int = 8) -> str:
    shown = ", ".join(str(i) for i in list(items)[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


# ------------------------------------------------------------------------------------------------- paths
def expect_file(path: Path, key: str, what: str) -> None:
    if path.is_dir():
        raise DataError(f"{key}={path} is a folder, not a file; point {key} at {what}")
    if not path.is_file():
        raise DataError(f"{key}={path} does not exist; point {key} at {what}")


def expect_folder(path: Path, key: str, what: str) -> None:
    if path.exists() and not path.is_dir():
        hint = " (for arrays in an .npz use data=npz data.path=...)" if path.suffix == ".npz" else ""
        raise DataError(f"{key}={path} is a file, not a folder; point {key} at {what}{hint}")


# ------------------------------------------------------------------------------------------------- npz
def npz_images(path: Path, split: str, a: np.ndarray, image_size: int | None) -> torch.Tensor:
    """x_<split> as float32 (N, C, H, W) in [0, 1], or a DataError saying what is wrong with it."""
    where = f"{path}: x_{split}"
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{where} has dtype {a.dtype}; images must be uint8 (0..255) or float in [0, 1] "
                        f"(x.astype(np.uint8) for 0..255 values); save them again with np.savez")
    if a.ndim not in (3, 4):
        raise DataError(f"{where} has shape {a.shape} (rank {a.ndim}); images must be {IMAGE_LAYOUTS} "
                        f"(flattened images: x.reshape(len(x), H, W)); save them again with np.savez")
    if len(a) == 0:
        raise DataError(f"{where} is empty (shape {a.shape}); the {split} split needs at least one image")
    if a.dtype != np.uint8:
        low, high = float(np.min(a)), float(np.max(a))
        if not (np.isfinite(low) and np.isfinite(high)):
            raise DataError(f"{where} holds NaN or infinite values; replace them and save the arrays again")
        if low < 0 or high > 1:
            raise DataError(f"{where} holds values in [{low:.4g}, {high:.4g}]; float images must lie in [0, 1] "
                            f"(x / 255 for 0..255 pixels; raw pixels, not standardised ones: data.normalize "
                            f"does that); save them again with np.savez")
    t = torch.from_numpy(np.ascontiguousarray(a))
    t = t.float() / 255.0 if a.dtype == np.uint8 else t.float()
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.shape[1] not in (1, 3):
        if t.shape[-1] not in (1, 3):
            raise DataError(f"{where} has shape {tuple(a.shape)}: no axis of 1 or 3 channels where one is expected; "
                            f"images must be {IMAGE_LAYOUTS} (RGBA: x[..., :3])")
        t = t.permute(0, 3, 1, 2)
    height, width = t.shape[-2:]
    if height != width and not image_size:
        raise DataError(f"{where} images are {height}x{width} (height x width), not square; set "
                        f"data.image_size=S to resize them to SxS, or check the layout ({IMAGE_LAYOUTS})")
    return t


def npz_labels(path: Path, split: str, y: np.ndarray, n_images: int) -> torch.Tensor:
    where = f"{path}: y_{split}"
    if y.ndim != 1:
        raise DataError(f"{where} has shape {y.shape}; it must hold one integer class label per image, shape "
                        f"({n_images},) (one-hot labels: y.argmax(1)); save the arrays again with np.savez")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where} has dtype {y.dtype}; class labels must be integers (y.astype(np.int64)); "
                        f"save the arrays again with np.savez")
    if len(y) != n_images:
        raise DataError(f"{where} has {len(y)} labels for {n_images} images of x_{split}; give one label per "
                        f"image and save the arrays again with np.savez")
    if len(y) and y.min() < 0:
        raise DataError(f"{where} has negative labels (min {y.min()}); class labels must be 0, 1, 2, ...; fix "
                        f"them and save the arrays again with np.savez")
    return torch.from_numpy(y.astype(np.int64))


def check_npz_splits(path: Path, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                     y_test: torch.Tensor, image_size: int | None) -> None:
    """The splits must fit one network: same channels, same size (unless resized), test classes seen in training."""
    if x_train.shape[1] != x_test.shape[1]:
        raise DataError(f"{path}: x_train has {x_train.shape[1]} channel(s) but x_test {x_test.shape[1]}; save "
                        f"both splits with the same channels")
    if x_train.shape[-2:] != x_test.shape[-2:] and not image_size:
        size = lambda x: "x".join(str(s) for s in x.shape[-2:])  # noqa: E731
        raise DataError(f"{path}: x_train images are {size(x_train)} but x_test {size(x_test)}; set "
                        f"data.image_size={x_train.shape[-1]} to resize both, or save them at one size")
    unseen = sorted(set(y_test.unique().tolist()) - set(y_train.unique().tolist()))
    if unseen:
        raise DataError(f"{path}: y_test has class label(s) {_few(unseen)} that y_train never uses, so the network "
                        f"could not learn them; drop those test samples or add training samples of those classes")
    used = set(y_train.unique().tolist())
    gaps = sorted(set(range(int(y_train.max()) + 1)) - used)
    if gaps:  # legal (labels are the class indices), but a head with never-trained outputs is worth a word
        logger.warning(f"{path}: y_train has no sample of class label(s) {_few(gaps)} below its largest label "
                       f"{int(y_train.max())}; the network gets {int(y_train.max()) + 1} outputs, {len(gaps)} never "
                       f"trained (renumber the labels 0..{len(used) - 1} if those classes do not exist)")


# ------------------------------------------------------------------------------------------- image folders
def class_folders(split_dir: Path) -> list[str]:
    """The class names of one split: its sub-folders, sorted (as torchvision's ImageFolder finds them)."""
    try:
        return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    except OSError as err:
        raise DataError(f"cannot list {split_dir} ({err.strerror or err}); check the folder and its "
                        f"permissions") from err


def check_class_sets(train_dir: Path, train_classes: list[str], test_dir: Path, test_classes: list[str]) -> list[str]:
    """Refuse test classes that training lacks; return the training classes the test split has no folder for."""
    if not train_classes:
        raise DataError(f"{train_dir} has no class folders; put each class's images in {train_dir}/<class>/")
    unseen = sorted(set(test_classes) - set(train_classes))
    if unseen:
        raise DataError(f"{test_dir} has class folder(s) {_few(unseen)} that {train_dir} lacks, so the network "
                        f"could not learn them; remove or rename them, or add training images of those classes "
                        f"(classes of {train_dir}: {_few(train_classes)})")
    return sorted(set(train_classes) - set(test_classes))


def check_split_samples(split_dir: Path, classes: list[str], targets: Sequence[int], every_class: bool,
                        extensions: Sequence[str]) -> None:
    """A split with no image at all, or (training: `every_class`) a class folder without images, is refused."""
    formats = ", ".join(extensions[:6]) + ", ..."
    if not targets:
        raise DataError(f"{split_dir} holds no image files ({formats}); put the images in {split_dir}/<class>/")
    if every_class:
        counts = np.bincount(np.asarray(targets), minlength=len(classes))
        empty = [classes[k] for k in np.flatnonzero(counts == 0)]
        if empty:
            raise DataError(f"{split_dir} class folder(s) {_few(empty)} hold no image files ({formats}); add images "
                            f"or remove the folder(s)")


def _decode_error(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft(img.mode, (1, 1))  # JPEG: decode at 1/8 scale, which still reads (and checks) every byte
            img.load()
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ... for broken files
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def check_images_decode(paths: Sequence[str]) -> None:
    """Decode every image once (threads: PIL releases the GIL while decoding); name the first broken one."""
    if not paths:
        return
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        errors = list(pool.map(_decode_error, paths, chunksize=64))
    broken = [(p, e) for p, e in zip(paths, errors) if e is not None]
    if broken:
        path, error = broken[0]
        more = f" ({len(broken) - 1} more broken file(s), e.g. {broken[1][0]})" if len(broken) > 1 else ""
        raise DataError(f"{path} is not a readable image ({error}); replace or delete it{more}")


def image_channel_stats(dataset, transform, n_max: int, seed: int) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel mean and std of up to `n_max` training images (seeded choice), after `transform`
    (decoding, channel conversion, resize: what the network sees before normalisation)."""
    n = len(dataset.samples)
    gen = torch.Generator().manual_seed(int(seed))
    chosen = torch.randperm(n, generator=gen)[: min(n, n_max)].tolist()
    total = total_sq = None
    count = 0
    for i in chosen:
        x = transform(dataset.loader(dataset.samples[i][0])).double()
        s, sq = x.sum(dim=(1, 2)), (x * x).sum(dim=(1, 2))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += x.shape[1] * x.shape[2]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist()), len(chosen)

"""`data.loader=device`: the whole dataset as one tensor on the training device, augmented a batch at a time.

The samples are converted once: torchvision's CIFAR/MNIST sets keep their uint8 pixels (N, C, H, W), the
in-memory float sets (digits, synthetic, npz) their float32 pixels, so a batch is exactly what the standard
path's per-sample v2 pipeline gives. The batch steps are torchvision's own v2 functionals applied to a batch
(to_dtype, resize, pad, horizontal_flip, normalize), with the crop offsets and flips drawn per sample from a
generator seeded by (seed, epoch, batch index) on the device: no PIL, no Python per sample, no global RNG.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from layerwise.data.sampling import AUGMENT, EpochSampler, mix_seed
from layerwise.errors import ConfigError

LOADER_KINDS = ("standard", "device")
FLOAT_COPY_LIMIT = 1 << 30


def check_device_loader(cfg) -> None:
    """Refuse what the batched path cannot do exactly, before any data is loaded. (Several training processes, which
    it cannot shard for, are refused by config.checks.check_device_loader_processes, which sees the trainer.)"""
    aug = cfg.augment
    fix = "set data.loader=standard"
    if cfg.name == "image_folder":
        raise ConfigError("data.loader=device cannot hold data=image_folder (files are decoded one by one); "
                          f"{fix}, or save the images as arrays and use data=npz")
    if aug.random_resized_crop:
        raise ConfigError(f"data.loader=device does not implement data.augment.random_resized_crop; {fix} or "
                          "data.augment.random_resized_crop=false (random_crop is supported)")
    if aug.random_erasing:
        raise ConfigError(f"data.loader=device does not implement data.augment.random_erasing; {fix} or "
                          "data.augment.random_erasing=false")


def _base_and_indices(ds: Dataset) -> tuple[Dataset, np.ndarray | None]:
    """The dataset under any Subsets, and the positions in it that `ds` selects (None: all)."""
    if isinstance(ds, Subset):
        base, inner = _base_and_indices(ds.dataset)
        idx = np.asarray(ds.indices, dtype=np.int64)
        return base, (idx if inner is None else inner[idx])
    return ds, None


def _array_kind(base: Dataset) -> str | None:
    """How `base` holds its samples as arrays: "tensor" (TensorImages: float pixels in [0, 1]), "cifar" (uint8
    (N, H, W, C) numpy), "mnist" (uint8 (N, H, W) tensor), or None (anything else: a user's own Dataset)."""
    if isinstance(getattr(base, "images", None), torch.Tensor) and hasattr(base, "labels"):
        return "tensor"
    data = getattr(base, "data", None)
    if not hasattr(base, "targets"):
        return None
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4:
        return "cifar"
    if isinstance(data, torch.Tensor) and data.dtype == torch.uint8 and data.ndim == 3:
        return "mnist"
    return None


def _as_tensors(base: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, H, W), labels) without running any transform."""
    kind = _array_kind(base)
    if kind == "tensor":
        return base.images, base.labels
    if kind is None:
        raise ConfigError(f"data.loader=device cannot convert {type(base).__name__} to one tensor; "
                          "set data.loader=standard")
    labels = torch.as_tensor(np.asarray(base.targets), dtype=torch.long)
    if kind == "cifar":
        return torch.from_numpy(base.data).permute(0, 3, 1, 2).contiguous(), labels
    return base.data.unsqueeze(1).contiguous(), labels


class DeviceImages:
    """The samples of `ds` (after subsets) as two tensors on `device`; `transform` is ds's v2 pipeline."""

    def __init__(self, ds: Dataset, device: torch.device, transform=None):
        self.dataset = ds  # what a DataLoader's `.dataset` would be
        base, indices = _base_and_indices(ds)
        images, labels = _as_tensors(base)
        if indices is not None:
            pick = torch.from_numpy(indices)
            images, labels = images[pick], labels[pick]
        self.images, self.labels = images.to(device), labels.long().to(device)
        self.transform = transform if transform is not None else getattr(base, "transform", None)
        if _deterministic(self.transform) and (self.images.is_floating_point() or self._float_copy_fits()):
            # Steps applied to each image on its own: done once here gives every batch's values bit for bit.
            self.images = BatchAugment(self.transform)(self.images, None)
            self.transform = v2.Identity()

    def _float_copy_fits(self) -> bool:
        """Whether uint8 images are converted once too: in host memory, when the float copy is at most
        FLOAT_COPY_LIMIT (CIFAR-10: 0.6 GB). Per batch, the conversion cost a CPU step of a small network as much
        as the indexing; on an accelerator it is a few asynchronous kernels, and memory is scarcer there."""
        if self.images.device.type != "cpu" or len(self.images) == 0:
            return False
        one = BatchAugment(self.transform)(self.images[:1], None)
        return one.numel() * one.element_size() * len(self.images) <= FLOAT_COPY_LIMIT

    def __len__(self) -> int:
        return len(self.labels)


#: The v2 steps that draw nothing at random: a batch through them equals the per-sample results stacked.
DETERMINISTIC_STEPS = (v2.ToImage, v2.ToDtype, v2.Resize, v2.Normalize, v2.Identity)


def _deterministic(transform) -> bool:
    steps = list(getattr(transform, "transforms", [transform])) if transform is not None else []
    return all(isinstance(step, DETERMINISTIC_STEPS) for step in steps)


def batches_exactly(ds: Dataset) -> bool:
    """Whether `ds` (after subsets) is held in memory as arrays and its transform is deterministic, so that whole
    batches sliced from one tensor are exactly what the per-sample DataLoader gives (nothing random to reseed)."""
    base, _ = _base_and_indices(ds)
    return _deterministic(getattr(base, "transform", None)) and _array_kind(base) is not None


class BatchAugment:
    """The steps of one v2 pipeline (built by data.build_transform), applied to whole batches."""

    def __init__(self, transform):
        steps = list(getattr(transform, "transforms", [transform]))
        self.scale = self.resize = self.crop = self.normalize = None
        self.flip = False
        for step in steps:
            if isinstance(step, v2.ToDtype):
                self.scale = step
            elif isinstance(step, v2.Resize):
                self.resize = list(step.size)
            elif isinstance(step, v2.RandomCrop):
                self.crop = step
            elif isinstance(step, v2.RandomHorizontalFlip):
                self.flip = True
            elif isinstance(step, v2.Normalize):
                self.normalize = (list(step.mean), list(step.std))
            elif not isinstance(step, (v2.ToImage, v2.Identity)):
                raise ConfigError(f"data.loader=device cannot batch {type(step).__name__}; set data.loader=standard")

    @property
    def random(self) -> bool:
        """Whether a batch draws anything (a crop offset, a flip): only then does it need its own generator."""
        return self.crop is not None or self.flip

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = TF.to_dtype(x, torch.float32, scale=True)
        if self.resize is not None:
            x = TF.resize(x, self.resize, antialias=True)
        if self.crop is not None and gen is not None:
            x = self.random_crop(x, gen)
        if self.flip and gen is not None:
            flip = torch.rand(len(x), generator=gen, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], TF.horizontal_flip(x), x)
        if self.normalize is not None:
            x = TF.normalize(x, *self.normalize)
        return x

    def random_crop(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """v2.RandomCrop per sample: pad like it (fill, mode), then offsets uniform over the same range."""
        crop = self.crop
        if crop.padding is not None:
            left, right, top, bottom = crop.padding  # RandomCrop's order; F.pad takes (left, top, right, bottom)
            fill = crop._fill.get(torch.Tensor, crop._fill.get("others", 0))  # its fill for plain tensors/images
            x = TF.pad(x, [left, top, right, bottom], fill=fill, padding_mode=crop.padding_mode)
        (h, w), (ph, pw) = crop.size, x.shape[-2:]
        if (ph, pw) == (h, w):
            return x
        top, left = self.offsets(len(x), ph - h, pw - w, gen, x.device)
        b, c = x.shape[:2]
        # Two gathers (rows, then columns) beat one 4-d advanced index on CPU (measured ~1.5-2x).
        rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, pw)
        cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
        return x.gather(2, rows).gather(3, cols)

    @staticmethod
    def offsets(n: int, max_top: int, max_left: int, gen: torch.Generator, device) -> tuple[torch.Tensor, ...]:
        top = torch.randint(0, max_top + 1, (n,), generator=gen, device=device)
        left = torch.randint(0, max_left + 1, (n,), generator=gen, device=device)
        return top, left


class DeviceLoader:
    """Batches (x, y) of a `DeviceImages` in the order of an `EpochSampler`; augmented when `train`.

    `sampler` is public so that Lightning's `_set_sampler_epoch` finds it and calls `set_epoch`; `len()` is the
    full number of batches of an epoch (see EpochSampler).
    """

    batch_sampler = None  # read by Lightning's _is_dataloader_shuffled next to `sampler`

    def __init__(self, data: DeviceImages, sampler: EpochSampler, train: bool):
        self.data, self.sampler, self.train = data, sampler, train
        self.batch_size = sampler.batch_size
        self.augment = BatchAugment(data.transform)

    @property
    def dataset(self) -> Dataset:
        """The samples, as `DataLoader.dataset` (Lightning and users read it: its length, its transform)."""
        return self.data.dataset

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, order, first = self.sampler.take_epoch()
        order = order.to(self.data.images.device)
        for b in range(first, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            gen = None
            if self.train and self.augment.random:
                gen = torch.Generator(device=self.data.images.device)
                gen.manual_seed(mix_seed(self.sampler.seed, AUGMENT, epoch, b))
            yield self.augment(self.data.images[idx], gen), self.data.labels[idx]

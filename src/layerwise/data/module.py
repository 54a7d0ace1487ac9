"""The LightningDataModule: transforms from the `data.augment` switches, subsets, the validation split, and
the loaders (standard or `data.loader=device`), each drawing its order from (run seed, epoch, sample)."""
from __future__ import annotations

import copy
import math
import os

import lightning as L
import numpy as np
import torch
from loguru import logger
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.transforms import v2

import layerwise.data.extra  # noqa: F401  (registers svhn, stl10, imagenet, imagenette, imagenet32 in LOADERS)
from layerwise.data.datasets import (
    CROP_PIPELINES,
    LOADERS,
    STREAMED_SETS,
    DataInfo,
    TensorImages,
    _decode_steps,
    loader_of,
)
from layerwise.data.device_loader import (
    LOADER_KINDS,
    DeviceImages,
    DeviceLoader,
    batches_exactly,
    check_device_loader,
)
from layerwise.data.options import check_val_fraction  # noqa: F401  (re-exported)
from layerwise.data.sampling import WORKER_SEEDS, EpochSampler, SeededSamples, mix_seed
from layerwise.errors import ConfigError


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
        if cfg.name not in LOADERS and not cfg.get("_target_"):
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
        train, test, info = loader_of(self.cfg)(self.cfg)
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
            return self._batched(name, ds, sampler, train, self.device)
        if self.cfg.num_workers is None and world_size == 1 and (name in self._on_device or batches_exactly(ds)):
            # Arrays in memory with a deterministic transform: slicing whole batches gives the per-sample
            # DataLoader's tensors without a Python call, a transform call or a worker process per sample.
            return self._batched(name, ds, sampler, train, torch.device("cpu"))
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

    def _batched(self, name: str, ds: Dataset, sampler: EpochSampler, train: bool, device: torch.device):
        if name not in self._on_device:  # converted once, reused by every later loader
            self._on_device[name] = DeviceImages(ds, device)
        return DeviceLoader(self._on_device[name], sampler, train=train)

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


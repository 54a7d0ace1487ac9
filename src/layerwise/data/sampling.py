"""Exact, resumable training order: everything random about an epoch is a function of (seed, epoch, sample).

`EpochSampler` draws each epoch's permutation from its own generator seeded by (seed, epoch), never from the
global RNG; Lightning calls its `set_epoch` before each epoch (FitLoop.on_advance_start, also forwarded through
DistributedSamplerWrapper under DDP). It yields (index, epoch) pairs, so that `SeededSamples` (the dataset
wrapper) can seed each sample's augmentation from (seed, epoch, index) inside whichever worker process loads it:
persistent workers keep their own copy of the dataset, so an epoch set on the main process's copy would not
reach them, but the pairs travel with the indices. `skip_batches(epoch, n)` makes the next iteration of that
epoch start after its first n batches (an index-level skip: nothing is loaded or augmented for them).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from integers (splitmix64 finaliser per part): nearby inputs give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = (h ^ (int(part) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 31
    return h >> 1  # torch.manual_seed takes any non-negative int below 2**64; keep it positive as int64


# Stream tags: the permutation, the augmentations and the DataLoader's worker base seeds (unused by the
# augmentations, which SeededSamples seeds per sample) draw from unrelated seeds.
ORDER, AUGMENT, WORKER_SEEDS = 1, 2, 3


class EpochSampler(Sampler):
    """Indices 0..n-1 as (index, epoch) pairs, in an order fixed by (seed, epoch); `shuffle=False`: in order.

    `len()` is always the full epoch: after `skip_batches`, Lightning restores a mid-epoch checkpoint with its
    batch counter at the skipped count and counts the remaining batches up to that full length.
    """

    def __init__(self, n: int, seed: int, batch_size: int, shuffle: bool = True):
        self.n, self.seed, self.batch_size, self.shuffle = int(n), int(seed), int(batch_size), shuffle
        self.epoch = 0
        self.rank, self.world_size = 0, 1
        self._skip: dict[int, int] = {}  # epoch -> batches to skip the next time that epoch is iterated

    def shard(self, rank: int, world_size: int) -> None:
        """Under DDP: this process's share of each epoch's order, split like torch's DistributedSampler (the order
        padded with its first indices to a multiple of world_size, then every world_size-th from `rank`). Done
        here rather than by Lightning's wrapper so that `skip_batches` counts this process's own batches."""
        self.rank, self.world_size = int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_batches(self, epoch: int, batches: int) -> None:
        self._skip[int(epoch)] = int(batches)
        self.epoch = int(epoch)  # Lightning creates the first iterator before its first set_epoch call

    def order(self) -> torch.Tensor:
        """This epoch's permutation (the same for every call within the epoch)."""
        if not self.shuffle:
            order = torch.arange(self.n)
        else:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, ORDER, self.epoch))
            order = torch.randperm(self.n, generator=gen)
        if self.world_size == 1:
            return order
        padding = len(self) * self.world_size - self.n
        return torch.cat([order, order[:padding]])[self.rank::self.world_size]

    def take_epoch(self) -> tuple[int, torch.Tensor, int]:
        """(epoch, permutation, first batch) for one pass; a pending skip for this epoch is used up."""
        return self.epoch, self.order(), self._skip.pop(self.epoch, 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, order, first_batch = self.take_epoch()
        return iter([(i, epoch) for i in order[first_batch * self.batch_size:].tolist()])

    def __len__(self) -> int:
        return -(-self.n // self.world_size)


class SeededSamples(Dataset):
    """`dataset[index]` with the global torch RNG seeded by (seed, epoch, index) for that one sample.

    torchvision's v2 random transforms draw from the global (CPU) torch RNG; its state is restored afterwards,
    so neither the caller's RNG state nor the worker's matters. Plain integer keys (no epoch) load unseeded.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, epoch = key
        # Saving and reseeding the CPU generator directly costs ~5 us a sample; torch.random.fork_rng (~35 us)
        # and torch.manual_seed (~500 us: it also visits every accelerator backend) were measured far slower.
        rng = torch.default_generator
        saved = rng.get_state()
        rng.manual_seed(mix_seed(self.seed, AUGMENT, epoch, index))
        try:
            return self.dataset[index]
        finally:
            rng.set_state(saved)

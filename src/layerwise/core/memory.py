"""Peak activation memory of a training step.

On CUDA: `max_memory_allocated` during the step minus what was allocated before it.
On CPU: the bytes autograd keeps for backward, counted per storage with `saved_tensors_hooks`; a storage
is live from the first time a graph saves it until the last graph holding it is freed.
"""
from __future__ import annotations

import contextlib

import torch


class _Saved:
    __slots__ = ("meter", "key", "tensor")

    def __init__(self, meter: "ActivationMeter", key: int, tensor: torch.Tensor):
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self):
        self.meter._release(self.key)


class ActivationMeter:
    """Peak bytes of activations saved for backward, over the steps it tracked."""

    def __init__(self):
        self.peak_bytes = 0
        self._live = 0
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [references, nbytes]

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    def reset(self) -> None:
        self.peak_bytes = 0

    def _pack(self, t: torch.Tensor):
        base = t._base if t._base is not None else t
        if base.is_leaf and base.requires_grad:  # parameters, and views of them (F.linear saves weight.t()), are
            return t                             # not activations
        storage = t.untyped_storage()
        key = storage.data_ptr()
        entry = self._storages.get(key)
        if entry is None:
            self._storages[key] = [1, storage.nbytes()]
            self._live += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self._live)
        else:
            entry[0] += 1
        return _Saved(self, key, t)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Saved) else packed

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self._live -= entry[1]
            del self._storages[key]

    @contextlib.contextmanager
    def track(self, device: torch.device, enabled: bool = True):
        if not enabled:
            yield
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            yield
            torch.cuda.synchronize(device)
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(device) - base)
        else:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                yield

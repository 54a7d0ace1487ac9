"""One all-reduce per step point: the gradients of the groups about to step, and the stage losses the
non-finite guard checks there (see layerwise.parallel.distributed for why DDP's own reducer stays idle)."""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
import torch.distributed as dist

from layerwise.core.guard import NonFiniteGuard
from layerwise.errors import ConfigError


def sync_step_point(world_size: int, groups: Sequence[Sequence[torch.Tensor]], guard: NonFiniteGuard) -> None:
    """Average over processes the gradients of the parameter groups about to step, and share the stage losses
    the guard checks now (a non-finite loss on any rank becomes non-finite on every rank).

    One all-reduce per gradient dtype (one in practice). A parameter without a gradient on some ranks counts
    as zero there (as in DDP); one without a gradient on every rank keeps `grad=None`. No-op on one process.
    """
    if world_size <= 1:
        return
    params = [p for group in groups for p in group]
    pending = guard._pending  # (name, detached loss) of the stages since the last step point
    if not params and not pending:
        return
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            raise ConfigError("sparse gradients cannot be averaged over processes; use trainer.devices=1")
    device = params[0].device if params else pending[0][1].device
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = defaultdict(list)
    for p in params:
        by_dtype[p.dtype].append(p)
    # The float32 bucket also carries, after the gradients, one has-gradient flag per parameter of every
    # bucket and the pending losses.
    meta_dtype = torch.float32
    by_dtype.setdefault(meta_dtype, [])
    flags = torch.tensor([float(p.grad is not None) for p in params], dtype=meta_dtype, device=device)
    losses = [loss.reshape(-1).to(device=device, dtype=meta_dtype) for _, loss in pending]
    for dtype, members in by_dtype.items():
        parts = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in members]
        if dtype == meta_dtype:
            parts += [flags, *losses]
        if not parts:
            continue
        flat = torch.cat(parts)
        dist.all_reduce(flat)  # SUM: gloo has no AVG
        offset = 0
        for p in members:
            n = p.numel()
            reduced = flat[offset:offset + n].view_as(p).div_(world_size)
            offset += n
            if p.grad is None:
                p.grad = reduced.clone(memory_format=torch.preserve_format)
            else:
                p.grad.copy_(reduced)
        if dtype == meta_dtype:
            flags = flat[offset:offset + len(params)]
            offset += len(params)
            for k, (name, loss) in enumerate(pending):
                n = loss.numel()
                pending[k] = (name, (flat[offset:offset + n] / world_size).view_as(loss).to(loss.dtype))
                offset += n
    for p, used in zip(params, flags.tolist()):
        if used == 0:  # no rank had a gradient: keep None, so the optimizer skips it as it would on one device
            p.grad = None

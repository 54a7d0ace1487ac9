"""The map a block holds just before its trailing pool, for rules whose local loss reads it (predsim, ssl).

A forward pre-hook on the pool stores the map; the block still passes the pooled map on.
"""
from __future__ import annotations

import torch
from torch import nn

POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def trailing_pool(block: nn.Module) -> nn.Module | None:
    """The pool a block ends with (also inside nested Sequentials, e.g. a LayerGroup of conv layers), or None."""
    last = block
    while isinstance(last, nn.Sequential) and len(last):
        last = last[-1]
    return last if isinstance(last, POOLS) else None


class PrePoolMaps:
    """Forward pre-hook target: keeps, per block index, the map entering that block's trailing pool.

    A plain object the rule owns (not a closure over the rule), so a deepcopy of (net, rule) together, as the
    alignment and locality diagnostics make, gives the copied net's hooks the copied rule's store.
    """

    def __init__(self):
        self.maps: dict[int, torch.Tensor] = {}

    def attach(self, blocks, indices) -> list[int]:
        """Hook the trailing pool of each block in `indices`; the indices of the blocks that have one."""
        hooked = []
        for i in indices:
            pool = trailing_pool(blocks[i])
            if pool is not None:
                pool.register_forward_pre_hook(_Keep(self, i))
                hooked.append(i)
        return hooked

    def pop(self, i: int, default: torch.Tensor | None) -> torch.Tensor | None:
        return self.maps.pop(i, default)

    def clear(self) -> None:
        self.maps.clear()


class _Keep:
    def __init__(self, store: PrePoolMaps, i: int):
        self.store, self.i = store, i

    def __call__(self, module, args):
        self.store.maps[self.i] = args[0]

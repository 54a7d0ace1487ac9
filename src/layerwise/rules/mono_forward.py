"""Mono-Forward (Gong, Li & Abdulla 2025, arXiv 2501.09238).

Each layer i owns a projection M_i (classes x features) to class scores, its "goodness" G_i = a_i M_i^T, and
trains, with M_i, on the local cross-entropy CE(softmax(G_i), y); layer inputs are detached, so no error crosses
a layer, and there is one forward pass per batch. The prediction is the last layer's goodness.

Here a layer is a block (model.blocks groups layers). Blocks but the last own M_i, a bias-free Linear on the
flattened output (method.pool_size: average-pool a conv map first). The last block's projection is the network's
own head: the head is trained, together with the last block only, by the same local cross-entropy on its
logits, so the network's prediction (the head's) is the last layer's goodness. This is exact when the head is a
single Linear on the flattened last-block output (model.head_hidden=[] on mlp / basic_cnn / VGG; ResNets pool
first); it carries a bias, unlike M_i; a head with hidden layers makes M_L a small MLP (describe() says so).
Per-block accuracy: argmax of each G_i.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.models import Network
from layerwise.rules.base import LearningRule, Signal, TrainGroup, output_shapes
from layerwise.rules.options.mono_forward import MonoForwardOptions


def projection(shape: torch.Size, num_classes: int, pool_size: int | None, bias: bool) -> nn.Sequential:
    """M_i for a block output of `shape`: [average pool], flatten, Linear(features, classes)."""
    layers: list[nn.Module] = []
    if len(shape) == 3 and pool_size:
        side = min(int(pool_size), int(shape[1]), int(shape[2]))  # adaptive pooling to more would upsample
        layers.append(nn.AdaptiveAvgPool2d(side))
        shape = torch.Size([shape[0], side, side])
    layers += [nn.Flatten(), nn.Linear(math.prod(shape), num_classes, bias=bias)]
    return nn.Sequential(*layers)


class MonoForward(LearningRule):
    name = "mono_forward"
    Options = MonoForwardOptions
    local = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.projections = nn.ModuleDict()
        self.head_linears = 0

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        super().setup(net, example, num_classes)
        shapes = output_shapes(net, example)
        self.projections = nn.ModuleDict({
            str(i): projection(shapes[i], num_classes, self.cfg.pool_size, bool(self.cfg.bias))
            for i in range(len(net.blocks) - 1)})
        self.head_linears = sum(isinstance(m, nn.Linear) for m in net.head.modules())

    def goodness(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return self.projections[str(i)](h)

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal | None:
        if str(i) not in self.projections:
            return None  # the last block learns from the head's cross-entropy: its M is the head
        g = self.goodness(i, h)
        return Signal(loss=F.cross_entropy(g, y), logits=g)

    def block_logits(self, i: int, h: torch.Tensor) -> torch.Tensor | None:
        return self.goodness(i, h) if str(i) in self.projections else None

    def train_groups(self, net: Network) -> list[TrainGroup]:
        n = len(net.blocks)
        groups = [TrainGroup(f"block{i}", [net.blocks[i], self.projections[str(i)]], step_after=i)
                  for i in range(n - 1)]
        groups.append(TrainGroup(f"block{n - 1}+head", [net.blocks[n - 1], net.head], step_after=n))
        return groups

    def describe(self) -> str:
        pool = f"pool {self.cfg.pool_size}, " if self.cfg.pool_size else ""
        head = ("M_last = the head (one Linear)" if self.head_linears == 1
                else f"M_last = the head ({self.head_linears} Linear layers: set model.head_hidden=[] for the paper's)")
        return f"mono_forward ({pool}{head})"

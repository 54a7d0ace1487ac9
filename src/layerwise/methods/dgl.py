"""Decoupled Greedy Learning (Belilovsky et al., 2019/2020).

Every block but the last has an auxiliary classifier; block i and its aux head minimise the aux
cross-entropy on a detached input, with their own optimizer stepped immediately, so block i's graph is
freed before block i+1 runs. The last block is trained by the network's own head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.errors import ConfigError
from layerwise.methods.base import LearningRule, Signal, TrainGroup, output_shapes
from layerwise.models import Network, mlp


def build_aux_head(shape: torch.Size, num_classes: int, cfg) -> nn.Module:
    """Aux classifier for a block output of `shape` (C,H,W or D): optional pool, optional conv, MLP."""
    hidden = [int(cfg.hidden_dim)] * int(cfg.n_hidden_layers)
    layers: list[nn.Module] = []
    if len(shape) == 3:
        channels, height, width = shape
        if cfg.type == "cnn":
            for _ in range(int(cfg.cnn_layers)):
                layers += [nn.Conv2d(channels, int(cfg.cnn_channels), 3, padding=1),
                           nn.BatchNorm2d(int(cfg.cnn_channels)), nn.ReLU()]
                channels = int(cfg.cnn_channels)
        if cfg.pool_size:
            layers.append(nn.AdaptiveAvgPool2d(int(cfg.pool_size)))
            height = width = min(int(cfg.pool_size), height)
        dim_in = channels * height * width
    elif cfg.type == "cnn":
        raise ConfigError("method.aux.type=cnn needs conv blocks; use method.aux.type=mlp for MLP models")
    else:
        dim_in = int(shape[0])
    layers.append(mlp(dim_in, hidden, num_classes))
    return nn.Sequential(*layers)


class DecoupledGreedy(LearningRule):
    name = "dgl"
    local = True

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.aux.type not in ("mlp", "cnn"):
            raise ConfigError(f"method.aux.type={cfg.aux.type!r} is not known; choose mlp or cnn")
        self.aux = nn.ModuleList()

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        super().setup(net, example, num_classes)
        if len(net.blocks) < 2:
            raise ConfigError("DGL needs at least 2 blocks; set model.blocks to a larger number or null")
        shapes = output_shapes(net, example)[:-1]
        self.aux = nn.ModuleList(build_aux_head(s, num_classes, self.cfg.aux) for s in shapes)

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal | None:
        if i >= len(self.aux):
            return None  # the last block learns from the network head
        logits = self.aux[i](h)
        return Signal(loss=F.cross_entropy(logits, y), logits=logits)

    def block_logits(self, i: int, h: torch.Tensor) -> torch.Tensor | None:
        return self.aux[i](h) if i < len(self.aux) else None

    def train_groups(self, net: Network) -> list[TrainGroup]:
        n = len(net.blocks)
        groups = [TrainGroup(f"block{i}", [net.blocks[i], self.aux[i]], step_after=i) for i in range(n - 1)]
        groups.append(TrainGroup(f"block{n - 1}+head", [net.blocks[n - 1], net.head], step_after=n))
        return groups

    def describe(self) -> str:
        a = self.cfg.aux
        pool = f", pool {a.pool_size}" if a.pool_size else ""
        return f"dgl (aux {a.type}, {a.n_hidden_layers}x{a.hidden_dim}{pool})"

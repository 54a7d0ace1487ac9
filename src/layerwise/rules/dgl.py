"""Decoupled Greedy Learning (Belilovsky et al., 2019/2020).

Every block but the last has an auxiliary classifier; block i and its aux head minimise the aux
cross-entropy on a detached input, with their own optimizer stepped immediately, so block i's graph is
freed before block i+1 runs. The last block is trained by the network's own head.

Options from the thesis:
- `direct_global`: the gradient at every aux head's output is (1-w)·(its own CE gradient) + w·(the network
  head's error on the same batch), w = `last_gradient_weight`. The head's error comes from a no-grad pass
  at the start of the batch with the parameters the batch starts from (one extra forward per batch).
- `first_trainable_block` k: blocks before k stay at their random initialisation (parameters frozen; their
  batch norms still normalise with batch statistics); `head` freezes every block: the random-features
  lower bound.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.errors import ConfigError
from layerwise.models import Network, mlp
from layerwise.rules.base import LearningRule, Signal, TrainGroup, evaluating, output_shapes
from layerwise.rules.options.dgl import AUX_TYPES, AuxOptions, DglOptions  # noqa: F401  (re-exported; defined in rules/options)

PAPER_MLP_LAYERS = 3  # Belilovsky et al.: 3 hidden Linear+BN+ReLU layers of width 4C
PAPER_SR_LAYERS = 3   # MLP-SR-aux: 3 1x1 conv+BN+ReLU layers of width C before the 2x2 pool


def _restore_buffers(net: nn.Module):
    """Snapshot of the batch-norm statistics, so an extra forward leaves them as they were."""
    saved = [b.clone() for b in net.buffers()]

    def restore():
        with torch.no_grad():
            for b, v in zip(net.buffers(), saved):
                b.copy_(v)

    return restore


def dgl_paper_head(shape: torch.Size, num_classes: int, spatial_reduction: bool = False) -> nn.Sequential:
    """Belilovsky et al.'s aux head (MLP-aux; MLP-SR-aux with `spatial_reduction`) for a C x H x W map.

    Average-pool to ceil(H/4) x ceil(W/4) (with SR: three 1x1 conv (no bias) + BN + ReLU of width C there), then
    average-pool to 2x2 and flatten (4C features), three Linear(4C, 4C) + BatchNorm1d + ReLU, Linear(4C, classes).
    Two pools rather than one so non-divisible map sizes average exactly as in the paper's code.
    """
    channels, height, width = shape
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d((math.ceil(height / 4), math.ceil(width / 4)))]
    if spatial_reduction:
        for _ in range(PAPER_SR_LAYERS):
            layers += [nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
    features = 4 * channels
    for _ in range(PAPER_MLP_LAYERS):
        layers += [nn.Linear(features, features), nn.BatchNorm1d(features), nn.ReLU()]
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def infopro_paper_head(shape: torch.Size, out_dim: int, hidden: int) -> nn.Sequential:
    """Wang et al.'s label head ('1c2f'): Conv3x3 (no bias) + BN + ReLU, global average pool, FC, ReLU, FC.

    The paper's code (ResNet-32/110 on 32-px images) widens 16 -> 32 and 32 -> 64 channels at stride 2 on the
    32- and 16-px maps and keeps 64 at stride 1 on the 8-px map: here, 2C at stride 2 on maps larger than 8 px,
    C at stride 1 on maps of 8 px or less. `hidden` is the FC width (the paper's feature_dim, 128).
    """
    channels, height, width = shape
    out_channels, stride = (2 * channels, 2) if min(height, width) > 8 else (channels, 1)
    return nn.Sequential(
        nn.Conv2d(channels, out_channels, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(out_channels, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def build_aux_head(shape: torch.Size, num_classes: int, cfg) -> nn.Module:
    """Aux classifier for a block output of `shape` (C,H,W or D): optional pool, optional conv, MLP; or one of
    the papers' heads (`dgl_paper`, `dgl_paper_sr`, `infopro_paper`: their own fixed layout; hidden_dim is the
    FC width of infopro_paper, the other size options do not apply)."""
    if cfg.type in ("dgl_paper", "dgl_paper_sr", "infopro_paper"):
        if len(shape) != 3:
            raise ConfigError(f"method.aux.type={cfg.type} needs conv blocks (C x H x W outputs); "
                              "use method.aux.type=mlp for MLP models")
        if cfg.type == "infopro_paper":
            return infopro_paper_head(shape, num_classes, int(cfg.hidden_dim))
        return dgl_paper_head(shape, num_classes, spatial_reduction=cfg.type == "dgl_paper_sr")
    hidden = [int(cfg.hidden_dim)] * int(cfg.n_hidden_layers)
    layers: list[nn.Module] = []
    if len(shape) == 3:
        channels, height, width = shape
        if cfg.type == "cnn":
            for _ in range(int(cfg.cnn_layers)):
                layers += [nn.Conv2d(channels, int(cfg.cnn_channels), 3, padding=1),
                           nn.BatchNorm2d(int(cfg.cnn_channels)), nn.ReLU()]
                channels = int(cfg.cnn_channels)
        if cfg.pool_size:  # at most the map's own size: adaptive pooling to more would upsample
            height = width = min(int(cfg.pool_size), height, width)
            layers.append(nn.AdaptiveAvgPool2d(height))
        dim_in = channels * height * width
    elif cfg.type == "cnn":
        raise ConfigError("method.aux.type=cnn needs conv blocks; use method.aux.type=mlp for MLP models")
    else:
        dim_in = math.prod(shape)  # token outputs (tokens x features, e.g. ViT's) are flattened too
    layers.append(mlp(dim_in, hidden, num_classes))
    return nn.Sequential(*layers)


class DecoupledGreedy(LearningRule):
    name = "dgl"
    Options = DglOptions
    local = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.weight = float(self.cfg.last_gradient_weight) if self.cfg.direct_global else 0.0
        self.first_trainable = 0
        self.aux = nn.ModuleDict()
        self._global_error: torch.Tensor | None = None

    def _first_trainable(self, n: int) -> int:
        value = self.cfg.get("first_trainable_block", 0)
        if value == "head":
            return n
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= n:
            raise ConfigError(f"method.first_trainable_block={value!r} must be an integer in [0, {n}] "
                              f"(the network has {n} blocks) or 'head' (only the head trains)")
        return value

    def local_blocks(self) -> range:
        """Blocks trained by a local signal: the trainable ones but the last (trained by the network head)."""
        return range(self.first_trainable, self.n_blocks - 1)

    def aux_blocks(self) -> range:
        """Blocks with an aux classifier."""
        return self.local_blocks()

    def block_modules(self, i: int) -> list[nn.Module]:
        """The rule's modules trained together with local block i."""
        return [self.aux[str(i)]]

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        super().setup(net, example, num_classes)
        self.first_trainable = self._first_trainable(len(net.blocks))
        if len(net.blocks) < 2 and self.first_trainable < len(net.blocks):
            raise ConfigError(f"{self.name} needs at least 2 blocks; set model.blocks to a larger number or null")
        for block in net.blocks[:self.first_trainable]:
            block.requires_grad_(False)
        shapes = output_shapes(net, example)
        self.aux = nn.ModuleDict({str(i): build_aux_head(shapes[i], num_classes, self.cfg.aux)
                                  for i in self.aux_blocks()})
        if self.weight > 0:
            self._check_global_shapes(net, example)

    def _check_global_shapes(self, net: Network, example: torch.Tensor) -> None:
        with evaluating(net):
            head_shape = net(example[:2]).shape
            logits = self.evaluate(net, example[:2])[1]
        wrong = {i: tuple(v.shape) for i, v in logits.items() if v.shape != head_shape}
        if wrong:
            raise ConfigError(f"method.direct_global needs every aux head to output the head's shape "
                              f"{tuple(head_shape)}, but blocks {wrong} differ; turn direct_global off")

    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.weight == 0:
            return
        restore = _restore_buffers(net)
        with torch.no_grad():
            logits = net(x)
        restore()
        # The gradient of the head's mean cross-entropy with respect to its logits.
        self._global_error = (logits.softmax(-1) - F.one_hot(y, logits.shape[-1]).to(logits.dtype)) / len(y)

    def aux_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal:
        logits = self.aux[str(i)](h)
        loss = F.cross_entropy(logits, y)
        if self.weight == 0:
            return Signal(loss=loss, logits=logits)
        mixed = (1 - self.weight) * loss + self.weight * (logits * self._global_error).sum()
        return Signal(loss=loss, logits=logits, objective=mixed)

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal | None:
        # Frozen blocks and the last block (trained by the network head) have no aux head.
        return self.aux_signal(i, h, y) if str(i) in self.aux else None

    def block_logits(self, i: int, h: torch.Tensor) -> torch.Tensor | None:
        return self.aux[str(i)](h) if str(i) in self.aux else None

    def train_groups(self, net: Network) -> list[TrainGroup]:
        n = len(net.blocks)
        groups = [TrainGroup(f"block{i}", [net.blocks[i], *self.block_modules(i)], step_after=i)
                  for i in self.local_blocks()]
        if self.first_trainable < n and n - 1 not in self.local_blocks():
            groups.append(TrainGroup(f"block{n - 1}+head", [net.blocks[n - 1], net.head], step_after=n))
        else:
            groups.append(TrainGroup("head", [net.head], step_after=n))
        return groups

    def describe(self) -> str:
        a = self.cfg.aux
        pool = f", pool {a.pool_size}" if a.pool_size else ""
        extras = []
        if self.weight > 0:
            extras.append(f"direct-global w={self.weight}")
        if self.first_trainable >= self.n_blocks:
            extras.append("all blocks frozen, only the head trains")
        elif self.first_trainable:
            extras.append(f"blocks <{self.first_trainable} frozen")
        head = (f"aux {a.type}" if a.type not in ("mlp", "cnn")
                else f"aux {a.type}, {a.n_hidden_layers}x{a.hidden_dim}{pool}")
        return f"{self.cfg.get('name', self.name)} ({head}{''.join(', ' + e for e in extras)})"

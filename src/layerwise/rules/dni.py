"""Decoupled Neural Interfaces: synthetic gradients (Jaderberg et al., 2017), and cDNI.

After every block but the last, a synthesizer M_i predicts dL/dh_i from h_i (cDNI: and the label). Block i
is updated with that prediction at once, so it never waits for the blocks above it. M_i is regressed (MSE)
onto the gradient that actually reached h_i from block i+1's update, which is itself synthetic except for
the last block: the paper's bootstrapping. By default the last block and the head learn from the true loss;
`synthesize_last` puts a synthesizer after the last block too (the paper's layout): the last block then learns
from its synthetic gradient, and that synthesizer regresses onto the true gradient the head sends back.

Scale: the batch loss is a mean, so a true gradient is a per-sample gradient / B. Synthesizers predict the
per-sample gradient (target B·δ) and the block receives prediction / B, so the synthesizer's loss reads the same
whatever the batch size; the fixed point is the same as regressing δ itself. The MSE is a mean over elements:
a sum makes the regression's curvature grow with the map size and diverges at the blocks' learning rate.

Step size: synthesizers train with the blocks' optimizer at `synthesizer.lr_scale` x its lr (null: 0.1 for
MLP synthesizers, 1.0 for conv ones). At the blocks' own lr (SGD 0.05, momentum 0.9) an MLP synthesizer with
BatchNorm chases each batch's noisy gradient: its predictions stop pointing along the true gradient and the
block it trains drifts until the network collapses. Conv synthesizers, whose weights are shared over the map,
learn too slowly at 0.1 instead (docs/rules/dni.md has both measurements).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.errors import ConfigError
from layerwise.models import Network
from layerwise.rules.base import LearningRule, Signal, TrainGroup, output_shapes
from layerwise.rules.options.dni import DniOptions, SynthesizerOptions  # noqa: F401  (re-exported; defined in rules/options)


class Synthesizer(nn.Module):
    """Maps a block output (and optionally the label) to a gradient of the same shape.

    conv: Conv-BN-ReLU-...-Conv keeping the map size (the thesis's Conv-BN-Conv-BN-Conv with 2 hidden layers);
    mlp: Linear-BN-ReLU-...-Linear on the flattened output (`batch_norm=false`: without the BN). The last layer
    starts at zero (paper): blocks get no signal until the synthesizer has learnt something, instead of random
    gradients.
    """

    def __init__(self, shape: torch.Size, num_classes: int, cfg, context: bool):
        super().__init__()
        self.shape = tuple(shape)
        kind = cfg.type if cfg.type != "auto" else ("conv" if len(shape) == 3 else "mlp")
        if kind == "conv" and len(shape) != 3:
            raise ConfigError("method.synthesizer.type=conv needs conv blocks; use type=mlp (or auto) for MLP models")
        self.conv = kind == "conv"
        if self.conv:
            size = int(cfg.channels or shape[0])
            k = int(cfg.kernel_size)
            dims = [shape[0]] + [size] * int(cfg.hidden_layers) + [shape[0]]
            linear = lambda a, b: nn.Conv2d(a, b, k, padding=k // 2)  # noqa: E731
            norm = nn.BatchNorm2d
        else:
            flat = int(torch.Size(shape).numel())
            dims = [flat] + [int(cfg.hidden_dim)] * int(cfg.hidden_layers) + [flat]
            linear, norm = nn.Linear, nn.BatchNorm1d
        self.layers = nn.ModuleList(linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(nn.Sequential(norm(d), nn.ReLU()) if cfg.batch_norm else nn.ReLU()
                                   for d in dims[1:-1])
        # cDNI: the one-hot label enters through a linear map added after the first layer.
        self.context = nn.Linear(num_classes, dims[1], bias=False) if context else None
        self.num_classes = num_classes
        if cfg.zero_init:
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = h if self.conv else h.flatten(1)
        for k, layer in enumerate(self.layers):
            z = layer(z)
            if k == 0 and self.context is not None:
                c = self.context(F.one_hot(y, self.num_classes).to(z.dtype))
                z = z + (c[:, :, None, None] if self.conv else c)
            if k < len(self.norms):
                z = self.norms[k](z)
        return z.view(len(h), *self.shape)


AUTO_LR_SCALE = {"mlp": 0.1, "conv": 1.0}  # synthesizer.lr_scale=null, by synthesizer kind (measured: docs)


class SyntheticGradients(LearningRule):
    name = "dni"
    Options = DniOptions
    local = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.synthesize_last = bool(self.cfg.synthesize_last)
        self.detach_head = self.synthesize_last  # the head's true gradient is the last synthesizer's target
        self.synth = nn.ModuleList()
        self._lr_scales: list[float] = []
        self._inputs: dict[int, torch.Tensor] = {}
        self._pending: dict[int, torch.Tensor] = {}

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        super().setup(net, example, num_classes)
        if len(net.blocks) < 2:
            raise ConfigError("DNI needs at least 2 blocks; set model.blocks to a larger number or null")
        shapes = output_shapes(net, example)
        shapes = shapes if self.synthesize_last else shapes[:-1]
        self.synth = nn.ModuleList(
            Synthesizer(s, num_classes, self.cfg.synthesizer, bool(self.cfg.context)) for s in shapes)
        scale = self.cfg.synthesizer.lr_scale
        self._lr_scales = [float(scale) if scale is not None else AUTO_LR_SCALE["conv" if m.conv else "mlp"]
                           for m in self.synth]

    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        self._inputs, self._pending = {}, {}

    def block_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # A leaf that collects the gradient block i's update sends back: block i-1's synthesizer target
        # (i == n_blocks: the head's true gradient, when the last block has a synthesizer too).
        if 0 < i < self.n_blocks or (i == self.n_blocks and self.synthesize_last):
            x = x.detach().requires_grad_()
            self._inputs[i] = x
        return x

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal | None:
        if i >= len(self.synth):
            return None  # the last block learns from the true loss through the head (synthesize_last=false)
        predicted = self.synth[i](h.detach(), y)
        self._pending[i] = predicted
        return Signal(grad=predicted.detach() / len(h))

    def after_backward(self, i: int) -> dict[str, Signal]:
        ready = {}
        for j in [j for j in self._pending if j + 1 in self._inputs and self._inputs[j + 1].grad is not None]:
            predicted = self._pending.pop(j)
            target = self._inputs[j + 1].grad * (len(predicted) / self.grad_scale)
            loss = F.mse_loss(predicted, target)
            ready[f"block{j}/synth_"] = Signal(loss=loss)
        if i == self.n_blocks:
            self._inputs = {}
        return ready

    def lr_scale(self, i: int) -> float:
        """Synthesizer i's step as a multiple of optimizer.lr."""
        return self._lr_scales[i]

    def train_groups(self, net: Network) -> list[TrainGroup]:
        n = len(net.blocks)
        if self.synthesize_last:
            # Every block steps on its synthetic gradient at once; synthesizer i's target exists once stage i+1
            # (block i+1, or the head for the last one) has backpropagated.
            groups = [TrainGroup(f"block{i}", [net.blocks[i]], step_after=i) for i in range(n)]
            groups += [TrainGroup(f"synth{i}", [self.synth[i]], step_after=i + 1, lr_scale=self.lr_scale(i))
                       for i in range(n)]
            return groups + [TrainGroup("head", [net.head], step_after=n)]
        groups = [TrainGroup(f"block{i}", [net.blocks[i]], step_after=i) for i in range(n - 1)]
        # Synthesizer i's target exists once block i+1 has backpropagated: the last block does so in the
        # head's backward.
        groups += [TrainGroup(f"synth{i}", [self.synth[i]], step_after=i + 1 if i + 1 < n - 1 else n,
                              lr_scale=self.lr_scale(i)) for i in range(n - 1)]
        groups.append(TrainGroup(f"block{n - 1}+head", [net.blocks[n - 1], net.head], step_after=n))
        return groups

    def describe(self) -> str:
        s = self.cfg.synthesizer
        variant = "cdni" if self.cfg.context else "dni"
        kinds = sorted({"conv" if m.conv else "mlp" for m in self.synth})
        last = ", last block too" if self.synthesize_last else ""
        scales = "/".join(f"{x:g}" for x in sorted({self.lr_scale(i) for i in range(len(self.synth))}))
        return f"{variant} ({'/'.join(kinds)} synthesizers, {s.hidden_layers} hidden layers, lr x{scales}{last})"

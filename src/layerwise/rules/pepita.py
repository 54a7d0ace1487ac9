"""PEPITA (Dellaferrera & Kreiman 2022, "Error-driven Input Modulation: Solving the Credit Assignment Problem
without a Backward Pass", ICML; Algorithm 1).

Two forward passes and no backward pass between layers:

    standard pass   h_0 = x,             h_ℓ = σ(W_ℓ h_{ℓ-1}),          e = softmax(h_L) − y*
    modulated pass  h_0^mod = x + F e,   h_ℓ^mod = σ(W_ℓ h_{ℓ-1}^mod)
    updates         ΔW_ℓ = (h_ℓ − h_ℓ^mod) (h_{ℓ-1}^mod)ᵀ  (hidden ℓ),   ΔW_L = e (h_{L-1}^mod)ᵀ,   W ← W − η ΔW

F (d_in × classes) is fixed and random, U(−1, 1)·sqrt(6/d_in)·`input_scale` (0.05 in the paper), a buffer
(checkpoints keep it). Here the standard pass runs without autograd in `begin_batch`; the loop's own forward is
the modulated pass (`block_input(0)` is x + F e), and block ℓ's update is injected at its last activation's
input (no f'), as (h_ℓ − h_ℓ^mod)/N, so autograd gives (h_ℓ − h_ℓ^mod)(h_{ℓ-1}^mod)ᵀ averaged over the batch (the
authors' code divides the summed update by the batch size too). The output layer gets e/N at the logits, times
the modulated pass's input to it; `output_error=modulated` uses the modulated pass's error instead (the authors'
notebook). A block of several layers (model.blocks) backpropagates its update inside the block.

Both passes draw the same dropout masks (the paper's "same mask in both passes"): the standard pass runs on a
fork of the RNG, which the modulated pass then replays. Batch norm's running statistics see both passes.

Fully connected networks only (the paper's MLPs; its conv update is not implemented here): a conv layer is
refused in `setup`. Not local in the pipeline's sense: e needs the whole network's first pass before block 0's
second, so trainer=pipeline refuses it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.errors import ConfigError
from layerwise.models import Network, split_head
from layerwise.rules.base import LearningRule, Signal, TrainGroup
from layerwise.rules.direct import PreActivation, pre_activation_tap
from layerwise.rules.options.pepita import PepitaOptions


def input_projection(d_in: int, classes: int, scale: float) -> torch.Tensor:
    """F: U(-1, 1) * sqrt(6/d_in) * scale, shaped (d_in, classes)."""
    return (torch.rand(d_in, classes) * 2 - 1) * math.sqrt(6.0 / d_in) * scale


class Pepita(LearningRule):
    name = "pepita"
    Options = PepitaOptions
    local = True
    detach_head = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.input_scale = float(self.cfg.input_scale)
        self.output_error = str(self.cfg.output_error)
        self.moved = 0
        self._taps: list[PreActivation] = []
        self._first: list[torch.Tensor] = []
        self._first_logits: torch.Tensor | None = None
        self._error: torch.Tensor | None = None
        self._x_mod: torch.Tensor | None = None

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        if any(isinstance(m, nn.Conv2d) for m in net.modules()):
            raise ConfigError("method=pepita trains fully-connected networks (the paper's MLPs; its conv update is "
                              "not implemented here); use model=mlp")
        self.moved = split_head(net)
        super().setup(net, example, num_classes)
        self._taps = self._find_taps(net)
        self.register_buffer("projection", input_projection(example[0].numel(), num_classes, self.input_scale))

    @staticmethod
    def _find_taps(net: Network) -> list[PreActivation]:
        return [pre_activation_tap(block, "method=pepita", "use model=mlp (every hidden layer has one)")
                for block in net.blocks]

    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        self._taps = self._find_taps(net)
        devices = [x.device] if x.device.type == "cuda" else []
        # The standard pass draws its dropout masks on a fork: the modulated pass (the loop's) replays them.
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            h, first = x, []
            for block in net.blocks:
                h = block(h)
                first.append(h)
            logits = net.head(h)
        self._first, self._first_logits = first, logits
        self._error = logits.softmax(-1) - F.one_hot(y, logits.shape[-1]).to(logits.dtype)
        f = self.projection
        self._x_mod = x + (self._error.to(f.dtype) @ f.T).view_as(x).to(x.dtype)

    def block_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i == 0 and self._x_mod is not None:
            x_mod, self._x_mod = self._x_mod, None
            return x_mod
        return super().block_input(i, x)

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal:
        pre = self._taps[i].take()
        delta = (self._first[i] - h.detach()) / len(y)
        self._first[i] = None
        return Signal(objective=(pre * delta.to(pre.dtype)).sum())

    def head_signal(self, logits: torch.Tensor, y: torch.Tensor) -> Signal:
        first, e = self._first_logits, self._error
        if self.output_error == "modulated":
            e = logits.detach().softmax(-1) - F.one_hot(y, logits.shape[-1]).to(logits.dtype)
        self._first, self._first_logits, self._error = [], None, None
        # Reported: the standard pass's loss and accuracy (the network as it is); trained: e at the modulated logits.
        return Signal(loss=F.cross_entropy(first, y), logits=first,
                      objective=(logits * (e / len(y)).to(logits.dtype)).sum())

    def train_groups(self, net: Network) -> list[TrainGroup]:
        n = len(net.blocks)
        return [TrainGroup(f"block{i}", [block], step_after=i) for i, block in enumerate(net.blocks)] + [
            TrainGroup("head", [net.head], step_after=n)]

    def describe(self) -> str:
        moved = f", {self.moved} head layer{'s' * (self.moved != 1)} moved into blocks" if self.moved else ""
        return f"pepita (F scale {self.input_scale:g}, output error of the {self.output_error} pass{moved})"

"""Direct Random Target Projection (Frenkel, Lefebvre & Bol 2021, "Learning without feedback: Fixed random
learning signals allow for feedforward training of deep neural networks", Frontiers in Neuroscience 15:629892).

DFA (method=dfa) with the one-hot target y* in place of the output error e: hidden block i learns from

    δ_i = (B_iᵀ y*) ⊙ f'(a_i)          ∂L/∂W_i = δ_i h_{i-1}ᵀ

(the paper's Eq. for DRTP; B_i fixed and random). In classification, e = ŷ − y* has the sign of −y* on the
target class, so y* carries the error's sign; the paper's modulatory signal is B_iᵀ y* as written, and the
authors' code injects +y*·B_i as the output gradient. A −y* would be the same rule with −B_i, which is drawn from
the same symmetric distribution. y* is divided by the batch size, as the head's mean loss divides e, so
`feedback.scale` means the same step size as in dfa.

The signal needs nothing from the layers above, only the label: each block steps right after its own forward
(as DGL), its graph is freed at once, and trainer=pipeline can run it. The output layer (the head's last
Linear; `split_head` moves the head's hidden layers into blocks) learns from its true error on detached
features. `injection` and the feedback matrices' forms (dense | conv_shared) are dfa's (layerwise.rules.direct).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from layerwise.models import Network
from layerwise.rules.base import Signal, TrainGroup
from layerwise.rules.direct import DirectProjection
from layerwise.rules.options.drtp import DrtpOptions


class DirectRandomTargetProjection(DirectProjection):
    name = "drtp"
    Options = DrtpOptions
    projected = "y*"

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        super().setup(net, example, num_classes)
        # The pipeline's stages call no begin_batch (it has no whole-batch view to give): their taps come from here.
        self._taps = self.find_taps(net)

    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        self._taps = self.find_taps(net)  # a copy of (net, rule) reads its own network

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal:
        target = self.injection_point(i, h)
        y_star = F.one_hot(y, self.feedback(i).shape[0]).to(target.dtype) / len(y)
        return Signal(objective=(target * self.project(i, y_star, target)).sum())

    def train_groups(self, net: Network) -> list[TrainGroup]:
        n = len(net.blocks)
        return [TrainGroup(f"block{i}", [block], step_after=i) for i, block in enumerate(net.blocks)] + [
            TrainGroup("head", [net.head], step_after=n)]

    def describe(self) -> str:
        return f"drtp ({self.describe_feedback()})"

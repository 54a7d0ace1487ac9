"""Product feedback alignment (Li Ji-An & Marcus K. Benna 2024, "Deep learning without weight symmetry",
arXiv 2405.20594).

The error of a layer y = W x reaches its input through an extra population of `mid` = expand_ratio x out neurons
and two matrices, never through a synapse paired with a forward one:

    δ_mid = Bᵀ δ            (B: out x mid, fixed and random)
    δ_x   = Rᵀ δ_mid        (R: mid x in, learned)       i.e. the feedback matrix is the product B·R
    ΔW = -η δ xᵀ - λ W      ΔR = -η δ_mid xᵀ - λ R  (= -η Bᵀ δ xᵀ - λ R)

R learns from quantities local to its synapses (the extra population's error δ_mid and the layer's input x), and
since R's gradient is Bᵀ·(W's gradient), B·R moves by B Bᵀ times W's gradient step. B is drawn with variance
1/mid, so E[B Bᵀ] = I and B Bᵀ → I as expand_ratio grows: with weight decay, B·R aligns with W (the alignment
diagnostic's angle_wb measures the angle between W and B·R). For a conv, R is a (mid, in, k, k) kernel and B a
1x1 conv from out to mid channels.

Sources: the paper's abstract, and the authors' code (their biotorch fork, mode "tfa"), which computes exactly
δ_mid = Bᵀδ, δ_x through R, R's gradient δ_mid xᵀ, and trains R with the forward weights' optimizer and weight
decay ("tfawd"). The paper's equation numbers could not be read here (only its abstract was reachable), so none
are cited. What differs: R's gradient is computed as Bᵀ·(δ xᵀ) by autograd through B·R, the same product in one
matrix multiply instead of through the mid population's activity.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from layerwise.rules.fa import FeedbackAlignment
from layerwise.rules.feedback import check_scale, random_feedback
from layerwise.rules.options.pfa import PfaOptions  # noqa: F401  (re-exported; defined in rules/options)


class ProductFeedback(nn.Module):
    """Feedback B·R: `fixed` (B, out x mid, a buffer) times `relay` (R, mid x in x kernel, a parameter)."""

    def __init__(self, shape, ratio: int, init: str, scale: float, device=None):
        super().__init__()
        mid = int(ratio) * shape[0]
        self.register_buffer("fixed", torch.randn(shape[0], mid, device=device) / math.sqrt(mid))
        self.relay = nn.Parameter(random_feedback((mid, *shape[1:]), init, scale, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return (self.fixed @ self.relay.flatten(1)).view(weight.shape)


class ProductFeedbackAlignment(FeedbackAlignment):
    name = "pfa"
    Options = PfaOptions

    def checked_scale(self, value):
        return check_scale(value, "pfa")

    def make_feedback(self, layer: nn.Module) -> nn.Module:
        scale = 1.0 if self.scale is None else float(self.scale)
        return ProductFeedback(layer.weight.shape, self.cfg.expand_ratio, self.init, scale, layer.weight.device)

    def describe(self) -> str:
        return f"{self.name} (expand_ratio {self.cfg.expand_ratio}; {self._conversion()})"

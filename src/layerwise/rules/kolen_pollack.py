"""Kolen-Pollack learning of the feedback matrix (Kolen & Pollack 1994, "Backpropagation without weight
transport"; Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, "Deep learning without weight transport", NeurIPS,
section 3).

Feedback alignment whose B learns. Akrout et al. write, for a layer y = W x with error δ at its output,

    ΔW = -η δ xᵀ - λ W        ΔB = -η x δᵀ - λ B        (B is the backward matrix, shaped like Wᵀ)

so Δ(B - Wᵀ) = -λ(B - Wᵀ): the difference shrinks by (1 - λ) every step whatever the data, and B → Wᵀ.
Here B is stored in W's layout (the `FeedbackLinear`/`FeedbackConv2d` convention, so for a conv it is the kernel
the transposed convolution uses), it is an `nn.Parameter` of the layer, and its gradient is W's own gradient
(`feedback._feedback_grad`). B is then stepped by the same optimizer as W, with the same learning rate, momentum
and weight decay: the paper's λ is `optimizer.lr * optimizer.weight_decay`. With momentum the update stays
symmetric: W's and B's momentum buffers receive the same gradients, so D = B - W obeys a data-free linear
recursion (v_D <- μ v_D + wd·D, D <- D - lr·v_D) that decays to 0. AdamW keeps it exact as well (decoupled decay,
equal moments); Adam with L2 decay inside the gradient is only close (the moments see g + wd·B vs g + wd·W).
With optimizer.weight_decay=0, B - W keeps its initial value.

B is a parameter, so checkpoints carry it (and its optimizer state), and trainer=ddp averages its gradient
like W's. `exact_last` keeps the output layer's backward exact, as for fa.
"""
from __future__ import annotations

import torch
from torch import nn

from layerwise.rules.fa import FeedbackAlignment
from layerwise.rules.feedback import check_scale, random_feedback
from layerwise.rules.options.kolen_pollack import KolenPollackOptions  # noqa: F401  (re-exported; defined in rules/options)


class LearnedFeedback(nn.Module):
    """A feedback matrix that is a parameter: it receives W's gradient (layout of W) and W's optimizer steps it."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.matrix = nn.Parameter(matrix)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.matrix


class KolenPollack(FeedbackAlignment):
    name = "kolen_pollack"
    Options = KolenPollackOptions

    def checked_scale(self, value):
        return check_scale(value, "kolen_pollack")

    def make_feedback(self, layer: nn.Module) -> nn.Module:
        scale = 1.0 if self.scale is None else float(self.scale)
        return LearnedFeedback(random_feedback(layer.weight.shape, self.init, scale, device=layer.weight.device))

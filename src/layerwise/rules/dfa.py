"""Direct Feedback Alignment (Nøkland, 2016, "Direct Feedback Alignment Provides Learning in Deep Neural
Networks").

The output error e = dL/dlogits reaches every block i through its own fixed random matrix B_i, not through
the layers above: block i is trained as if B_i e were the gradient of its output. The head (only the last
Linear: `split_head` moves the head's hidden layers into blocks first, so they get direct feedback too) learns
from the true gradient on detached features. No gradient crosses a block boundary.

`injection` (post: the paper's; pre: skips f', for sign/step units) and the feedback matrices' forms (dense,
conv_shared) are shared with drtp (layerwise.rules.direct). Dense B_i is `feedback.init` times `feedback.scale`
(0.3: at 1.0 a relu MLP without batch norm diverges, since B ignores the layers above and nothing bounds the
growth of hidden activations).

Memory and compute: e exists only after the head's forward and backward, so every block's graph is kept until
then (peak activation memory like backprop's, not DGL's). Then each block's backward is short and independent
of the others (no block waits for another's gradient); all optimizers step after the head. Getting e from an
extra no-grad forward first would free each block at once, but it is not DFA's update unless nothing steps
before the last block.
"""
from __future__ import annotations

import torch

from layerwise.models import Network
from layerwise.rules.base import Signal, TrainGroup
from layerwise.rules.direct import (  # noqa: F401  (re-exported: dfa's helpers before drtp shared them)
    ConvGeometry,
    DirectProjection,
    PreActivation,
    conv_geometry,
    conv_shared_feedback,
    next_layer,
    pre_activation_tap,
)
from layerwise.rules.options.dfa import FEEDBACK_SHAPES, INJECTIONS, DfaFeedbackOptions, DfaOptions, check_shape  # noqa: F401  (re-exported; defined in rules/options)


class DirectFeedbackAlignment(DirectProjection):
    name = "dfa"
    Options = DfaOptions
    projected = "e"

    def __init__(self, cfg):
        super().__init__(cfg)
        self._targets: dict[int, torch.Tensor] = {}
        self._error: torch.Tensor | None = None

    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        self._taps = self.find_taps(net)
        self._targets, self._error = {}, None

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> None:
        self._targets[i] = self.injection_point(i, h)
        return None  # trained in after_backward, once the head has produced e

    def head_signal(self, logits: torch.Tensor, y: torch.Tensor) -> Signal:
        signal = super().head_signal(logits, y)
        # A gradient of the loss itself, not a hook on the logits: under AMP the backward of the head's loss
        # is scaled, and a hook would see e times the loss scale (applied again to the blocks' objectives).
        self._error = torch.autograd.grad(signal.loss, logits, retain_graph=True)[0].detach()
        return signal

    def after_backward(self, i: int) -> dict[str, Signal]:
        if i < self.n_blocks or self._error is None:
            return {}
        signals = {f"block{j}/train_": Signal(objective=(target * self.project(j, self._error, target)).sum())
                   for j, target in self._targets.items()}
        self._targets, self._error = {}, None
        return signals

    def train_groups(self, net: Network) -> list[TrainGroup]:
        n = len(net.blocks)
        return [TrainGroup(f"block{i}", [block], step_after=n) for i, block in enumerate(net.blocks)] + [
            TrainGroup("head", [net.head], step_after=n)]

    def describe(self) -> str:
        return f"dfa ({self.describe_feedback()})"

"""Feedback alignment (Lillicrap et al. 2016, "Random synaptic feedback weights support error
backpropagation for deep learning").

Training is backprop end to end, except that every Linear/Conv2d layer sends the error to its input through a
fixed random matrix B instead of Wᵀ; its own weight gradient (δ hᵀ) is the true one. The forward pass is
unchanged. Layers are converted in place in `setup` (see `layerwise.rules.feedback`); B is drawn like W's own init
(`feedback.init`, times `feedback.scale`), stored as a buffer, and so saved in checkpoints.
`exact_last` keeps the output layer's backward exact, so the penultimate layer gets the true error.
"""
from __future__ import annotations

from collections import Counter

from torch import nn

from layerwise.models import Network
from layerwise.rules.base import LearningRule
from layerwise.rules.feedback import (
    FixedFeedback,
    check_scale,
    convert_layers,
    last_linear,
    random_feedback,
)
from layerwise.rules.options.fa import FaOptions  # noqa: F401  (re-exported; defined in rules/options)


class FeedbackAlignment(LearningRule):
    name = "fa"
    Options = FaOptions
    local = False

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.init = str(self.cfg.feedback.init)
        self.scale = self.checked_scale(self.cfg.feedback.scale)
        self.exact_last = bool(self.cfg.exact_last)
        self.converted: Counter = Counter()

    def checked_scale(self, value):
        """method.feedback.scale: a number > 0, or null (= 1)."""
        return check_scale(value, "fa")

    def make_feedback(self, layer: nn.Module) -> nn.Module:
        scale = 1.0 if self.scale is None else float(self.scale)
        return FixedFeedback(random_feedback(layer.weight.shape, self.init, scale))

    def setup(self, net: Network, example, num_classes: int) -> None:
        super().setup(net, example, num_classes)
        keep = (last_linear(net.head),) if self.exact_last else ()
        # Converted once per run; said once, in the run's start line (describe), not here as well.
        self.converted = convert_layers(net, self.make_feedback, keep)

    def _conversion(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.converted.items()))
        exact = "; output layer kept exact" if self.exact_last else ""
        return f"converted {sum(self.converted.values())} layers ({kinds or 'none'}){exact}"

    def describe(self) -> str:
        return f"{self.name} ({self._conversion()})"

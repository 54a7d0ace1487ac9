"""Backprop whose loss is cross-entropy with label smoothing (Szegedy et al., 2016): a rule in an afternoon."""
from dataclasses import dataclass

import torch.nn.functional as F

from layerwise.options import in_range
from layerwise.rules.base import LearningRule, RuleOptions, Signal


@dataclass
class SmoothBackpropOptions(RuleOptions):
    smoothing: float = 0.1  # the mass spread over all classes: the target is (1 - s) * one_hot + s / classes

    def __post_init__(self) -> None:
        in_range(self, "smoothing", 0, 1, high_open=True, example=0.1)


class SmoothBackprop(LearningRule):
    name = "smooth_bp"
    Options = SmoothBackpropOptions

    def head_signal(self, logits, y):
        return Signal(loss=F.cross_entropy(logits, y, label_smoothing=self.cfg.smoothing), logits=logits)

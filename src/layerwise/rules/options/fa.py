"""method=fa's options: the feedback matrices and an exact output layer."""
from __future__ import annotations

from dataclasses import dataclass, field

from layerwise.rules.options.base import RuleOptions
from layerwise.rules.options.feedback import FeedbackOptions, check_scale


@dataclass
class FaOptions(RuleOptions):
    feedback: FeedbackOptions = field(default_factory=FeedbackOptions)
    exact_last: bool = False   # keep the output layer's backward exact (true gradient to the penultimate layer)

    def __post_init__(self) -> None:
        check_scale(self.feedback.scale, "fa")


#: method=fa's options (layerwise.rules.options_class finds them here without importing the rule).
Options = FaOptions

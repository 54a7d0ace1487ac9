"""method=drtp's options: dfa's injection point and feedback matrices (the same B_i, projecting y* instead of e)."""
from __future__ import annotations

from dataclasses import dataclass, field

from layerwise.options import one_of
from layerwise.rules.options.base import RuleOptions
from layerwise.rules.options.dfa import INJECTIONS, DfaFeedbackOptions, check_shape
from layerwise.rules.options.feedback import check_scale


@dataclass
class DrtpOptions(RuleOptions):
    # post: B_i y* is the gradient of the block output (paper; f' applies) | pre: the gradient of the last
    # activation's input, skipping f', so model.activation=sign|step can learn
    injection: str = "post"
    # as method=dfa's (dense | conv_shared, init, scale 0.3)
    feedback: DfaFeedbackOptions = field(default_factory=DfaFeedbackOptions)

    def __post_init__(self) -> None:
        one_of(self, "injection", INJECTIONS)
        check_scale(self.feedback.scale, "drtp")
        check_shape(self.feedback.shape, self.injection)

    def zero_derivative_activations(self) -> str:
        return "train" if self.injection == "pre" else "warn"


#: method=drtp's options (layerwise.rules.options_class finds them here without importing the rule).
Options = DrtpOptions

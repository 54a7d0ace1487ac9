"""method=sign_symmetry's options: the variant and how B is scaled."""
from __future__ import annotations

from dataclasses import dataclass, field

from layerwise.options import one_of
from layerwise.rules.options.fa import FaOptions
from layerwise.rules.options.feedback import FeedbackOptions, check_scale

VARIANTS = ("usf", "brsf", "frsf")


@dataclass
class SignSymmetryOptions(FaOptions):
    variant: str = "usf"   # usf: sign(W)*scale | brsf: |M| redrawn every batch | frsf: |M| drawn once
    # usf: null | rms = the RMS of the current W (||B|| = ||W||) | init_std = the std of the layer's init scheme
    # (feedback.init), fixed (biotorch's uSF) | a number; brsf/frsf: a multiplier (null = 1). M is drawn with
    # feedback.init.
    feedback: FeedbackOptions = field(default_factory=lambda: FeedbackOptions(scale=None))

    def __post_init__(self) -> None:
        one_of(self, "variant", VARIANTS)
        check_scale(self.feedback.scale, "sign_symmetry", self.variant)


#: method=sign_symmetry's options (layerwise.rules.options_class finds them here without importing the rule).
Options = SignSymmetryOptions

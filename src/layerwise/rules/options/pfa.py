"""method=pfa's options: the size of the extra feedback population, and R's initial draw."""
from __future__ import annotations

from dataclasses import dataclass

from layerwise.options import in_range
from layerwise.rules.options.fa import FaOptions
from layerwise.rules.options.feedback import check_scale


@dataclass
class PfaOptions(FaOptions):
    """Each converted layer's feedback is B·R through `expand_ratio` x (its output size) extra neurons: B fixed
    and random (variance 1/mid, so E[B Bᵀ] = I), R drawn by `feedback.init` x `feedback.scale` and learned."""

    expand_ratio: int = 4   # the extra population's size / the layer's output size (channels for a conv)

    def __post_init__(self) -> None:
        check_scale(self.feedback.scale, "pfa")
        in_range(self, "expand_ratio", 1, example=4)


#: method=pfa's options (layerwise.rules.options_class finds them here without importing the rule).
Options = PfaOptions

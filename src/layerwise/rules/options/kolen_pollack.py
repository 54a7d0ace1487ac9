"""method=kolen_pollack's options: B's initial draw (it learns from there) and an exact output layer."""
from __future__ import annotations

from dataclasses import dataclass

from layerwise.rules.options.fa import FaOptions
from layerwise.rules.options.feedback import check_scale


@dataclass
class KolenPollackOptions(FaOptions):
    """B starts as fa's random draw (`feedback.init`, `feedback.scale`) and is then trained by the optimizer
    with W's gradient; its decay is `optimizer.weight_decay` (0 leaves B - W where it started)."""

    def __post_init__(self) -> None:
        check_scale(self.feedback.scale, "kolen_pollack")


#: method=kolen_pollack's options (layerwise.rules.options_class finds them here without importing the rule).
Options = KolenPollackOptions

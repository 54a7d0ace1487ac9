"""method=pepita's options: the input projection's scale and which pass's error trains the output layer."""
from __future__ import annotations

from dataclasses import dataclass

from layerwise.options import in_range, one_of
from layerwise.rules.options.base import RuleOptions

OUTPUT_ERRORS = ("first", "modulated")


@dataclass
class PepitaOptions(RuleOptions):
    # F = U(-1, 1) * sqrt(6 / d_in) * input_scale, d_in the input's size (the paper's 0.05 times He-uniform)
    input_scale: float = 0.05
    # the output layer's error: first (the paper's Algorithm 1: e of the standard pass) | modulated (the authors'
    # notebook: the modulated pass's error); both times the modulated pass's last hidden activity
    output_error: str = "first"

    def __post_init__(self) -> None:
        in_range(self, "input_scale", 0, low_open=True, example=0.05)
        one_of(self, "output_error", OUTPUT_ERRORS)


#: method=pepita's options (layerwise.rules.options_class finds them here without importing the rule).
Options = PepitaOptions

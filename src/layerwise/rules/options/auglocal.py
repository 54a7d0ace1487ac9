"""method=auglocal's options: the depth of each block's augmented aux network and its pyramidal schedule."""
from __future__ import annotations

from dataclasses import dataclass

from layerwise.errors import ConfigError
from layerwise.options import in_range
from layerwise.rules.options.base import RuleOptions


@dataclass
class AugLocalOptions(RuleOptions):
    """aux_depth: layers sampled into the first block's aux network (the paper's d; its code's --aux_net_depth).
    pyramid: the depth falls linearly over the aux blocks, from aux_depth to
    aux_depth·(1 - pyramid_coeff) + min_depth·pyramid_coeff (the code's formula, rounded half to even, at least
    min_depth); pyramid=false keeps aux_depth everywhere. merge_tail: the last aux_depth blocks join the network's
    last block, trained by the head (the authors' code: their aux networks would hold the whole rest of the net)."""

    aux_depth: int = 2
    min_depth: int = 1
    pyramid: bool = True
    pyramid_coeff: float = 0.5   # the code's --pyramid_coeff: 0 = no decay, 1 = down to min_depth at the last aux
    merge_tail: bool = False

    def __post_init__(self) -> None:
        in_range(self, "aux_depth", 1, example=2)
        in_range(self, "min_depth", 1, example=1)
        in_range(self, "pyramid_coeff", 0, 1, example=0.5)
        if self.min_depth > self.aux_depth:
            raise ConfigError(f"method.min_depth={self.min_depth} exceeds method.aux_depth={self.aux_depth}; the "
                              f"pyramid falls from aux_depth to min_depth: set method.min_depth<={self.aux_depth}")


#: method=auglocal's options (layerwise.rules.options_class finds them here without importing the rule).
Options = AugLocalOptions

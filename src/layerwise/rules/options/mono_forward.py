"""method=mono_forward's options: how a conv block's map reaches its projection M_i."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from layerwise.options import in_range
from layerwise.rules.options.base import RuleOptions


@dataclass
class MonoForwardOptions(RuleOptions):
    # conv blocks: average-pool the map to pool_size x pool_size before flattening it into M_i; null: flatten the
    # whole map (the goodness a_i M_i^T of the paper, on the layer's full activation vector)
    pool_size: Optional[int] = None
    bias: bool = False   # M_i with a bias (the paper's G_i = a_i M_i^T has none)

    def __post_init__(self) -> None:
        in_range(self, "pool_size", 1, example=2)


#: method=mono_forward's options (layerwise.rules.options_class finds them here without importing the rule).
Options = MonoForwardOptions

"""method=predsim's options: which local losses, their weight, the decoder's input size."""
from __future__ import annotations

from dataclasses import dataclass

from layerwise.options import in_range, one_of
from layerwise.rules.options.base import RuleOptions

LOSSES = ("pred", "sim", "predsim")


@dataclass
class PredSimOptions(RuleOptions):
    loss: str = "predsim"         # pred (linear classifier CE) | sim (similarity matching MSE) | predsim (both)
    beta: float = 0.99            # predsim only: weight of the sim loss; pred gets 1 - beta (paper: 0.99)
    dim_in_decoder: int = 2048    # pred: average-pool the block output until at most this many features remain
    # losses read a conv layer's map before its max-pool (paper: the pool is a layer of its own); the block
    # still passes the pooled map on. false: losses on the pooled output
    loss_before_pool: bool = True
    zero_init_head: bool = False  # the network head's output Linear starts at zero (the paper's code)

    def __post_init__(self) -> None:
        one_of(self, "loss", LOSSES)
        in_range(self, "beta", 0, 1, example=0.99, what="the weight of the sim loss")
        in_range(self, "dim_in_decoder", 1, example=2048)


#: method=predsim's options (layerwise.rules.options_class finds them here without importing the rule).
Options = PredSimOptions

"""method=forward_gradient's options: the estimator, the loss it estimates, the number of tangents, the aux heads."""
from __future__ import annotations

from dataclasses import dataclass, field

from layerwise.errors import ConfigError
from layerwise.options import in_range, one_of
from layerwise.rules.options.base import RuleOptions
from layerwise.rules.options.dgl import AuxOptions

#: weight: Baydin et al. 2022 (a tangent on the parameters) | activity: Ren et al. 2023 (a tangent on each block's
#: output, the guess backpropagated through that block only) | guess: Fournier et al. 2023 (the tangent is the
#: gradient of a local aux loss; the global loss's directional derivative along it scales it).
ESTIMATORS = ("weight", "activity", "guess")
#: local: each block's aux head's cross-entropy (the last block's is the network head's) | global: the head's.
LOSSES = ("local", "global")


@dataclass
class ForwardGradientOptions(RuleOptions):
    estimator: str = "activity"
    # the loss whose gradient weight/activity estimate; guess always projects the global loss onto a local guess
    loss: str = "local"
    tangents: int = 1      # k: the update is the mean of k estimates, each from its own random tangent
    aux: AuxOptions = field(default_factory=AuxOptions)  # the local losses' heads (loss=local, and guess)

    def __post_init__(self) -> None:
        one_of(self, "estimator", ESTIMATORS)
        one_of(self, "loss", LOSSES)
        in_range(self, "tangents", 1, example=1)
        if self.estimator == "guess" and self.tangents != 1:
            raise ConfigError(f"method.tangents={self.tangents} does nothing for method.estimator=guess (its guess "
                              f"is the local gradient, not random); set method.tangents=1")


#: method=forward_gradient's options (layerwise.rules.options_class finds them here without importing the rule).
Options = ForwardGradientOptions

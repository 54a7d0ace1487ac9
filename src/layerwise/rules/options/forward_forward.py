"""method=forward_forward's options: threshold, scoring, loss form, normalisation, peer normalisation, and for
convolutional blocks the goodness grouping, the label embedding, the prediction and layer collaboration."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from layerwise.errors import ConfigError
from layerwise.options import in_range, one_of
from layerwise.rules.options.base import RuleOptions

LOSS_REDUCTIONS = ("mean", "sum_halves")
NORMALIZATIONS = ("rms", "unit")
GOODNESS = ("sum", "location", "channel")
LABELS = ("auto", "pixels", "pattern")
PREDICTIONS = ("goodness", "head")


@dataclass
class ForwardForwardOptions(RuleOptions):
    """The defaults are the reference implementation's (loeweX/Forward-Forward); the form this project used before:
    method.loss_reduction=sum_halves method.normalize=unit method.threshold=5 method.peer_normalization=0.
    Train it with Adam, e.g. optimizer=adam optimizer.lr=0.005 optimizer.scheduler.name=none (digits, 3x256 MLP,
    8 epochs: 88.3%; the former form wants lr 0.02: 86.1%; the default SGD stays near chance)."""

    threshold: Any = "units"    # theta in p(positive) = sigmoid(goodness - theta): a number, or units (the width D)
    score_from: int = 0         # prediction sums goodness over blocks >= this (Hinton skipped the first: 1)
    # mean: BCE averaged over the 2N positive and negative rows (reference) | sum_halves: mean over positives +
    # mean over negatives (2x mean, doubling the step)
    loss_reduction: str = "mean"
    normalize: str = "rms"      # a block's input divided by its RMS, length sqrt(D) (reference) | unit: length 1
    peer_normalization: float = 0.03   # weight of the peer-normalisation loss (running mean activities equal); 0 off
    peer_momentum: float = 0.9          # momentum of those running means
    # sum: one goodness per block, sum of h^2 over all its units (Hinton 2022) | location: one per spatial
    # location, summed over channels (SCFF, Chen et al. 2025) | channel: one per channel, summed over locations
    goodness: str = "sum"
    # pixels: one-hot over the first K input values (Hinton) | pattern: a class grating over the whole image
    # (spatially-extended labels, Scodellaro et al. 2025) | auto: pixels for MLPs, pattern for conv blocks
    label: str = "auto"
    predict: str = "goodness"   # goodness: the label with the most goodness | head: a linear classifier on features
    collaborative: bool = False  # each block's p(positive) adds the other blocks' detached goodness (Lorberbom 2024)

    def __post_init__(self) -> None:
        if self.threshold != "units" and (isinstance(self.threshold, bool)
                                          or not isinstance(self.threshold, (int, float))):
            raise ConfigError(f"method.threshold={self.threshold!r} must be a number or units (the block's width), "
                              "e.g. method.threshold=units")
        in_range(self, "score_from", 0, example=1)
        one_of(self, "loss_reduction", LOSS_REDUCTIONS)
        one_of(self, "normalize", NORMALIZATIONS)
        in_range(self, "peer_normalization", 0, example=0.03, what="the reference uses 0.03")
        in_range(self, "peer_momentum", 0, 1, high_open=True, example=0.9)
        one_of(self, "goodness", GOODNESS)
        one_of(self, "label", LABELS)
        one_of(self, "predict", PREDICTIONS)
        if not isinstance(self.collaborative, bool):
            raise ConfigError(f"method.collaborative={self.collaborative!r} must be true or false")


#: method=forward_forward's options (layerwise.rules.options_class finds them here without importing the rule).
Options = ForwardForwardOptions

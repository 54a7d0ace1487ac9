"""A network of the lab's: `model._target_` names a function (cfg, InputSpec) -> Network."""
from dataclasses import dataclass

from torch import nn

from layerwise.models import ModelOptions, Network


@dataclass
class TwoLayerOptions(ModelOptions):
    hidden: int = 64


def two_layer(cfg, spec) -> Network:
    """Two blocks (Flatten + Linear + ReLU, then Linear + ReLU) and a linear head."""
    first = nn.Sequential(nn.Flatten(), nn.Linear(spec.channels * spec.size * spec.size, cfg.hidden), nn.ReLU())
    second = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU())
    return Network([first, second], nn.Linear(cfg.hidden, spec.num_classes))


two_layer.Options = TwoLayerOptions  # the keys model=two_layer may have, checked before any data is loaded

"""method=deep_supervision's options: the companion heads (method.aux, as DGL's), their weight and its decay,
and the contrastive variant's views and temperature."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from layerwise.errors import ConfigError
from layerwise.options import in_range, one_of
from layerwise.rules.options.base import RuleOptions
from layerwise.rules.options.dgl import AuxOptions

VARIANTS = ("standard", "contrastive")
DECAYS = ("none", "linear")
#: alpha when left null: Lee et al. weigh companions and output alike before the decay; Zhang et al.'s code
#: weighs each stage's contrastive loss by 0.1.
DEFAULT_ALPHA = {"standard": 1.0, "contrastive": 0.1}


@dataclass
class DeepSupervisionOptions(RuleOptions):
    # standard: a classifier (method.aux) after every block but the last, cross-entropy (Lee et al. 2015);
    # contrastive: a projection head (method.aux, proj_dim outputs) after every block, SupCon on two views
    # (Zhang et al. 2022)
    variant: str = "standard"
    aux: AuxOptions = field(default_factory=AuxOptions)
    alpha: Optional[float] = None    # weight of every companion loss; null: 1.0 (standard), 0.1 (contrastive)
    decay: str = "none"              # none | linear: alpha_t = alpha * (1 - epoch / decay_epochs) (Lee et al.)
    decay_epochs: Optional[int] = None  # N of the linear decay; null: trainer.max_epochs
    stop_epoch: Optional[int] = None    # companion losses off from this (0-based) epoch on; null: never
    gamma: float = 0.0               # companion hinge [aux - gamma]_+ (Lee et al.'s threshold); 0 = plain loss
    # contrastive only
    proj_dim: int = 128              # projection head output (the embedding SupCon compares), L2-normalised
    temperature: float = 0.07        # SupCon's tau (Zhang et al.'s code: 0.07)
    supervised: bool = True          # SupCon (labels define positives); false: SimCLR (only the other view)
    crop_pad: int = 4                # random crop: pad by this many pixels, crop back (0 = none)
    flip: bool = True                # random horizontal flip of each view

    def __post_init__(self) -> None:
        one_of(self, "variant", VARIANTS)
        one_of(self, "decay", DECAYS)
        in_range(self, "alpha", 0, example=1.0)
        in_range(self, "decay_epochs", 1, example=100)
        in_range(self, "stop_epoch", 0, example=50)
        in_range(self, "gamma", 0, example=0.0)
        in_range(self, "proj_dim", 1, example=128)
        in_range(self, "temperature", 0, low_open=True, example=0.07)
        in_range(self, "crop_pad", 0, example=4)
        if self.decay == "none" and self.decay_epochs is not None:
            raise ConfigError(f"method.decay_epochs={self.decay_epochs} only applies to method.decay=linear; "
                              "set method.decay=linear or drop method.decay_epochs")



#: method=deep_supervision's options (layerwise.rules.options_class finds them here without importing the rule).
Options = DeepSupervisionOptions

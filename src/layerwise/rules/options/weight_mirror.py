"""method=weight_mirror's options: the mirror phase (noise, steps, B's learning rate and decay)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from layerwise.options import in_range
from layerwise.rules.options.fa import FaOptions
from layerwise.rules.options.feedback import check_scale


@dataclass
class MirrorOptions:
    """method.mirror: before every training batch, `steps` mirror steps; in each, every feedback layer's input
    gets zero-mean noise ξ ~ N(0, noise_std²) and B moves by lr·⟨y ξᵀ⟩ - decay·B with y = Wξ, so that
    B → (lr·noise_std²/decay)·W (W's own scale with the defaults)."""

    PATH: ClassVar[str] = "method.mirror"
    steps: int = 1            # mirror steps per training batch (0: B stays as drawn, i.e. fa)
    noise_std: float = 1.0    # σ of the injected noise
    lr: float = 0.1           # η_B, B's learning rate in the mirror phase
    decay: float = 0.1        # λ, B's decay per mirror step; the fixed point is B = (lr·σ²/decay)·W
    batch_size: int = 64      # noise samples per mirror step (more: a less noisy ⟨y ξᵀ⟩)

    def __post_init__(self) -> None:
        in_range(self, "steps", 0, example=1)
        in_range(self, "noise_std", 0, low_open=True, example=1.0)
        in_range(self, "lr", 0, low_open=True, example=0.1)
        in_range(self, "decay", 0, 1, high_open=True, example=0.1, what="decay >= 1 flips B's sign every step")
        in_range(self, "batch_size", 1, example=64)


@dataclass
class WeightMirrorOptions(FaOptions):
    mirror: MirrorOptions = field(default_factory=MirrorOptions)

    def __post_init__(self) -> None:
        check_scale(self.feedback.scale, "weight_mirror")


#: method=weight_mirror's options (layerwise.rules.options_class finds them here without importing the rule).
Options = WeightMirrorOptions

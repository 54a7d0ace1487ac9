"""Sign-symmetric feedback (Liao, Leibo & Poggio 2016; Xiao et al. 2018): feedback alignment whose B shares
W's signs but not its magnitudes. Variants (Xiao et al.'s names):

- `usf`: B = sign(W)·scale, recomputed from the current W every step (scale null: RMS(W), so ‖B‖ = ‖W‖);
- `brsf`: B = |M| ⊙ sign(W), with M redrawn every batch;
- `frsf`: B = |M| ⊙ sign(W), with M drawn once.

M is drawn like W's init (`feedback.init`); `feedback.scale` (null = 1) multiplies brsf/frsf feedback.
"""
from __future__ import annotations

from torch import nn

from layerwise.errors import ConfigError
from layerwise.feedback import SignFeedback, SignMagnitudeFeedback
from layerwise.methods.fa import FeedbackAlignment

VARIANTS = ("usf", "brsf", "frsf")


class SignSymmetry(FeedbackAlignment):
    name = "sign_symmetry"

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.variant = str((cfg or {}).get("variant", "usf"))
        if self.variant not in VARIANTS:
            raise ConfigError(f"method.variant={self.variant!r} is not known; choose one of {', '.join(VARIANTS)}")

    def make_feedback(self, layer: nn.Module) -> nn.Module:
        if self.variant == "usf":
            return SignFeedback(None if self.scale is None else float(self.scale))
        return SignMagnitudeFeedback(layer.weight.shape, self.init, 1.0 if self.scale is None else float(self.scale))

    def begin_batch(self, net, x, y) -> None:
        if self.variant == "brsf":
            for module in net.modules():
                if isinstance(module, SignMagnitudeFeedback):
                    module.redraw()

    def describe(self) -> str:
        return f"{self.name} {self.variant} ({self._conversion()})"

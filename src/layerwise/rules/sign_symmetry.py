"""Sign-symmetric feedback (Liao, Leibo & Poggio 2016; Xiao et al. 2018): feedback alignment whose B shares
W's signs but not its magnitudes. Variants (Xiao et al.'s names):

- `usf`: B = sign(W)·scale, recomputed from the current W every step. `feedback.scale`: null or `rms` = the RMS
  of the current W (so ‖B‖ = ‖W‖, this project's default); `init_std` = the standard deviation of the layer's
  init scheme (`feedback.init`), fixed at conversion, as the biotorch benchmark runs uSF; or a number;
- `brsf`: B = |M| ⊙ sign(W), with M redrawn every batch;
- `frsf`: B = |M| ⊙ sign(W), with M drawn once.

M is drawn like W's init (`feedback.init`); `feedback.scale` (null = 1) multiplies brsf/frsf feedback.
"""
from __future__ import annotations

from torch import nn

from layerwise.rules.fa import FeedbackAlignment
from layerwise.rules.feedback import SignFeedback, SignMagnitudeFeedback, check_scale, init_std
from layerwise.rules.options.sign_symmetry import VARIANTS, SignSymmetryOptions  # noqa: F401  (re-exported; defined in rules/options)


class SignSymmetry(FeedbackAlignment):
    name = "sign_symmetry"
    Options = SignSymmetryOptions

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.variant = str(self.cfg.variant)

    def checked_scale(self, value):
        return check_scale(value, "sign_symmetry", str(self.cfg.variant))

    def make_feedback(self, layer: nn.Module) -> nn.Module:
        if self.variant == "usf":
            if self.scale == "init_std":
                return SignFeedback(init_std(layer.weight.shape, self.init))
            return SignFeedback(None if self.scale in (None, "rms") else float(self.scale))
        return SignMagnitudeFeedback(layer.weight.shape, self.init, 1.0 if self.scale is None else float(self.scale))

    def begin_batch(self, net, x, y) -> None:
        if self.variant == "brsf":
            for module in net.modules():
                if isinstance(module, SignMagnitudeFeedback):
                    module.redraw()

    def describe(self) -> str:
        scale = f", scale {self.scale}" if self.variant == "usf" and isinstance(self.scale, str) else ""
        return f"{self.name} {self.variant}{scale} ({self._conversion()})"

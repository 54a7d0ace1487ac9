"""method=dfa's options: the injection point and the feedback matrices' shape."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from layerwise.errors import ConfigError
from layerwise.options import one_of
from layerwise.rules.options.base import RuleOptions
from layerwise.rules.options.feedback import FeedbackOptions, check_scale

INJECTIONS = ("post", "pre")
FEEDBACK_SHAPES = ("dense", "conv_shared")


def check_shape(shape: str, injection: str) -> str:
    if shape not in FEEDBACK_SHAPES:
        raise ConfigError(f"method.feedback.shape={shape!r} is not known; choose one of {', '.join(FEEDBACK_SHAPES)}")
    if shape == "conv_shared" and injection != "post":
        raise ConfigError("method.feedback.shape=conv_shared feeds the next conv's input, i.e. the block output; "
                          "use method.injection=post (or method.feedback.shape=dense)")
    return shape


@dataclass
class DfaFeedbackOptions(FeedbackOptions):
    # dense: one row of B_i per element of the block output (classes x size) | conv_shared (biotorch): where the
    # next layer is a conv, B_i is a (classes x C x k x k) kernel with that conv's geometry, applied to e broadcast
    # over its output map (the same weights at every position); dense where the next layer is a Linear
    shape: str = "dense"
    # multiplies B_i, i.e. the blocks' step size (the head's is optimizer.lr). 1.0 makes the default relu MLP (no
    # batch norm) diverge at lr 0.05 on digits: B ignores the layers above, so nothing stops hidden activations
    # from growing. 0.3 is stable there and as good as 1.0 on BasicCNN (batch norm).
    scale: Any = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "shape", FEEDBACK_SHAPES)


@dataclass
class DfaOptions(RuleOptions):
    # post: B_i e (drtp: B_i y*) is the gradient of the block output (paper; f' applies) | pre: the gradient of
    # the last activation's input, skipping f', so model.activation=sign|step can learn
    injection: str = "post"
    feedback: DfaFeedbackOptions = field(default_factory=DfaFeedbackOptions)
    RULE: ClassVar[str] = "dfa"  # the method= named in check_scale's refusal (drtp reuses these options)

    def __post_init__(self) -> None:
        one_of(self, "injection", INJECTIONS)
        check_scale(self.feedback.scale, self.RULE)
        check_shape(self.feedback.shape, self.injection)

    def zero_derivative_activations(self) -> str:
        # pre skips f', so sign|step train; post is the ablation that shows why the injection point matters
        return "train" if self.injection == "pre" else "warn"


#: method=dfa's options (layerwise.rules.options_class finds them here without importing the rule).
Options = DfaOptions

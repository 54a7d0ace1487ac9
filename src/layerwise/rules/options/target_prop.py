"""method=target_prop's options: the variant (dtp | ddtp | ldrl), the target step, the noise and the feedback."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from layerwise.errors import ConfigError
from layerwise.options import in_range, is_number, one_of
from layerwise.rules.options.base import RuleOptions

#: dtp: Lee et al. 2015 | ddtp: Meulemans et al. 2020's DDTP-linear | ldrl: Ernoult et al. 2022's L-DRL.
VARIANTS = ("dtp", "ddtp", "ldrl")
#: auto: a transposed conv between conv maps whose sides are in an integer ratio, else dense | conv | dense.
FEEDBACK_TYPES = ("auto", "conv", "dense")
#: block: the last activation of the block whose output the feedback predicts | none: linear | auto: block for dtp
#: (Lee et al.'s g has f's form), none for ldrl (measured: docs/rules/target_prop.md).
FEEDBACK_ACTIVATIONS = ("auto", "block", "none")
#: feedback.lr_scale=null, by variant: measured on digits (docs/rules/target_prop.md). The losses' scales differ:
#: L-DRL grows with σ², the DRL is divided by σ², Lee et al.'s reconstruction is neither.
AUTO_LR_SCALE = {"dtp": 0.05, "ddtp": 1.0, "ldrl": 10.0}
#: feedback.activation=auto, by variant (ddtp's direct feedback is linear whatever it says).
AUTO_ACTIVATION = {"dtp": "block", "ddtp": "none", "ldrl": "none"}


def positive_or_list(obj: Any, name: str, example: str) -> None:
    """A number > 0, or a list of them (one per feedback module; its length is checked once the blocks exist)."""
    value = getattr(obj, name)
    path = f"{obj.PATH}.{name}"
    values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig" else [value]
    if not values or not all(is_number(v) and v > 0 for v in values):
        raise ConfigError(f"{path}={value!r} must be a number > 0 or a list of them (one per feedback module), "
                          f"e.g. {path}={example}")


@dataclass
class TargetPropFeedbackOptions:
    PATH: ClassVar[str] = "method.feedback"
    # auto: transposed conv (stride = the side ratio) between conv maps, dense Linear otherwise | conv (refused
    # where the shapes do not allow it) | dense. ddtp's direct feedback is always dense (DDTP-linear).
    type: str = "auto"
    # block: the activation ending the block the feedback predicts | none (linear) | auto: block for dtp, none
    # for ldrl (ddtp: always linear)
    activation: str = "auto"
    # feedback lr = lr_scale x optimizer.lr: a number, or a list with one per feedback module (bottom first);
    # null: by variant, dtp 0.05, ddtp 1, ldrl 10 (measured on digits; the losses' scales differ)
    lr_scale: Any = None
    samples: int = 1           # noise samples averaged in each feedback loss (one step per batch either way)

    def __post_init__(self) -> None:
        one_of(self, "type", FEEDBACK_TYPES)
        one_of(self, "activation", FEEDBACK_ACTIVATIONS)
        if self.lr_scale is not None:
            positive_or_list(self, "lr_scale", "0.5")
        in_range(self, "samples", 1, example=1)


@dataclass
class TargetPropOptions(RuleOptions):
    variant: str = "dtp"         # dtp (Lee et al. 2015) | ddtp (DDTP-linear, Meulemans et al. 2020) | ldrl (Ernoult)
    target_step: float = 0.1     # the top target h - target_step * dl/dh (per-sample loss); Ernoult's beta
    # std of the noise in the feedback losses: a number, or a list with one per feedback module (bottom first)
    noise: Any = 0.1
    feedback: TargetPropFeedbackOptions = field(default_factory=TargetPropFeedbackOptions)

    def __post_init__(self) -> None:
        one_of(self, "variant", VARIANTS)
        in_range(self, "target_step", 0, low_open=True, example=0.1)
        positive_or_list(self, "noise", "0.1")
        if self.variant == "ddtp" and self.feedback.type == "conv":
            raise ConfigError("method.feedback.type=conv: ddtp's direct feedback (DDTP-linear) is a dense matrix "
                              "from the top block's output; use method.feedback.type=auto, or method.variant=dtp")
        if self.variant == "ddtp" and self.feedback.activation == "block":
            raise ConfigError("method.feedback.activation=block applies to dtp and ldrl; ddtp's direct feedback "
                              "is linear (DDTP-linear): use method.feedback.activation=auto")


#: method=target_prop's options (layerwise.rules.options_class finds them here without importing the rule).
Options = TargetPropOptions

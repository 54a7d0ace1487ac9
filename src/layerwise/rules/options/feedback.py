"""method.feedback of the FA family (fa, sign_symmetry, dfa): how B is drawn and scaled, and its checks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from layerwise.errors import ConfigError
from layerwise.options import one_of

INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "orthogonal")


#: Words method.feedback.scale takes besides a number: sign_symmetry usf's B = sign(W)·scale.
SCALE_WORDS = ("rms", "init_std")


def check_scale(value, rule: str, variant: str | None = None):
    """method.feedback.scale as a rule uses it: a number > 0, None (= 1, or for uSF = rms), or a word of uSF's.

    One ConfigError line, the same from the schema and from a rule built in code.
    """
    if isinstance(value, str) and value in SCALE_WORDS:
        if rule == "sign_symmetry" and variant in (None, "usf"):
            return value
        raise ConfigError(f"method.feedback.scale={value} is a scale of method=sign_symmetry method.variant=usf "
                          f"only; give a number > 0 here, e.g. method.feedback.scale=1.0")
    if value is None:
        if rule in ("dfa", "drtp"):  # fa/sign_symmetry read null as W's own scale; dfa/drtp have no W to read
            raise ConfigError(f"method.feedback.scale=null has no meaning for method={rule}; give a number > 0, "
                              "e.g. method.feedback.scale=0.3")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        words = " or rms | init_std (usf)" if rule == "sign_symmetry" else ""
        raise ConfigError(f"method.feedback.scale={value!r} must be a number > 0{words}, "
                          f"e.g. method.feedback.scale=1.0")
    return float(value)


@dataclass
class FeedbackOptions:
    """method.feedback of the FA family: how the fixed random B is drawn and scaled."""

    PATH: ClassVar[str] = "method.feedback"
    # default (the layer's own W init, U(±1/sqrt(fan_in))) | kaiming_uniform | kaiming_normal | xavier_uniform |
    # xavier_normal | orthogonal
    init: str = "default"
    scale: Any = 1.0   # B = scale * draw: a number > 0 | null; sign_symmetry usf also rms | init_std (per rule)

    def __post_init__(self) -> None:
        one_of(self, "init", INITS)


def check_init(init: str) -> str:
    if init not in INITS:
        raise ConfigError(f"method.feedback.init={init!r} is not known; choose one of {', '.join(INITS)}")
    return init

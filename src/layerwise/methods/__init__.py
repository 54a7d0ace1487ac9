"""Learning rules, one file each. `build_rule` maps `method.name` to its class."""
from __future__ import annotations

from layerwise.errors import ConfigError
from layerwise.methods.base import LearningRule, Signal, TrainGroup
from layerwise.methods.bp import Backprop
from layerwise.methods.dgl import DecoupledGreedy
from layerwise.methods.dni import SyntheticGradients
from layerwise.methods.dfa import DirectFeedbackAlignment
from layerwise.methods.forward_forward import ForwardForward
from layerwise.methods.ssl import SelfSupervised
from layerwise.methods.infopro import InfoPro
from layerwise.methods.predsim import LocalErrorSignals
from layerwise.methods.fa import FeedbackAlignment
from layerwise.methods.sign_symmetry import SignSymmetry

RULES: dict[str, type[LearningRule]] = {
    Backprop.name: Backprop,
    DecoupledGreedy.name: DecoupledGreedy,
    SyntheticGradients.name: SyntheticGradients,
    DirectFeedbackAlignment.name: DirectFeedbackAlignment,
    ForwardForward.name: ForwardForward,
    SelfSupervised.name: SelfSupervised,
    InfoPro.name: InfoPro,
    LocalErrorSignals.name: LocalErrorSignals,
    FeedbackAlignment.name: FeedbackAlignment,
    SignSymmetry.name: SignSymmetry,
}


def build_rule(cfg) -> LearningRule:
    """`method.rule` names the class when a preset (e.g. cdni, random_features) reuses another rule's code."""
    key = cfg.get("rule") or cfg.name
    if key not in RULES:
        raise ConfigError(f"method={key!r} is not known; available: {', '.join(sorted(RULES))}")
    return RULES[key](cfg)


__all__ = ["RULES", "LearningRule", "Signal", "TrainGroup", "build_rule"]

"""Learning rules, one file each. `build_rule` maps `method.name` to its class."""
from __future__ import annotations

from layerwise.errors import ConfigError
from layerwise.rules.base import LearningRule, Signal, TrainGroup
from layerwise.rules.bp import Backprop
from layerwise.rules.dgl import DecoupledGreedy
from layerwise.rules.dni import SyntheticGradients
from layerwise.rules.dfa import DirectFeedbackAlignment
from layerwise.rules.forward_forward import ForwardForward
from layerwise.rules.ssl import SelfSupervised
from layerwise.rules.infopro import InfoPro
from layerwise.rules.predsim import LocalErrorSignals
from layerwise.rules.fa import FeedbackAlignment
from layerwise.rules.sign_symmetry import SignSymmetry

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

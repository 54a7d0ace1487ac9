"""Learning rules, one file each. `build_rule` maps `method.name` to its class."""
from __future__ import annotations

from layerwise.errors import ConfigError
from layerwise.methods.base import LearningRule, Signal, TrainGroup
from layerwise.methods.bp import Backprop
from layerwise.methods.dgl import DecoupledGreedy

RULES: dict[str, type[LearningRule]] = {
    Backprop.name: Backprop,
    DecoupledGreedy.name: DecoupledGreedy,
}


def build_rule(cfg) -> LearningRule:
    if cfg.name not in RULES:
        raise ConfigError(f"method={cfg.name!r} is not known; available: {', '.join(sorted(RULES))}")
    return RULES[cfg.name](cfg)


__all__ = ["RULES", "LearningRule", "Signal", "TrainGroup", "build_rule"]

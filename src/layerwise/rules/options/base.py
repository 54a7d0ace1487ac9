"""The options every rule has (torch-free: the CLI checks a config before torch is imported)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from omegaconf import MISSING


@dataclass
class RuleOptions:
    """The options every rule has. A rule's own options subclass this, in rules/options/<name>.py (torch-free, so
    the CLI checks a config without importing torch; the rule's file imports them as its `Options`): their
    defaults are the config node `method=<name>` (conf/method/<name>.yaml only holds what a preset changes), their
    `__post_init__` checks run before any data is loaded and again when a rule is built from code."""

    PATH: ClassVar[str] = "method"
    name: str = MISSING
    rule: Optional[str] = None      # the rule whose code runs, when a preset reuses another's (cdni, random_features)
    _target_: Optional[str] = None  # a rule class outside layerwise, by import path (mylab.rules.MyRule)

    def zero_derivative_activations(self) -> str:
        """What the rule does with a zero-derivative activation (model.activation=sign|step), read by the config
        check without building the rule: "refuse" (the check rejects it: a rule that backpropagates through f'
        would train nothing), "train" (the rule's signal skips f') or "warn" (allowed, though the blocks cannot
        learn). The rule object answers the same (LearningRule.zero_derivative_activations)."""
        return "refuse"

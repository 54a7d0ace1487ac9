"""One batch of the generic block loop, free of Lightning: the LightningModule trains with it, and the
alignment diagnostic replays it on a copy to read the rule's gradients without stepping.

For each block: forward on the rule's view of the input, backward the rule's signal, backward any signal
that backward made computable, step the groups that are complete; then the same for the head.
"""
from __future__ import annotations

from typing import Callable

import torch

from layerwise.models import Network
from layerwise.rules.base import LearningRule, Signal

#: backward(signal, output, metric_prefix, stage): stage is the block index (n_blocks: the head), or None
#: for a signal from `after_backward`.
Backward = Callable[[Signal | None, torch.Tensor | None, str, int | None], None]


def run_batch(net: Network, rule: LearningRule, x: torch.Tensor, y: torch.Tensor, backward: Backward,
              step: Callable[[int], None]) -> None:
    n = len(net.blocks)

    def stage(i: int, signal: Signal | None, out: torch.Tensor, prefix: str) -> None:
        backward(signal, out, prefix, i)
        for late_prefix, late in rule.after_backward(i).items():
            backward(late, None, late_prefix, None)
        step(i)

    rule.begin_batch(net, x, y)
    h = x
    for i, block in enumerate(net.blocks):
        h = block(rule.block_input(i, h))
        stage(i, rule.block_signal(i, h, y), h, f"block{i}/train_")
    logits = net.head(rule.block_input(n, h))
    stage(n, rule.head_signal(logits, y), logits, "train/")


def backward_only(signal: Signal | None, out: torch.Tensor | None, prefix: str, stage: int | None) -> None:
    """A `Backward` that only accumulates gradients (no logging)."""
    objective = signal.surrogate(out) if signal is not None else None
    if objective is not None:
        objective.backward()

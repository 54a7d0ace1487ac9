"""The learning-rule interface the training loop talks to.

A rule answers, for one batch, how each block is trained:
- `block_input(i, x)`: what block i sees (detached for local rules, so no gradient crosses blocks);
  i == n_blocks is the head's input.
- `block_signal(i, h, y)`: the training signal for block i's output h, as a `Signal` (a local loss,
  a gradient to inject into h, or both), or None when block i learns from what flows back into it.
- `head_signal(logits, y)`: the signal at the network's output.
- `train_groups(net)`: which parameters share an optimizer, and after which block's signal that
  optimizer steps. A group stepping after block i is stepped before block i+1 runs.
Two optional hooks cover rules whose signal needs more than one block's view:
- `begin_batch(net, x, y)`: sees the whole batch first (e.g. a no-grad pass for the global error, or the
  input image a reconstruction loss targets).
- `after_backward(i)`: signals that became computable once stage i's backward ran (e.g. a synthesizer's
  regression target is the gradient that reached the next block's input); keyed by metric prefix.
`begin_epoch(epoch, max_epochs)` serves signals scheduled over training (deep supervision's decaying weight).
Rules never import Lightning: they work on plain tensors and modules.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.models import Network
from layerwise.options import checked_options
from layerwise.rules.options.base import RuleOptions


@dataclass
class Signal:
    """How to train one block on this batch.

    loss: a scalar reported as the block's loss, and backpropagated unless `objective` is given.
    grad: a gradient to inject into the block's output (e.g. synthetic or feedback gradients).
    logits: predictions of an auxiliary head, for the block's accuracy.
    objective: the scalar to backpropagate when it is not the reported loss (e.g. a loss whose output
        gradient is mixed with an injected one).
    metrics: extra scalars to log, as `<prefix><name>` (e.g. the parts of a weighted loss).
    """

    loss: torch.Tensor | None = None
    grad: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    objective: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    def surrogate(self, h: torch.Tensor | None) -> torch.Tensor | None:
        """One scalar whose backward applies both the objective and the injected gradient (None: nothing to do)."""
        total = self.objective if self.objective is not None else self.loss
        if self.grad is not None:
            injected = (h * self.grad.detach()).sum()
            total = injected if total is None else total + injected
        return total if total is not None and total.requires_grad else None


@dataclass
class TrainGroup:
    """Parameters trained by one optimizer, stepped right after the signal of block `step_after`.

    step_after == n_blocks means after the head's signal. lr_scale multiplies the optimizer's lr for this group
    (a regression like DNI's synthesizer needs a step size of its own).
    """

    name: str
    modules: list[nn.Module] = field(default_factory=list)
    step_after: int = 0
    lr_scale: float = 1.0

    def parameters(self):
        for module in self.modules:
            yield from (p for p in module.parameters() if p.requires_grad)


class LearningRule(nn.Module):
    """Base class: plain backprop semantics; subclasses override what differs."""

    name = "base"
    #: The dataclass of the rule's options (RuleOptions or a subclass, defined beside the rule).
    Options: ClassVar[type] = RuleOptions
    #: True when no gradient may cross block boundaries (inputs are detached).
    local = False
    #: True when the head trains on detached features too (every block has its own signal).
    detach_head = False
    #: Why trainer=pipeline cannot run this rule although it is local, in one line (None: it can, or the pipeline's
    #: own locality check decides); "{fix}" is replaced by the rules the pipeline does run.
    pipeline_refusal: str | None = None
    #: Zero-derivative activations (model.activation=sign|step) pass no gradient. "refuse": the config check
    #: rejects them, as every rule that backpropagates through f' would train nothing; "train": the rule's
    #: signal skips f' (DFA, pre-activation injection); "warn": allowed though the blocks cannot learn (DFA,
    #: post-activation: the ablation that shows why the injection point matters).
    zero_derivative_activations = "refuse"
    #: The factor every gradient a backward leaves in `.grad` carries this batch: the loss scale under
    #: trainer.precision=16-mixed, else 1. A rule that reads `.grad` as a value (DNI's synthesizer target)
    #: divides by it.
    grad_scale = 1.0

    def __init__(self, cfg=None):
        super().__init__()
        #: The rule's options: `cfg` on top of `Options`' defaults, checked.
        self.cfg = checked_options(self.Options, cfg, name=self.name)
        self.n_blocks = 0

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        """Build the rule's own modules (aux heads, ...) for this network; `example` is one input batch.

        Subclasses call this first.
        """
        self.n_blocks = len(net.blocks)

    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        """Called with the whole batch before block 0 runs."""

    def begin_epoch(self, epoch: int, max_epochs: int) -> None:
        """Called before each training epoch (0-based) and when training (re)starts, so a resumed run's rule knows
        the epoch it continues: for signals scheduled over training, e.g. deep supervision's decaying weight."""

    def block_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # Local rules cut the graph between blocks; unless `detach_head`, the head backpropagates into the
        # last block.
        if self.local and (0 < i < self.n_blocks or (i == self.n_blocks and self.detach_head)):
            return x.detach()
        return x

    def after_backward(self, i: int) -> dict[str, Signal]:
        """Signals made computable by stage i's backward (i == n_blocks: the head's), keyed by metric prefix."""
        return {}

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal | None:
        return None

    def head_signal(self, logits: torch.Tensor, y: torch.Tensor) -> Signal:
        return Signal(loss=F.cross_entropy(logits, y), logits=logits)

    def block_logits(self, i: int, h: torch.Tensor) -> torch.Tensor | None:
        """Early-exit predictions of block i at evaluation time, if the rule has an aux head there."""
        return None

    def evaluate(self, net: Network, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Test-time logits of the network, and of every block that has an early-exit head."""
        exits = {}
        for i, block in enumerate(net.blocks):
            x = block(x)
            logits = self.block_logits(i, x)
            if logits is not None:
                exits[i] = logits
        return net.head(x), exits

    def train_groups(self, net: Network) -> list[TrainGroup]:
        return [TrainGroup("all", [net, self], step_after=len(net.blocks))]

    def images(self, net: Network, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image grids (C, H, W in [0, 1]) worth looking at for test batch x, keyed by name; default none."""
        return {}

    def describe(self) -> str:
        return self.name


@contextmanager
def evaluating(net: nn.Module):
    """Eval mode without autograd for a probe pass; the module's previous mode is restored afterwards."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            yield net
    finally:
        net.train(was_training)


def output_shapes(net: Network, example: torch.Tensor) -> list[torch.Size]:
    """Per-block output shapes (without the batch dim) for one example batch, in eval mode."""
    with evaluating(net):
        return [o.shape[1:] for o in net.block_outputs(example[:2])]

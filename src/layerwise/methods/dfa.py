"""Direct Feedback Alignment (Nøkland, 2016, "Direct Feedback Alignment Provides Learning in Deep Neural
Networks").

The output error e = dL/dlogits reaches every block i through its own fixed random matrix B_i, not through
the layers above: block i is trained as if B_i e were the gradient of its output. The head (only the last
Linear: `split_head` moves the head's hidden layers into blocks first, so they get direct feedback too) learns
from the true gradient on detached features. No gradient crosses a block boundary.

`injection` picks where B_i e enters:
- post (Nøkland): as the gradient of the block's output; autograd applies f' and the rest of the block.
- pre: as the gradient of the pre-activation of the block's last activation (before its pool), skipping f',
  so zero-derivative units (model.activation=sign|step) learn; B_i is shaped like that pre-activation.

B_i is drawn separately per block, shaped (classes, *target shape) with fan-in = the target's size, so
`feedback.init=default` gives it the scale of a Linear readout from that block, times `feedback.scale` (0.3:
at 1.0 a relu MLP without batch norm diverges, since B ignores the layers above and nothing bounds the growth
of hidden activations). It is a buffer, so checkpoints keep it.

Memory and compute: e exists only after the head's forward and backward, so every block's graph is kept until
then (peak activation memory like backprop's, not DGL's). Then each block's backward is short and independent
of the others (no block waits for another's gradient); all optimizers step after the head. Getting e from an
extra no-grad forward first would free each block at once, but it is not DFA's update unless nothing steps
before the last block.

Copies: pre-injection reads the pre-activation through a forward hook object on each block's last activation.
It lives in the network's hook dict and the rule looks it up from the network in every `begin_batch`, so
`copy.deepcopy` of (net, rule), together or apart, between batches gives a copy that reads its own network.
"""
from __future__ import annotations

import torch
from loguru import logger
from torch import nn

from layerwise.errors import ConfigError
from layerwise.feedback import check_init, random_feedback
from layerwise.methods.base import LearningRule, Signal, TrainGroup, output_shapes
from layerwise.models import Network, Sign, Step, is_activation, split_head

INJECTIONS = ("post", "pre")


class PreActivation:
    """Forward hook keeping the input of an activation: its shape always, the tensor only when autograd records
    (training), so probe and evaluation passes hold no memory and a copy between batches holds no graph."""

    def __init__(self):
        self.shape: torch.Size | None = None
        self.value: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.shape = args[0].shape[1:]
        self.value = args[0] if torch.is_grad_enabled() else None

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        return value


def pre_activation_tap(block: nn.Module) -> PreActivation:
    """The hook on `block`'s last activation, installed on first use."""
    acts = [m for m in block.modules() if is_activation(m)]
    if not acts:
        raise ConfigError(f"method.injection=pre needs an activation in every block, but {block} has none; "
                          "use method.injection=post")
    tap = next((h for h in acts[-1]._forward_hooks.values() if isinstance(h, PreActivation)), None)
    if tap is None:
        tap = PreActivation()
        acts[-1].register_forward_hook(tap)
    return tap


class DirectFeedbackAlignment(LearningRule):
    name = "dfa"
    local = True
    detach_head = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.injection = str(cfg.get("injection", "post"))
        if self.injection not in INJECTIONS:
            raise ConfigError(f"method.injection={self.injection!r} is not known; choose post (Nøkland: the "
                              "block output's gradient) or pre (the last pre-activation's, skipping f')")
        feedback = cfg.get("feedback") or {}
        self.init = check_init(str(feedback.get("init", "default")))
        self.scale = feedback.get("scale", 0.3)
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not self.scale > 0:
            raise ConfigError(f"method.feedback.scale={self.scale!r} must be a number > 0")
        self.zero_derivative_activations = "train" if self.injection == "pre" else "warn"
        self.moved = 0
        self._taps: list[PreActivation] = []
        self._targets: dict[int, torch.Tensor] = {}
        self._error: torch.Tensor | None = None

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        self.moved = split_head(net)  # before the base setup, which counts the blocks
        super().setup(net, example, num_classes)
        if self.injection == "post" and any(isinstance(m, (Sign, Step)) for m in net.blocks.modules()):
            logger.warning("dfa: method.injection=post backpropagates B·e through zero-derivative activations "
                           "(sign/step), so the blocks cannot learn; use method.injection=pre")
        taps = [pre_activation_tap(block) for block in net.blocks] if self.injection == "pre" else []
        out_shapes = output_shapes(net, example)  # this pass also gives the taps their pre-activation shapes
        shapes = [t.shape for t in taps] if taps else out_shapes
        for i, shape in enumerate(shapes):
            self.register_buffer(f"feedback{i}", random_feedback((num_classes, *shape), self.init, float(self.scale)))

    def feedback(self, i: int) -> torch.Tensor:
        return getattr(self, f"feedback{i}")

    def begin_batch(self, net: Network, x: torch.Tensor, y: torch.Tensor) -> None:
        self._taps = [pre_activation_tap(block) for block in net.blocks] if self.injection == "pre" else []
        self._targets, self._error = {}, None

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> None:
        self._targets[i] = self._taps[i].take() if self._taps else h
        return None  # trained in after_backward, once the head has produced e

    def head_signal(self, logits: torch.Tensor, y: torch.Tensor) -> Signal:
        signal = super().head_signal(logits, y)
        # A gradient of the loss itself, not a hook on the logits: under AMP the backward of the head's loss
        # is scaled, and a hook would see e times the loss scale (applied again to the blocks' objectives).
        self._error = torch.autograd.grad(signal.loss, logits, retain_graph=True)[0].detach()
        return signal

    def after_backward(self, i: int) -> dict[str, Signal]:
        if i < self.n_blocks or self._error is None:
            return {}
        e = self._error
        signals = {}
        for j, target in self._targets.items():
            b = self.feedback(j)
            delta = (e.to(b.dtype) @ b.flatten(1)).view(len(e), *b.shape[1:]).to(target.dtype)
            signals[f"block{j}/train_"] = Signal(objective=(target * delta).sum())
        self._targets, self._error = {}, None
        return signals

    def train_groups(self, net: Network) -> list[TrainGroup]:
        n = len(net.blocks)
        return [TrainGroup(f"block{i}", [block], step_after=n) for i, block in enumerate(net.blocks)] + [
            TrainGroup("head", [net.head], step_after=n)]

    def describe(self) -> str:
        moved = f", {self.moved} head layer{'s' * (self.moved != 1)} moved into blocks" if self.moved else ""
        return f"dfa ({self.injection}-activation, {self.n_blocks} feedback matrices{moved})"

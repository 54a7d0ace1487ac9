"""Fast paths: mixed precision with one optimizer per block, channels_last, torch.compile.

Mixed precision (`trainer.precision=16-mixed`). Lightning's `MixedPrecision` scales every `manual_backward` by the
GradScaler's scale, and in each `optimizer.step()` unscales that optimizer's gradients, steps it (skipped when
they hold an inf/NaN) and calls `scaler.update()`. That last call is right for one optimizer per batch and wrong
for K: the scale can change between a block's backward and its unscale (DFA backpropagates every block before
any step; an inf in block 0 halved the scale that block 1's gradients are then divided by), and the growth
interval counts optimizer steps, not batches. `BatchGradScaler` defers `update()` to the end of the batch, so
every backward and every unscale of a batch use the same scale, each optimizer's inf check skips only its own
step, and the scale halves at most once per batch (the growth interval counts batches). Clipping belongs in
`on_before_optimizer_step`, which Lightning calls after unscaling: `clip_gradients` before `opt.step()`
(Lightning's manual-optimization example) clips scaled gradients, i.e. not at all.

bf16-mixed has no scaler (bf16 has float32's exponent range), so it needs none of this.
"""
from __future__ import annotations

import torch
from torch import nn

from layerwise.core.compile_modes import COMPILE_MODES, compile_mode  # noqa: F401  (re-exported)

#: Graphs one compiled module may need before dynamo gives up on it (see compile_in_place).
GRAPHS_PER_UNIT = 6


class BatchGradScaler(torch.amp.GradScaler):
    """A GradScaler whose `update()` (called by Lightning after every optimizer step) waits for `end_batch()`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._steps_in_batch = 0

    @classmethod
    def replacing(cls, scaler: torch.amp.GradScaler, device: str) -> BatchGradScaler:
        """A BatchGradScaler with `scaler`'s settings and state (scale, growth tracker, e.g. from a checkpoint)."""
        new = cls(device=device, enabled=scaler.is_enabled())
        if scaler.is_enabled():
            new.load_state_dict(scaler.state_dict())
        return new

    def step(self, optimizer, *args, **kwargs):
        self._steps_in_batch += 1
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None) -> None:
        if new_scale is not None:  # an explicit scale is the caller's decision: apply it now
            super().update(new_scale)

    def end_batch(self) -> None:
        """The one scale update of a batch: back off if any optimizer saw inf/NaN, else count towards growth."""
        if self._steps_in_batch:  # GradScaler.update asserts that some optimizer recorded an inf check
            super().update()
        self._steps_in_batch = 0


def install_batch_scaler(precision_plugin) -> BatchGradScaler | None:
    """Swap the precision plugin's GradScaler (16-mixed) for a BatchGradScaler with the same state.

    Called at train start, after Lightning restored the scaler from a checkpoint; idempotent. None without a scaler.
    """
    scaler = getattr(precision_plugin, "scaler", None)
    if scaler is None or isinstance(scaler, BatchGradScaler):
        return scaler
    device = str(getattr(precision_plugin, "device", "cuda"))
    precision_plugin.scaler = BatchGradScaler.replacing(scaler, device)
    return precision_plugin.scaler


def has_grads(params) -> bool:
    """GradScaler.step asserts that an optimizer has gradients; an optimizer without any has nothing to step."""
    return any(p.grad is not None for p in params)


# ----------------------------------------------------------------- channels_last
def to_channels_last(batch):
    """The 4-D tensors of a batch (images) in channels_last; the rest (labels) as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_channels_last(b) for b in batch)
    return batch


# ----------------------------------------------------------------- torch.compile
def compile_units(net: nn.Module, rule: nn.Module) -> list[nn.Module]:
    """What is compiled: each block, the head, and each of the rule's own modules (aux heads, synthesizers, ...).

    One graph per unit, since the training loop runs and backpropagates them one at a time.
    """
    units = [*net.blocks, net.head]
    for child in rule.children():
        units += list(child.children()) if isinstance(child, (nn.ModuleList, nn.ModuleDict)) else [child]
    return units


def compile_in_place(net: nn.Module, rule: nn.Module, mode: str, backend: str = "inductor") -> int:
    """torch.compile every unit with `nn.Module.compile`: parameters, hooks and state_dict keys stay as they are,
    so checkpoints load with and without compile. Returns the number of compiled modules."""
    units = compile_units(net, rule)
    # Every compiled module shares the one code object of nn.Module._call_impl, and dynamo's recompile limit (8)
    # counts per code object: past it, the remaining blocks would silently run eagerly. Each unit needs a few
    # graphs (training, evaluation without grad, a smaller last batch).
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, GRAPHS_PER_UNIT * len(units))
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit,
                                                    GRAPHS_PER_UNIT * len(units))
    for unit in units:  # a mode is an inductor option; other backends (e.g. aot_eager) take none
        unit.compile(mode=None if mode == "default" or backend != "inductor" else mode, backend=backend)
    return len(units)

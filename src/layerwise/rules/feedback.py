"""Layers whose backward sends the error through a feedback matrix B instead of W (feedback alignment and
sign-symmetry), and the random matrices those rules (and DFA) draw.

`FeedbackLinear` / `FeedbackConv2d` compute the forward exactly like `nn.Linear` / `nn.Conv2d` and share the
original layer's parameters; in backward, the input gradient uses B (from their `feedback` module) while the
weight and bias gradients are the true ones. `convert_layers` swaps them in place of a network's layers.
Inside `exact_gradients()` they behave like the plain layers (the alignment diagnostic's true-BP reference).
A learned B (a `feedback` whose output requires grad: kolen_pollack, pfa) receives W's gradient as its own.
"""
from __future__ import annotations

import math
from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input, conv2d_weight

from layerwise.errors import ConfigError
from layerwise.rules.options.feedback import (  # noqa: F401  (re-exported; defined in rules/options)
    INITS,
    SCALE_WORDS,
    FeedbackOptions,
    check_init,
    check_scale,
)

# The schemes of torch.nn.init; `default` is what nn.Linear / nn.Conv2d use for their own weight.
_INIT_FNS = {
    "default": lambda b, g: nn.init.kaiming_uniform_(b, a=math.sqrt(5), generator=g),
    "kaiming_uniform": lambda b, g: nn.init.kaiming_uniform_(b, nonlinearity="relu", generator=g),
    "kaiming_normal": lambda b, g: nn.init.kaiming_normal_(b, nonlinearity="relu", generator=g),
    "xavier_uniform": lambda b, g: nn.init.xavier_uniform_(b, generator=g),
    "xavier_normal": lambda b, g: nn.init.xavier_normal_(b, generator=g),
    "orthogonal": lambda b, g: nn.init.orthogonal_(b.view(b.shape[0], -1), generator=g),
}


def random_feedback(shape, init: str = "default", scale: float = 1.0, generator: torch.Generator | None = None,
                    device=None) -> torch.Tensor:
    """A fixed random matrix shaped like a weight (out, in, *kernel); fan-in is `in * prod(kernel)`.

    `default` is PyTorch's own Linear/Conv2d init, U(±1/sqrt(fan_in)), so B starts with W's scale.
    """
    b = torch.empty(shape, device=device)
    _INIT_FNS[check_init(init)](b, generator)
    return b * scale


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shaped (out, in, *kernel), as torch.nn.init counts them."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def init_std(shape, init: str = "default") -> float:
    """The standard deviation of the entries that scheme `init` draws for a weight of `shape`.

    default: U(±1/sqrt(fan_in)), std 1/sqrt(3 fan_in); kaiming_* (relu gain): sqrt(2/fan_in); xavier_*:
    sqrt(2/(fan_in+fan_out)); orthogonal: a (rows x cols) matrix with orthonormal rows or columns has mean
    square min(rows, cols)/(rows cols). uSF's fixed scale (Xiao et al. 2018, as the biotorch benchmark runs it).
    """
    fan_in, fan_out = fans(shape)
    rows, cols = shape[0], math.prod(shape[1:])
    stds = {
        "default": lambda: 1.0 / math.sqrt(3 * fan_in),
        "kaiming_uniform": lambda: math.sqrt(2.0 / fan_in),
        "kaiming_normal": lambda: math.sqrt(2.0 / fan_in),
        "xavier_uniform": lambda: math.sqrt(2.0 / (fan_in + fan_out)),
        "xavier_normal": lambda: math.sqrt(2.0 / (fan_in + fan_out)),
        "orthogonal": lambda: math.sqrt(min(rows, cols) / (rows * cols)),
    }
    return stds[check_init(init)]()


_EXACT: ContextVar[bool] = ContextVar("layerwise_exact_gradients", default=False)


@contextmanager
def exact_gradients():
    """Feedback layers run as plain layers here (forward and backward), e.g. for a true-BP reference gradient."""
    token = _EXACT.set(True)
    try:
        yield
    finally:
        _EXACT.reset(token)


# ----------------------------------------------------------------------------- what B is
class FixedFeedback(nn.Module):
    """Feedback alignment: one random matrix, drawn once."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.register_buffer("matrix", matrix)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.matrix


class SignFeedback(nn.Module):
    """Uniform sign-concordant feedback: sign(W)·scale, following W as it trains.

    scale None: the RMS of the current W, so that ‖B‖ = ‖W‖ and the backward signal keeps BP's magnitude;
    a number: fixed (e.g. `init_std` of the layer's init scheme, as biotorch runs uSF).
    """

    def __init__(self, scale: float | None):
        super().__init__()
        self.scale = scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        w = weight.detach()
        scale = self.scale if self.scale is not None else w.pow(2).mean().sqrt()
        return torch.sign(w) * scale


class SignMagnitudeFeedback(nn.Module):
    """Random-magnitude sign-concordant feedback: |M| ⊙ sign(W)·scale; `redraw` draws a new |M|."""

    def __init__(self, shape, init: str, scale: float):
        super().__init__()
        self.init, self.scale = init, scale
        self.register_buffer("magnitude", random_feedback(shape, init).abs())

    def redraw(self) -> None:
        self.magnitude.copy_(random_feedback(self.magnitude.shape, self.init, device=self.magnitude.device).abs())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.magnitude * torch.sign(weight.detach()) * self.scale


# ----------------------------------------------------------------------------- autograd
def _feedback_grad(ctx, grad_w, feedback):
    """A learned B (one that requires grad) receives W's own gradient: Kolen-Pollack's ΔB = ΔWᵀ in W's layout
    (B is stored shaped like W), and through autograd whatever B is built from (PFA's R gets Bᵀ·∂W)."""
    return grad_w.to(feedback.dtype) if ctx.needs_input_grad[3] else None


class _LinearFeedback(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, feedback):
        ctx.save_for_backward(x, feedback)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        x, feedback = ctx.saved_tensors
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_out @ feedback.to(grad_out.dtype) if ctx.needs_input_grad[0] else None
        need_w = ctx.needs_input_grad[1] or ctx.needs_input_grad[3]
        grad_w = g2.t() @ x.reshape(-1, x.shape[-1]).to(g2.dtype) if need_w else None
        grad_b = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return (grad_x, grad_w if ctx.needs_input_grad[1] else None, grad_b,
                _feedback_grad(ctx, grad_w, feedback))


class _Conv2dFeedback(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, feedback, stride, padding, dilation, groups):
        ctx.save_for_backward(x, feedback)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.weight_shape, ctx.has_bias = weight.shape, bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        x, feedback = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = conv2d_input(x.shape, feedback.to(grad_out.dtype), grad_out, *ctx.conv)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            grad_w = conv2d_weight(x.to(grad_out.dtype), ctx.weight_shape, grad_out, *ctx.conv)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return (grad_x, grad_w if ctx.needs_input_grad[1] else None, grad_b, _feedback_grad(ctx, grad_w, feedback),
                None, None, None, None)


# ----------------------------------------------------------------------------- layers
class FeedbackLayer:
    """A Linear/Conv2d whose input gradient goes through `self.feedback(self.weight)` instead of the weight."""

    weight: nn.Parameter
    feedback: nn.Module

    def feedback_weight(self) -> torch.Tensor:
        return self.feedback(self.weight)


class FeedbackLinear(FeedbackLayer, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _EXACT.get():
            return F.linear(x, self.weight, self.bias)
        return _LinearFeedback.apply(x, self.weight, self.bias, self.feedback_weight())


class FeedbackConv2d(FeedbackLayer, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _EXACT.get():
            return nn.Conv2d.forward(self, x)
        padding = self.padding
        if self.padding_mode != "zeros":  # as nn.Conv2d does: pad explicitly, convolve unpadded
            x, padding = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode), (0, 0)
        return _Conv2dFeedback.apply(x, self.weight, self.bias, self.feedback_weight(), self.stride, padding,
                                     self.dilation, self.groups)


_CONVERTED = {nn.Linear: FeedbackLinear, nn.Conv2d: FeedbackConv2d}


def convert_layers(net: nn.Module, make_feedback: Callable[[nn.Module], nn.Module],
                   keep: tuple[nn.Module, ...] = ()) -> Counter:
    """Turn every nn.Linear / nn.Conv2d of `net` (except `keep`) into its feedback version, in place.

    The layer objects stay where they are, with their parameters; only their class changes and they gain a
    `feedback` submodule (its buffers go into checkpoints). Returns how many layers of each kind changed.
    """
    counts: Counter = Counter()
    for module in list(net.modules()):
        kind = type(module)
        if kind not in _CONVERTED or any(module is k for k in keep):
            continue
        if kind is nn.Conv2d and isinstance(module.padding, str) and module.padding != "valid":
            raise ConfigError(f"cannot convert a Conv2d with padding={module.padding!r} to feedback alignment; "
                              "give the model integer padding")
        if kind is nn.Conv2d and module.padding == "valid":
            module.padding = (0, 0)
        module.__class__ = _CONVERTED[kind]
        module.feedback = make_feedback(module)
        counts[kind.__name__] += 1
    return counts


def last_linear(module: nn.Module) -> nn.Linear | None:
    """The last nn.Linear inside `module` (the output layer when `module` is the head)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None

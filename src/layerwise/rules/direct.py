"""What the direct-projection rules share (dfa, drtp): one fixed random matrix B_i per block that sends a
class-sized vector v (DFA: the output error e; DRTP: the one-hot target y*) straight to block i, and where it enters.

`injection` picks where B_i v enters:
- post: as the gradient of the block's output; autograd applies f' and the rest of the block.
- pre: as the gradient of the pre-activation of the block's last activation (before its pool), skipping f',
  so zero-derivative units (model.activation=sign|step) learn; B_i is shaped like that pre-activation.

B_i is drawn separately per block and is a buffer, so checkpoints keep it. `feedback.shape` picks its form:
- dense (default): one matrix (classes, target size): every element of the target gets its own row, drawn as
  a (classes x size) matrix (fan-in = the target's size), so `feedback.init=default` gives it the scale of a
  Linear readout from that block, times `feedback.scale`.
- conv_shared (the biotorch benchmark's DFA): where the next layer (the first Linear/Conv2d after block i) is
  a Conv2d, B_i is a kernel (classes, C, k, k) of that conv's geometry; v is broadcast over the conv's output
  map and sent back through B_i as the conv's input gradient would be: B_i v = conv2d_input(B_i, v ⊗ 1_{HxW}),
  the same weights at every position. Where the next layer is a Linear, B_i is dense, as in biotorch. Needs
  injection=post (the block output is the next conv's input).

Copies: pre-injection reads the pre-activation through a forward hook object on each block's last activation.
It lives in the network's hook dict and the rule looks it up from the network in every `begin_batch`, so
`copy.deepcopy` of (net, rule), together or apart, between batches gives a copy that reads its own network.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from loguru import logger
from torch import nn
from torch.nn.grad import conv2d_input

from layerwise.errors import ConfigError
from layerwise.models import Network, Sign, Step, is_activation, split_head
from layerwise.rules.base import LearningRule, output_shapes
from layerwise.rules.feedback import check_scale, random_feedback


@dataclass(frozen=True)
class ConvGeometry:
    """The next conv's stride, padding, dilation and output map size: where a conv_shared B_i sends v."""
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_size: tuple[int, int]


def next_layer(net: Network, i: int) -> nn.Module | None:
    """The first Linear/Conv2d that reads block i's output: in block i+1, or the head's after the last block."""
    following = net.blocks[i + 1] if i + 1 < len(net.blocks) else net.head
    return next((m for m in following.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)


def conv_geometry(conv: nn.Conv2d, shape: torch.Size, i: int) -> ConvGeometry:
    if len(shape) != 3 or shape[0] != conv.in_channels or conv.padding_mode != "zeros" or \
            (isinstance(conv.padding, str) and conv.padding != "valid"):
        raise ConfigError(f"method.feedback.shape=conv_shared: block {i}'s output {tuple(shape)} is not the plain "
                          f"input of the conv after it ({conv}); use method.feedback.shape=dense")
    padding = (0, 0) if conv.padding == "valid" else conv.padding
    out = tuple((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
                zip(shape[1:], padding, conv.dilation, conv.kernel_size, conv.stride))
    return ConvGeometry(tuple(conv.stride), tuple(padding), tuple(conv.dilation), out)


def conv_shared_feedback(e: torch.Tensor, b: torch.Tensor, target_shape: torch.Size,
                         geometry: ConvGeometry) -> torch.Tensor:
    """B_i e for a kernel B_i (classes, C, k, k): e (N, classes) broadcast over the next conv's output map, then
    sent back through B_i as a conv sends its output gradient to its input."""
    grad_out = e[:, :, None, None].expand(len(e), e.shape[1], *geometry.out_size).contiguous()
    return conv2d_input(target_shape, b, grad_out, geometry.stride, geometry.padding, geometry.dilation, 1)


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


def pre_activation_tap(block: nn.Module, why: str = "method.injection=pre",
                       fix: str = "use method.injection=post") -> PreActivation:
    """The hook on `block`'s last activation, installed on first use."""
    acts = [m for m in block.modules() if is_activation(m)]
    if not acts:
        raise ConfigError(f"{why} needs an activation in every block, but {block} has none; {fix}")
    tap = next((h for h in acts[-1]._forward_hooks.values() if isinstance(h, PreActivation)), None)
    if tap is None:
        tap = PreActivation()
        acts[-1].register_forward_hook(tap)
    return tap


class DirectProjection(LearningRule):
    """Base of dfa and drtp: draws B_i per block in `setup` and applies it (`project`); the subclass says which
    vector it projects and when. The head's hidden layers become blocks (`split_head`), so each gets its own B."""

    local = True
    detach_head = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.injection = str(self.cfg.injection)
        feedback = self.cfg.feedback
        self.init = str(feedback.init)
        self.scale = check_scale(feedback.scale, self.name)
        self.shape = str(feedback.shape)
        self.geometry: list[ConvGeometry | None] = []
        self.zero_derivative_activations = self.Options(injection=self.injection).zero_derivative_activations()
        self.moved = 0
        self._taps: list[PreActivation] = []

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        self.moved = split_head(net)  # before the base setup, which counts the blocks
        super().setup(net, example, num_classes)
        if self.injection == "post" and any(isinstance(m, (Sign, Step)) for m in net.blocks.modules()):
            logger.warning(f"{self.name}: method.injection=post backpropagates B·{self.projected} through "
                           "zero-derivative activations (sign/step), so the blocks cannot learn; use "
                           "method.injection=pre")
        taps = self.find_taps(net)
        out_shapes = output_shapes(net, example)  # this pass also gives the taps their pre-activation shapes
        shapes = [t.shape for t in taps] if taps else out_shapes
        self.geometry = []
        for i, shape in enumerate(shapes):
            conv = next_layer(net, i) if self.shape == "conv_shared" else None
            if isinstance(conv, nn.Conv2d):
                self.geometry.append(conv_geometry(conv, shape, i))
                b = random_feedback((num_classes, conv.in_channels, *conv.kernel_size), self.init, self.scale)
            else:
                self.geometry.append(None)
                size = int(torch.Size(shape).numel())
                b = random_feedback((num_classes, size), self.init, self.scale).view(num_classes, *shape)
            self.register_buffer(f"feedback{i}", b)

    #: the vector B_i projects, for messages ("e", "y*")
    projected = "v"

    def find_taps(self, net: Network) -> list[PreActivation]:
        return [pre_activation_tap(block) for block in net.blocks] if self.injection == "pre" else []

    def feedback(self, i: int) -> torch.Tensor:
        return getattr(self, f"feedback{i}")

    def injection_point(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Where B_i v enters block i: its output (post) or its last activation's input (pre)."""
        return self._taps[i].take() if self._taps else h

    def project(self, j: int, v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """B_j v (v: (N, classes)), shaped like `target` and in its dtype."""
        b = self.feedback(j)
        if self.geometry[j] is None:
            delta = (v.to(b.dtype) @ b.flatten(1)).view(len(v), *b.shape[1:])
        else:
            delta = conv_shared_feedback(v.to(b.dtype), b, target.shape, self.geometry[j])
        return delta.to(target.dtype)

    def describe_feedback(self) -> str:
        moved = f", {self.moved} head layer{'s' * (self.moved != 1)} moved into blocks" if self.moved else ""
        shared = sum(g is not None for g in self.geometry)
        shape = f", {shared} conv-shared" if shared else ""
        return f"{self.injection}-activation, {self.n_blocks} feedback matrices{shape}{moved}"

"""Networks as an ordered list of blocks plus a head.

Every architecture is first built as a flat list of *layers* (a conv with its BN/ReLU and any following
pool, or a Linear with its activation); `model.blocks` then groups consecutive layers into the blocks a
learning rule trains locally. The head maps the last block's output to logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from layerwise.errors import ConfigError
from layerwise.models.options import (  # noqa: F401  (re-exported; defined in models/options.py)
    ACTIVATION_NAMES,
    PADDING_MODES,
    VGG_PLANS,
    ZERO_DERIVATIVE_ACTIVATIONS,
    ConvOptions,
    LenetOptions,
    MlpOptions,
    ModelOptions,
)


@dataclass(frozen=True)
class InputSpec:
    channels: int
    size: int
    num_classes: int


class Network(nn.Module):
    """`blocks` run in order, `head` maps the last block's output to logits."""

    def __init__(self, blocks: Sequence[nn.Module], head: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


class Sign(nn.Module):
    """sign(x), a binary unit. Its derivative is zero almost everywhere, so backprop cannot train through it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)


class Step(nn.Module):
    """Heaviside step (0/1). Written as (sign(x) + 1) / 2 so it stays in the graph with a zero derivative
    (a comparison would cut the graph, and the rule's injected gradient could not reach the layer below)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.sign(x) + 1) / 2


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU,
                                           "sign": Sign, "step": Step}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"model.activation={name!r} is not known; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def is_activation(module: nn.Module) -> bool:
    return isinstance(module, tuple(ACTIVATIONS.values()))


def _conv_layer(c_in: int, c_out: int, kernel: int, pool: bool, cfg, padding: int | None = None) -> nn.Sequential:
    """Conv-[BN]-act-[MaxPool2]; `padding` None = same (kernel // 2)."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2 if padding is None else padding,
                  padding_mode=cfg.padding_mode, bias=not cfg.batch_norm)
    ]
    if cfg.batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(_activation(cfg.activation))
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def mlp(dim_in: int, hidden: Sequence[int], dim_out: int, dropout: float = 0.0,
        activation: str = "relu") -> nn.Sequential:
    """Flatten -> [Dropout -> Linear -> act]* -> Dropout -> Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(dim_in, width), _activation(activation)]
        dim_in = width
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(dim_in, dim_out))
    return nn.Sequential(*layers)


def _scaled(width: int, mult: float) -> int:
    return max(1, int(round(width * mult)))


def conv_layers(plan: Sequence, in_channels: int, cfg) -> tuple[list[nn.Module], int, int]:
    """Turn a channel plan into layers; a pool folds into the conv layer before it.

    Returns the layers, the output channel count and the number of pools.
    """
    if plan and plan[0] == "M":
        raise ConfigError("a channel plan cannot start with a pool ('M')")
    layers, c_in, pools = [], in_channels, 0
    for pos, item in enumerate(plan):
        if item == "M":
            continue
        pool = pos + 1 < len(plan) and plan[pos + 1] == "M"
        pools += pool
        c_out = _scaled(int(item), cfg.width_mult)
        layers.append(_conv_layer(c_in, c_out, cfg.kernel_size, pool, cfg))
        c_in = c_out
    return layers, c_in, pools


class LayerGroup(nn.Sequential):
    """A block made of several layers; marks where `regroup` may split a block back into its layers."""


def group_layers(layers: list[nn.Module], blocks) -> list[nn.Module]:
    """Group consecutive layers into blocks.

    `blocks` is None (one block per layer), an int K (K nearly equal groups) or a list of group sizes.
    """
    n = len(layers)
    if blocks is None:
        sizes = [1] * n
    elif isinstance(blocks, int):
        if not 1 <= blocks <= n:
            raise ConfigError(f"model.blocks={blocks} must be between 1 and the number of layers ({n})")
        base, extra = divmod(n, blocks)
        sizes = [base + (i < extra) for i in range(blocks)]
    else:
        sizes = [int(s) for s in blocks]
        if any(s < 1 for s in sizes) or sum(sizes) != n:
            raise ConfigError(
                f"model.blocks={list(sizes)} must be positive group sizes summing to the {n} layers of "
                f"this model (e.g. model.blocks=[{','.join(['1'] * n)}])")
    grouped, start = [], 0
    for size in sizes:
        chunk = layers[start:start + size]
        grouped.append(chunk[0] if size == 1 else LayerGroup(*chunk))
        start += size
    return grouped


def flat_layers(net: Network) -> list[nn.Module]:
    """The network's layers in order, recovered from its blocks (LayerGroups are opened, layers kept)."""
    layers: list[nn.Module] = []
    for block in net.blocks:
        layers.extend(block if isinstance(block, LayerGroup) else [block])
    return layers


def split_head(net: Network) -> int:
    """Move the head's hidden layers into new trailing blocks, one per activation (with the Flatten, Dropout
    and Linear before it), so only the last Linear remains as the head. Returns how many layers moved.

    For rules that give every hidden layer its own signal (DFA). Parameter names change (head.1 -> blocks.3.1),
    so a rule must call this in `setup`, which runs the same way before a checkpoint is loaded.
    """
    if not isinstance(net.head, nn.Sequential):
        return 0
    layers = list(net.head)
    cuts = [k for k, layer in enumerate(layers) if is_activation(layer)]
    start = 0
    for k in cuts:
        net.blocks.append(nn.Sequential(*layers[start:k + 1]))
        start = k + 1
    if cuts:
        net.head = nn.Sequential(*layers[start:])
    return len(cuts)


def regroup(net: Network, blocks) -> None:
    """Regroup `net`'s layers into new blocks in place (`blocks` as in `group_layers`); weights are kept."""
    net.blocks = nn.ModuleList(group_layers(flat_layers(net), blocks))


def lenet_layers(cfg, spec: InputSpec) -> tuple[list[nn.Module], int, int]:
    """LeNet-5's two conv layers (6@5x5 -> pool -> 16@5x5 -> pool), valid convolutions.

    `cfg.first_padding` pads the first conv: "auto" = 2 for inputs under 32 px and 0 otherwise, so MNIST's
    28 px (28 -> 28 -> 14 -> 10 -> 5) and CIFAR's 32 px (32 -> 28 -> 14 -> 10 -> 5) both end at 5x5; or an int.
    Returns the layers, the output channels and the output side.
    """
    kernel = int(cfg.kernel_size)
    pad = cfg.get("first_padding", "auto")
    if pad == "auto":
        pad = 2 if spec.size < 32 else 0
    c1, c2 = (_scaled(int(c), cfg.width_mult) for c in cfg.channels)
    layers = [_conv_layer(spec.channels, c1, kernel, True, cfg, padding=int(pad)),
              _conv_layer(c1, c2, kernel, True, cfg, padding=0)]
    side = ((spec.size + 2 * int(pad) - kernel + 1) // 2 - kernel + 1) // 2
    if side < 1:
        raise ConfigError(f"model {cfg.name} needs inputs of at least {3 * kernel + 1 - 2 * int(pad)} px "
                          f"(got {spec.size}); set data.image_size")
    return layers, c2, side



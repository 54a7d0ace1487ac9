"""Residual networks as layers + head: the CIFAR ResNets of He et al. (2016) and torchvision's ResNet-18/34/50.

A *layer* is the stem or one residual block (its shortcut inside), so a local rule never cuts a block's
skip connection. `model.blocks` groups the layers into local modules as for every model; `model.split` says
how an int K is grouped:

- `even`: K nearly equal runs of layers (as for the other models);
- `flops` / `memory`: contiguous runs balanced by multiply-accumulates / by activation elements kept for the
  backward pass, measured on one input of the data's shape (the largest module is made as small as possible);
- `infopro`: the published split of Wang et al. (ICLR 2021, "Revisiting Locally Supervised Learning") for
  ResNet-32/110 with K = 2, 3, 4, 8 or 16 (their code release's configuration table, as (stage, block) ends).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.errors import ConfigError
from layerwise.models.network import Network, _activation, _scaled, group_layers, mlp
from layerwise.models.options import (  # noqa: F401  (re-exported; defined in models/options.py)
    CIFAR_DEPTHS,
    RESNET_ARCHES,
    SHORTCUTS,
    SPLITS,
    STEMS,
    TORCHVISION_RESNETS,
    ResNetOptions,
    check_split,
)

#: Wang et al. 2021's module ends: the module closes after block b of stage s (stage 0 = the stem; blocks
#: counted from 0). The K-th module always ends at the network's last block.
INFOPRO_ENDS: dict[str, dict[int, list[tuple[int, int]]]] = {
    "resnet32": {
        2: [(2, 1)],
        3: [(1, 4), (2, 4)],
        4: [(1, 2), (2, 1), (3, 0)],
        8: [(1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2)],
        16: [(0, 0), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4),
             (3, 0), (3, 1), (3, 2), (3, 3)],
    },
    "resnet110": {
        2: [(2, 8)],
        3: [(1, 17), (2, 17)],
        4: [(1, 11), (2, 7), (3, 3)],
        8: [(1, 4), (1, 11), (2, 0), (2, 7), (2, 14), (3, 3), (3, 10)],
        16: [(1, 1), (1, 4), (1, 7), (1, 10), (1, 13), (1, 16), (2, 1), (2, 4), (2, 7), (2, 11), (2, 15),
             (3, 1), (3, 5), (3, 9), (3, 13)],
    },
}


def _norm(channels: int, cfg) -> nn.Module:
    return nn.BatchNorm2d(channels) if cfg.batch_norm else nn.Identity()


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A: identity, subsampled by the stride, with zero channels appended (no parameters)."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN, plus the shortcut, then act (He et al. 2016, fig. 2)."""

    def __init__(self, c_in: int, c_out: int, stride: int, cfg):

        super().__init__()
        bias = not cfg.batch_norm
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = _norm(c_out, cfg)
        self.act1 = _activation(cfg.activation)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.bn2 = _norm(c_out, cfg)
        self.act2 = _activation(cfg.activation)
        if stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        elif cfg.shortcut == "A":
            self.shortcut = ZeroPadShortcut(c_out - c_in, stride)
        else:  # option B: a 1x1 projection where the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), _norm(c_out, cfg))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


def cifar_resnet_layers(cfg, spec) -> tuple[list[nn.Module], int]:
    """Stem (conv3x3 16-BN-act) + 3 stages of n BasicBlocks (16/32/64 channels, stride 2 at stages 2 and 3)."""

    n = (CIFAR_DEPTHS[cfg.arch] - 2) // 6
    widths = [_scaled(w, cfg.width_mult) for w in (16, 32, 64)]
    layers: list[nn.Module] = [nn.Sequential(
        nn.Conv2d(spec.channels, widths[0], 3, padding=1, bias=not cfg.batch_norm), _norm(widths[0], cfg),
        _activation(cfg.activation))]
    c_in = widths[0]
    for stage, width in enumerate(widths):
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            layers.append(BasicBlock(c_in, width, stride, cfg))
            c_in = width
    return layers, c_in


def torchvision_resnet_layers(cfg, spec) -> tuple[list[nn.Module], int]:
    """torchvision's ResNet-18/34/50 (weights=None): stem + every BasicBlock/Bottleneck of layer1..layer4.

    `model.stem=cifar` swaps the 7x7/2 conv and the max-pool for a 3x3/1 conv (the usual CIFAR variant);
    `imagenet` keeps torchvision's stem. Either way the stem reads `spec.channels` input channels.
    """
    import torchvision

    # model.batch_norm=false: torchvision calls norm_layer(channels); Identity takes and ignores the argument.
    norm = {} if cfg.batch_norm else {"norm_layer": nn.Identity}
    tv = getattr(torchvision.models, cfg.arch)(weights=None, num_classes=spec.num_classes, **norm)
    if cfg.stem == "cifar":
        stem = nn.Sequential(nn.Conv2d(spec.channels, 64, 3, stride=1, padding=1, bias=False), tv.bn1, tv.relu)
    else:
        conv = tv.conv1 if spec.channels == 3 else nn.Conv2d(spec.channels, 64, 7, stride=2, padding=3, bias=False)
        stem = nn.Sequential(conv, tv.bn1, tv.relu, tv.maxpool)
    layers: list[nn.Module] = [stem]
    for stage in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
        layers.extend(stage)
    return layers, tv.fc.in_features


def resnet_network(cfg, spec):

    if cfg.arch in CIFAR_DEPTHS:
        layers, channels = cifar_resnet_layers(cfg, spec)
    else:
        layers, channels = torchvision_resnet_layers(cfg, spec)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                         *mlp(channels, cfg.head_hidden, spec.num_classes, cfg.dropout, cfg.activation))
    return Network(group_layers(layers, split_sizes(cfg, layers, spec)), head)


def split_sizes(cfg, layers: list[nn.Module], spec):
    """`model.blocks` as `group_layers` takes it, with an int K turned into sizes by `model.split`."""
    blocks, split = cfg.blocks, cfg.split
    check_split(split, blocks)
    if split == "even":
        return blocks
    n = len(layers)
    if not 1 <= blocks <= n:
        raise ConfigError(f"model.blocks={blocks} must be between 1 and the number of layers ({n})")
    if split == "infopro":
        return infopro_sizes(cfg.arch, blocks)
    costs = layer_costs(layers, spec)[split]
    return balanced_sizes(costs, blocks)


def infopro_sizes(arch: str, k: int) -> list[int]:
    table = INFOPRO_ENDS.get(arch)
    if table is None or (k not in table and k != 1):
        known = ", ".join(f"{a} K={sorted(t)}" for a, t in INFOPRO_ENDS.items())
        raise ConfigError(f"model.split=infopro has no published split for {arch} with model.blocks={k}; "
                          f"published: {known} (use model.split=even|flops|memory otherwise)")
    n = (CIFAR_DEPTHS[arch] - 2) // 6
    total = 1 + 3 * n
    ends = [0 if s == 0 else 1 + (s - 1) * n + b for s, b in table.get(k, [])] + [total - 1]
    sizes, start = [], 0
    for end in ends:
        sizes.append(end + 1 - start)
        start = end + 1
    return sizes


@torch.no_grad()
def layer_costs(layers: list[nn.Module], spec) -> dict[str, list[float]]:
    """Per layer: multiply-accumulates of its convs/linears (`flops`) and the elements its submodules output
    (`memory`, a proxy for the activations autograd keeps), for one input of `spec`'s shape."""
    flops, memory = [0.0] * len(layers), [0.0] * len(layers)
    x = torch.zeros(1, spec.channels, spec.size, spec.size)
    for i, layer in enumerate(layers):
        def hook(module, inputs, output, i=i):
            memory[i] += output.numel()
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
                flops[i] += output.numel() * k
            elif isinstance(module, nn.Linear):
                flops[i] += output.numel() * module.in_features
        leaves = [m for m in layer.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        was_training = layer.training
        layer.eval()  # BN in eval: no running-stat update from the probe
        try:
            x = layer(x)
        finally:
            layer.train(was_training)
            for h in handles:
                h.remove()
    return {"flops": flops, "memory": memory}


def balanced_sizes(costs: list[float], k: int) -> list[int]:
    """Split `costs` into k contiguous non-empty runs minimising the largest run's sum (exact DP)."""
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[j][i]: the smallest possible largest sum splitting the first i layers into j runs.
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for j in range(1, k + 1):
        for i in range(j, n - (k - j) + 1):
            for m in range(j - 1, i):
                value = max(best[j - 1][m], prefix[i] - prefix[m])
                if value < best[j][i]:
                    best[j][i], cut[j][i] = value, m
    sizes, i = [], n
    for j in range(k, 0, -1):
        m = cut[j][i]
        sizes.append(i - m)
        i = m
    return sizes[::-1]



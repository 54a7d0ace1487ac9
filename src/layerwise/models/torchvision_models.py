"""`model=torchvision model.arch=<name>`: a torchvision classifier (weights=None) as layers + head.

How each family is cut (a layer never cuts a residual connection, so a local rule trains whole blocks):

- resnet / resnext / wide_resnet: the stem (conv1-bn-relu-maxpool), then each residual block of layer1..layer4;
  head = avgpool + flatten + fc.
- vgg: one layer per conv (with its BN, ReLU and the max-pool after it); head = avgpool + flatten + classifier.
- mobilenet / efficientnet / convnext: each child of `features`; head = avgpool (+ flatten) + classifier.
- vit: patch embedding + class token + positional embedding as the first layer, then each encoder block; head =
  final LayerNorm + class-token select + the linear head.

The classes come from the data (`num_classes`), the input channels too (the first conv is rebuilt for them), and
the input size too (ViT gets `image_size`, which must be divisible by its patch size).
"""
from __future__ import annotations

import torch
from loguru import logger
from torch import nn

from layerwise.errors import ConfigError
from layerwise.models.network import InputSpec, LayerGroup, Network, group_layers
from layerwise.models.options import TorchvisionOptions, torchvision_family  # noqa: F401  (the preset's options)


class VitEmbedding(nn.Module):
    """ViT's input stage: patches -> tokens, the class token prepended, the positional embedding added."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.patch_size, self.hidden_dim = vit.patch_size, vit.hidden_dim
        self.conv_proj, self.class_token = vit.conv_proj, vit.class_token
        self.pos_embedding, self.dropout = vit.encoder.pos_embedding, vit.encoder.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x)                                  # (n, hidden, h/p, w/p)
        x = x.flatten(2).transpose(1, 2)                       # (n, tokens, hidden)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class ClassToken(nn.Module):
    """The class token's features: what ViT's head reads."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _with_in_channels(model: nn.Module, channels: int) -> None:
    """Rebuild the model's first conv for `channels` input channels (torchvision's read 3)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == channels:
                return
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            conv = nn.Conv2d(channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                             module.dilation, 1, module.bias is not None, module.padding_mode)
            setattr(parent, name.rpartition(".")[2], conv)
            return


def _vgg_layers(features: nn.Sequential) -> list[nn.Module]:
    layers: list[list[nn.Module]] = []
    for module in features:
        if isinstance(module, nn.Conv2d) or not layers:
            layers.append([])
        layers[-1].append(module)
    return [nn.Sequential(*mods) for mods in layers]


def torchvision_layers(arch: str, spec: InputSpec) -> tuple[list[nn.Module], nn.Module]:
    """The layers and the head of torchvision's `arch` for inputs described by `spec`."""
    import torchvision

    family = torchvision_family(arch)
    kwargs = {}
    if family == "vit":
        patch = int(arch.rsplit("_", 1)[1])
        if spec.size % patch:
            raise ConfigError(f"model.arch={arch} cuts images into {patch}x{patch} patches: the input size "
                              f"{spec.size} must be divisible by {patch} (set data.image_size, e.g. "
                              f"{max(patch, spec.size // patch * patch)})")
        kwargs["image_size"] = spec.size
    tv = getattr(torchvision.models, arch)(weights=None, num_classes=spec.num_classes, **kwargs)
    _with_in_channels(tv, spec.channels)
    if family == "resnet":
        layers = [nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool)]
        for stage in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            layers.extend(stage)
        return layers, nn.Sequential(tv.avgpool, nn.Flatten(1), tv.fc)
    if family == "vit":
        layers = [VitEmbedding(tv), *tv.encoder.layers]
        return layers, nn.Sequential(tv.encoder.ln, ClassToken(), tv.heads)
    if family == "vgg":
        return _vgg_layers(tv.features), nn.Sequential(tv.avgpool, nn.Flatten(1), tv.classifier)
    # mobilenet_v2 pools functionally in its forward; the others hold an AdaptiveAvgPool2d(1).
    pool = getattr(tv, "avgpool", None) or nn.AdaptiveAvgPool2d(1)
    # ConvNeXt's classifier starts with LayerNorm2d + Flatten; the others take flat features.
    flatten = [] if family == "convnext" else [nn.Flatten(1)]
    return list(tv.features), nn.Sequential(pool, *flatten, tv.classifier)


def _kind(layer: nn.Module) -> str:
    if type(layer) is nn.Sequential:  # noqa: E721  (a plain Sequential: say what it holds)
        return "+".join(type(m).__name__ for m in layer)
    return type(layer).__name__


def _runs(items: list[str]) -> str:
    """"0 A, 1-8 B" for [A, B, ..., B]: the layer kinds, compact enough for one log line."""
    runs: list[list] = []
    for i, item in enumerate(items):
        if runs and runs[-1][2] == item:
            runs[-1][1] = i
        else:
            runs.append([i, i, item])
    return ", ".join(f"{a} {k}" if a == b else f"{a}-{b} {k}" for a, b, k in runs)


_LOGGED: set[str] = set()


def torchvision_network(cfg, spec: InputSpec) -> Network:
    layers, head = torchvision_layers(cfg.arch, spec)
    blocks = group_layers(layers, cfg.blocks)
    sizes = [len(block) if isinstance(block, LayerGroup) else 1 for block in blocks]
    ends = [sum(sizes[:k + 1]) - 1 for k in range(len(sizes))]
    spans = [f"{e - s + 1}..{e}" if s > 1 else str(e) for s, e in zip(sizes, ends)]
    split = (f"torchvision {cfg.arch}: {len(layers)} layers ({_runs([_kind(m) for m in layers])}) in "
             f"{len(blocks)} blocks (layers {' | '.join(spans)}); head: {' + '.join(_kind(m) for m in head)}")
    if split not in _LOGGED:  # once: a run builds the network twice (the memory check, then the experiment)
        _LOGGED.add(split)
        logger.info(split)
    return Network(blocks, head)

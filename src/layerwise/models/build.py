"""`build_network(cfg.model, spec)`: the network `model.arch` names (or the user's builder, `model._target_`)."""
from __future__ import annotations

from torch import nn

from layerwise.errors import ConfigError
from layerwise.models.network import (
    VGG_PLANS,
    InputSpec,
    Network,
    _activation,
    conv_layers,
    group_layers,
    lenet_layers,
    mlp,
)
from layerwise.models.options import is_torchvision
from layerwise.models.resnets import RESNET_ARCHES, resnet_network
from layerwise.options import import_object


def build_network(cfg, spec: InputSpec) -> Network:
    """Build the network named by `cfg.arch` (or the user's builder `cfg._target_`) for inputs described by `spec`."""
    if cfg.get("_target_"):
        return import_object(cfg._target_, "model._target_")(cfg, spec)
    if is_torchvision(cfg):
        from layerwise.models.torchvision_models import torchvision_network

        return torchvision_network(cfg, spec)
    arch = cfg.arch
    if arch in RESNET_ARCHES:
        return resnet_network(cfg, spec)
    if arch == "lenet":
        layers, channels, side = lenet_layers(cfg, spec)
        head = mlp(channels * side * side, cfg.head_hidden, spec.num_classes, cfg.dropout, cfg.activation)
        return Network(group_layers(layers, cfg.blocks), head)
    if arch == "mlp":
        layers, dim = [], spec.channels * spec.size * spec.size
        for i, width in enumerate(cfg.widths):
            seq: list[nn.Module] = [nn.Flatten()] if i == 0 else []
            seq.append(nn.Linear(dim, int(width)))
            if cfg.batch_norm:
                seq.append(nn.BatchNorm1d(int(width)))
            seq.append(_activation(cfg.activation))
            layers.append(nn.Sequential(*seq))
            dim = int(width)
        if not layers:
            raise ConfigError("model.widths must list at least one hidden width for arch=mlp")
        head = mlp(dim, cfg.head_hidden, spec.num_classes, cfg.dropout, cfg.activation)
        return Network(group_layers(layers, cfg.blocks), head)

    if arch == "basic_cnn":
        plan: list = []
        for c in cfg.channels:
            plan += [c, "M"]
    elif arch in VGG_PLANS:
        plan = VGG_PLANS[arch]
    else:
        raise ConfigError(
            f"model.arch={arch!r} is not known; choose mlp, basic_cnn, lenet or one of "
            f"{sorted(VGG_PLANS) + sorted(RESNET_ARCHES)}")
    layers, channels, pools = conv_layers(plan, spec.channels, cfg)
    side = spec.size // (2 ** pools)
    if side < 1:
        raise ConfigError(
            f"model {cfg.name} pools {pools} times, too often for {spec.size}px inputs; "
            f"use data.image_size >= {2 ** pools}")
    head = mlp(channels * side * side, cfg.head_hidden, spec.num_classes, cfg.dropout, cfg.activation)
    return Network(group_layers(layers, cfg.blocks), head)

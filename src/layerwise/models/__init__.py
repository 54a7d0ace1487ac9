"""Networks as blocks + head: `build_network(cfg.model, spec)` builds the one `model.arch` names.

options.py: every architecture's options (`MODEL_OPTIONS`, `model_options`), torch-free; network.py: the `Network`
container, layers, activations and the grouping of layers into blocks; MLP, BasicCNN, LeNet-5 and the CIFAR VGGs.
resnets.py: CIFAR ResNets (He et al.) and torchvision's ResNet-18/34/50; torchvision_models.py: any supported
torchvision classifier converted (`model=torchvision model.arch=<name>`); build.py: `build_network`.

Importing this package imports no torch: the names below that need it load their module on first use (PEP 562),
so the CLI's config checks read the options without torch.
"""
from __future__ import annotations

from layerwise.lazy import lazy_names
from layerwise.models.options import (
    ACTIVATION_NAMES,
    ARCHES,
    MODEL_OPTIONS,
    RESNET_ARCHES,
    VGG_PLANS,
    ZERO_DERIVATIVE_ACTIVATIONS,
    ConvOptions,
    LenetOptions,
    MlpOptions,
    ModelOptions,
    ResNetOptions,
    TorchvisionOptions,
    model_options,
)

#: name -> the module (torch) that defines it, imported when the name is first read.
_LAZY = {**dict.fromkeys(("ACTIVATIONS", "InputSpec", "LayerGroup", "Network", "Sign", "Step", "_activation",
                          "conv_layers", "flat_layers", "group_layers", "is_activation", "lenet_layers", "mlp",
                          "regroup", "split_head"), "network"),
         "resnet_network": "resnets", "build_network": "build", "torchvision_network": "torchvision_models"}


__getattr__ = lazy_names(__name__, globals(), _LAZY)


__all__ = ["ACTIVATIONS", "ACTIVATION_NAMES", "ARCHES", "MODEL_OPTIONS", "ModelOptions", "model_options", "VGG_PLANS",
           "ZERO_DERIVATIVE_ACTIVATIONS", "InputSpec", "LayerGroup", "Network", "Sign", "Step", "build_network",
           "conv_layers", "flat_layers", "group_layers", "is_activation", "lenet_layers", "mlp", "regroup",
           "split_head", "ConvOptions", "LenetOptions", "MlpOptions", "ResNetOptions", "RESNET_ARCHES",
           "TorchvisionOptions", "torchvision_network"]

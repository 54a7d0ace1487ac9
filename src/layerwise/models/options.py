"""The options of every network (`model.*`), torch-free: the CLI checks a config before torch is imported.

`MODEL_OPTIONS` maps model.arch to its options dataclass; `model_options(cfg)` picks the one a config uses (a
user's builder named by `model._target_` declares its own as `Options`, read by importing its module).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, List, Optional

from omegaconf import MISSING

from layerwise.errors import ConfigError
from layerwise.options import import_object, in_range, items_in_range, number_or, one_of

# Channel plans of the CIFAR VGGs ("M" = 2x2 max-pool).
VGG_PLANS: dict[str, list] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
    # VGG11's convs with only the first three pools: a 4x4 map on 32x32 input, followed by an MLP.
    "vgg11c": [64, "M", 128, "M", 256, 256, "M", 512, 512, 512, 512],
    # Nøkland & Eidnes (2019)'s VGG8b convs: 2x2x512 on 32x32 input, followed by an MLP of 1024.
    "vgg8b": [128, 256, "M", 256, 512, "M", 512, "M", 512, "M"],
}

#: model.activation's names (network.ACTIVATIONS maps them to their modules).
ACTIVATION_NAMES = ("relu", "tanh", "gelu", "elu", "sign", "step")
#: Activations whose derivative is zero: only a rule that skips f' (DFA with pre-activation injection) trains them.
ZERO_DERIVATIVE_ACTIVATIONS = ("sign", "step")

#: CIFAR ResNets of He et al. 2016, section 4.2: depth = 6n + 2.
CIFAR_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}
#: torchvision's ImageNet ResNets: (block kind, blocks per stage).
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50")
RESNET_ARCHES = (*CIFAR_DEPTHS, *TORCHVISION_RESNETS)
SPLITS = ("even", "flops", "memory", "infopro")
SHORTCUTS = ("A", "B")
STEMS = ("cifar", "imagenet")


# ------------------------------------------------------------------------------------------------ options

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")


@dataclass
class ModelOptions:
    PATH: ClassVar[str] = "model"
    name: str = MISSING
    arch: str = MISSING
    _target_: Optional[str] = None   # a network builder of the user's ((cfg, InputSpec) -> Network), by import path
    dropout: float = 0.0
    padding_mode: str = "zeros"
    batch_norm: bool = True
    activation: str = "relu"
    kernel_size: int = 3
    width_mult: float = 1.0
    head_hidden: List[int] = field(default_factory=list)
    # null = one block per layer | K groups | a list of group sizes
    blocks: Any = None

    def __post_init__(self) -> None:
        in_range(self, "dropout", 0, 1, high_open=True, example=0.2)
        one_of(self, "padding_mode", PADDING_MODES)
        one_of(self, "activation", ACTIVATION_NAMES)
        in_range(self, "kernel_size", 1, example=3)
        in_range(self, "width_mult", 0, low_open=True, example=0.5)
        items_in_range(self, "head_hidden", 1, example="[256]")
        blocks = self.blocks
        if blocks is None or (isinstance(blocks, int) and not isinstance(blocks, bool) and blocks >= 1):
            return
        if isinstance(blocks, (list, tuple)) and blocks and all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in blocks):
            return
        raise ConfigError(f"model.blocks={blocks!r} must be null (one block per layer), a number of blocks >= 1 "
                          f"or a list of group sizes >= 1, e.g. model.blocks=[2,2,4]")


@dataclass
class MlpOptions(ModelOptions):
    widths: List[int] = field(default_factory=lambda: [256, 256, 256])

    def __post_init__(self) -> None:
        super().__post_init__()
        items_in_range(self, "widths", 1, min_length=1, example="[256,256]")


@dataclass
class ConvOptions(ModelOptions):
    channels: List[int] = field(default_factory=lambda: [128, 128, 128])

    def __post_init__(self) -> None:
        super().__post_init__()
        items_in_range(self, "channels", 1, min_length=1, example="[32,32,32]")


@dataclass
class LenetOptions(ConvOptions):
    first_padding: Any = "auto"   # auto | an int

    def __post_init__(self) -> None:
        super().__post_init__()
        items_in_range(self, "channels", 1, length=2, example="[6,16]")
        number_or(self, "first_padding", ["auto"], low=0, example=2)


def check_split(split: str, blocks) -> None:
    """A split other than `even` divides a number of modules: it needs model.blocks=K."""
    if split != "even" and (not isinstance(blocks, int) or isinstance(blocks, bool)):
        shown = "null" if blocks is None else list(blocks)
        raise ConfigError(f"model.split={split} needs model.blocks=K (a number of modules), got "
                          f"model.blocks={shown}; set e.g. model.blocks=4, or model.split=even")


@dataclass
class ResNetOptions(ModelOptions):
    split: str = "even"      # even | flops | memory | infopro: how model.blocks=K groups the residual blocks
    shortcut: str = "A"      # CIFAR ResNets: A = zero-padded identity (He et al.'s CIFAR choice) | B = 1x1 projection
    stem: str = "cifar"      # torchvision ResNets: cifar = 3x3/1 conv, no max-pool | imagenet = 7x7/2 + max-pool

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "split", SPLITS)
        check_split(self.split, self.blocks)
        one_of(self, "shortcut", SHORTCUTS)
        one_of(self, "stem", STEMS)


#: `model=torchvision model.arch=<name>`: torchvision's classifiers the converter splits into layers + head, by
#: family (a literal list, so the config check needs no torchvision; tests/test_torchvision_models.py checks it
#: against torchvision.models.list_models). Other torchvision models (DenseNet, Inception, Swin, ...) are refused.
TORCHVISION_FAMILIES: dict[str, tuple[str, ...]] = {
    "resnet": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"),
    "vgg": ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"),
    "mobilenet": ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"),
    "efficientnet": ("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
                     "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_s",
                     "efficientnet_v2_m", "efficientnet_v2_l"),
    "convnext": ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large"),
    "vit": ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"),
}
TORCHVISION_ARCHES = tuple(name for names in TORCHVISION_FAMILIES.values() for name in names)


def torchvision_family(arch: str) -> str:
    """The converter family of a torchvision model name; one line naming the supported families otherwise."""
    for family, names in TORCHVISION_FAMILIES.items():
        if arch in names:
            return family
    raise ConfigError(f"model.arch={arch!r} is not a torchvision classifier the converter splits; supported "
                      f"families: {', '.join(f'{f} ({n[0]}, ...)' for f, n in TORCHVISION_FAMILIES.items())}")


@dataclass
class TorchvisionOptions(ModelOptions):
    """`model=torchvision`: model.arch names a torchvision classifier (weights=None), split into layers + head."""

    def __post_init__(self) -> None:
        super().__post_init__()
        torchvision_family(self.arch)


#: model.arch -> the options of that architecture (the VGGs have no keys of their own).
MODEL_OPTIONS: dict[str, type[ModelOptions]] = {"mlp": MlpOptions, "basic_cnn": ConvOptions, "lenet": LenetOptions,
                                                **dict.fromkeys(VGG_PLANS, ModelOptions),
                                                **dict.fromkeys(RESNET_ARCHES, ResNetOptions),
                                                "torchvision": TorchvisionOptions}
ARCHES = list(MODEL_OPTIONS)


def model_options(cfg) -> type[ModelOptions]:
    """The options dataclass of a model config: its builder's `Options` for a `_target_`, else its arch's."""
    if cfg.get("_target_"):
        return getattr(import_object(cfg["_target_"], "model._target_"), "Options", ModelOptions)
    arch = cfg.get("arch")
    if is_torchvision(cfg):
        return TorchvisionOptions
    if arch not in MODEL_OPTIONS:
        raise ConfigError(f"model.arch={arch!r} is not known; choose one of {', '.join(ARCHES)}")
    return MODEL_OPTIONS[arch]


def is_torchvision(cfg) -> bool:
    """Whether a model config is `model=torchvision`'s: its preset's name (torchvision_<arch>) says so, since
    model.arch then holds a torchvision name (resnet18 is also layerwise's own arch, with a CIFAR stem option)."""
    return str(cfg.get("name")).startswith("torchvision") and not cfg.get("_target_")

"""AugLocal: supervised local learning with augmented auxiliary networks.

Ma, Wu, Si & Tan (2024), "Scaling Supervised Local Learning with Augmented Auxiliary Networks", ICLR (code:
ChenxiangMA/AugLocal). Block i trains, on a detached input, with the cross-entropy of an aux network built from the
network itself: `depth_i` layers sampled uniformly from the layers after block i (the last layer always among
them), then the classifier. Every block but the last has one; the last block trains with the network head, as in
DGL. With L layers in all and block i ending at layer l, the sampled layers are

    round(l + (L - 1 - l) / depth_i * k),  k = 1 .. depth_i      (all of l+1 .. L-1 when depth_i >= L-1-l)

and, with `pyramid`, depth_i falls linearly over the n aux blocks (t = i / (n - 1)):

    depth_i = max(min_depth, round(aux_depth·(1 - c·t) + min_depth·c·t)),   c = pyramid_coeff

Both use Python's round (half to even), as the authors' code does; with min_depth = 1 this is their formula.

How the aux network is built (this project's reading of "fresh copies with the same configs"): each sampled layer
is `copy.deepcopy` of the network's layer with every parameter re-initialised (`reset_parameters` of each
submodule, batch-norm statistics included), so it shares nothing with the network and starts anew; the classifier
is a re-initialised copy of the network head. A copy whose input has other channels than the layer's own (the
layers between two sampled ones change the width) gets its first conv/linear rebuilt for them, and a residual block
a 1x1 projection shortcut (as the authors' aux blocks have); a copy whose input is larger than the layer's own
(the skipped layers downsampled) is preceded by an adaptive average pool to the layer's input size, so every copy
outputs the shape of the layer it copies and the head copy fits. The authors' code (ResNets only) instead puts the
skipped stride into the copied block's first conv (stride 2 per block, the rest carried on).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.errors import ConfigError
from layerwise.models import LayerGroup, Network, flat_layers, regroup
from layerwise.rules.base import LearningRule, Signal, TrainGroup, evaluating
from layerwise.rules.options.auglocal import AugLocalOptions


def depth_schedule(n_aux: int, aux_depth: int, min_depth: int = 1, pyramid: bool = True,
                   coeff: float = 0.5) -> list[int]:
    """The aux depth of each of the n_aux blocks with an aux network (first to last)."""
    if not pyramid:
        return [aux_depth] * n_aux
    ts = [i / (n_aux - 1) if n_aux > 1 else 0.0 for i in range(n_aux)]
    return [max(min_depth, round(aux_depth * (1 - coeff * t) + min_depth * coeff * t)) for t in ts]


def sampled_layers(last: int, n_layers: int, depth: int) -> list[int]:
    """Flat indices of the `depth` layers sampled uniformly after layer `last` (the final layer always one)."""
    remaining = n_layers - 1 - last
    if depth >= remaining:
        return list(range(last + 1, n_layers))
    return [round(last + remaining / depth * k) for k in range(1, depth + 1)]


def fresh(module: nn.Module) -> nn.Module:
    """A deep copy of `module` with every parameter and batch-norm statistic re-initialised."""
    clone = copy.deepcopy(module)
    for sub in clone.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    return clone


def _width(shape) -> int:
    return int(shape[0]) if len(shape) == 3 else int(shape[-1])


def _conv_from(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if conv.groups != 1:
        raise ConfigError(f"auglocal cannot give a grouped conv ({conv}) other input channels")
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     bias=conv.bias is not None, padding_mode=conv.padding_mode)


def _projection(c_in: int, c_out: int, stride, norm: bool, bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias),
                         nn.BatchNorm2d(c_out) if norm else nn.Identity())


def retarget_input(layer: nn.Module, width: int) -> None:
    """Make `layer` (a fresh copy) read inputs of `width` channels (features), in place."""
    if hasattr(layer, "conv1") and (hasattr(layer, "shortcut") or hasattr(layer, "downsample")):
        # a residual block (this project's BasicBlock, torchvision's BasicBlock/Bottleneck): both the first conv
        # and the shortcut read the input; a projection makes the shortcut match the new width
        conv1 = layer.conv1
        out = [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        layer.conv1 = _conv_from(conv1, width)
        norm = any(isinstance(m, nn.BatchNorm2d) for m in layer.modules())
        projection = _projection(width, out, conv1.stride, norm, conv1.bias is not None)
        if hasattr(layer, "shortcut"):
            layer.shortcut = projection
        else:
            layer.downsample = projection
        return
    for name, sub in layer.named_modules():
        if isinstance(sub, (nn.Conv2d, nn.Linear)):
            parent = layer.get_submodule(name.rpartition(".")[0]) if "." in name else layer
            new = (_conv_from(sub, width) if isinstance(sub, nn.Conv2d)
                   else nn.Linear(width, sub.out_features, bias=sub.bias is not None))
            if not name:
                raise ConfigError(f"auglocal cannot copy a bare {type(sub).__name__} layer with other inputs")
            setattr(parent, name.rpartition(".")[2], new)
            return
    raise ConfigError(f"auglocal found no conv or linear reading the input of a {type(layer).__name__} layer")


class AugmentedAux(nn.Sequential):
    """Block i's aux network: fresh copies of the sampled later layers (with pools and input adaptations where the
    shapes need them), then a fresh copy of the network head. `sampled` holds the copied layers' flat indices."""

    def __init__(self, *modules: nn.Module, sampled=()):
        super().__init__(*modules)
        self.sampled = list(sampled)


def build_aux(layers: list[nn.Module], shapes: list[torch.Size], head: nn.Module, last: int, in_shape,
              sampled: list[int]) -> AugmentedAux:
    """The aux network after layer `last` (output `in_shape`) from copies of `layers[j]` for j in `sampled`.

    `shapes[j]` is layer j's output shape in the network (without the batch dimension).
    """
    modules: list[nn.Module] = []
    shape = tuple(in_shape)
    for j in sampled:
        expected = tuple(shapes[j - 1])
        if len(shape) == 3 and len(expected) == 3 and shape[1:] != expected[1:]:
            modules.append(nn.AdaptiveAvgPool2d(expected[1:]))  # the skipped layers' downsampling
        copy_j = fresh(layers[j])
        if _width(shape) != _width(expected):
            retarget_input(copy_j, _width(shape))
        modules.append(copy_j)
        shape = tuple(shapes[j])
    modules.append(fresh(head))
    return AugmentedAux(*modules, sampled=sampled)


class AugLocal(LearningRule):
    name = "auglocal"
    Options = AugLocalOptions
    local = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.aux = nn.ModuleList()
        self.depths: list[int] = []

    def setup(self, net: Network, example: torch.Tensor, num_classes: int) -> None:
        cfg = self.cfg
        if cfg.merge_tail and len(net.blocks) > 1:
            k = min(int(cfg.aux_depth), len(net.blocks) - 2)
            sizes = [len(b) if isinstance(b, LayerGroup) else 1 for b in net.blocks]
            if k > 0:
                regroup(net, sizes[:-(k + 1)] + [sum(sizes[-(k + 1):])])
        super().setup(net, example, num_classes)
        n = len(net.blocks)
        if n < 2:
            raise ConfigError("auglocal needs at least 2 blocks; set model.blocks to a larger number or null"
                              + (" (or method.merge_tail=false)" if cfg.merge_tail else ""))
        layers = flat_layers(net)
        with evaluating(net):
            h, shapes = example[:2], []
            for layer in layers:
                h = layer(h)
                shapes.append(h.shape[1:])
        ends, total = [], 0
        for block in net.blocks:
            total += len(block) if isinstance(block, LayerGroup) else 1
            ends.append(total - 1)
        self.depths = depth_schedule(n - 1, int(cfg.aux_depth), int(cfg.min_depth), bool(cfg.pyramid),
                                     float(cfg.pyramid_coeff))
        self.aux = nn.ModuleList(
            build_aux(layers, shapes, net.head, ends[i], shapes[ends[i]],
                      sampled_layers(ends[i], len(layers), self.depths[i]))
            for i in range(n - 1))
        self._check_shapes(net, example)

    def _check_shapes(self, net: Network, example: torch.Tensor) -> None:
        with evaluating(net), evaluating(self):
            h = example[:2]
            head_shape = net(h).shape
            for i, block in enumerate(net.blocks[:-1]):
                h = block(h)
                try:
                    out = self.aux[i](h)
                except RuntimeError as err:
                    raise ConfigError(f"auglocal could not build block {i}'s aux network from copies of layers "
                                      f"{self.aux[i].sampled} of this model ({str(err).splitlines()[0]}); it "
                                      f"supports mlp, basic_cnn, vgg and ResNets") from err
                if out.shape != head_shape:
                    raise ConfigError(f"auglocal: block {i}'s aux network outputs {tuple(out.shape)}, the head "
                                      f"{tuple(head_shape)}")

    def block_signal(self, i: int, h: torch.Tensor, y: torch.Tensor) -> Signal | None:
        if i >= len(self.aux):
            return None  # the last block learns from the network head
        logits = self.aux[i](h)
        return Signal(loss=F.cross_entropy(logits, y), logits=logits)

    def block_logits(self, i: int, h: torch.Tensor) -> torch.Tensor | None:
        return self.aux[i](h) if i < len(self.aux) else None

    def train_groups(self, net: Network) -> list[TrainGroup]:
        n = len(net.blocks)
        groups = [TrainGroup(f"block{i}", [net.blocks[i], self.aux[i]], step_after=i) for i in range(n - 1)]
        groups.append(TrainGroup(f"block{n - 1}+head", [net.blocks[n - 1], net.head], step_after=n))
        return groups

    def describe(self) -> str:
        c = self.cfg
        shape = f"pyramid {c.aux_depth}->{self.depths[-1] if self.depths else c.min_depth}" if c.pyramid else "flat"
        return f"auglocal (aux depth {list(self.depths)} ({shape}){', tail merged' if c.merge_tail else ''})"

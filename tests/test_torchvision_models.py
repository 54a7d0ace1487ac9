"""`model=torchvision model.arch=<name>`: torchvision classifiers converted into layers + head, trained by rules."""
from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg, small_module, train_batches
from layerwise.errors import ConfigError
from layerwise.models import InputSpec, build_network
from layerwise.models.options import TORCHVISION_ARCHES, TORCHVISION_FAMILIES

SPEC = InputSpec(channels=3, size=32, num_classes=10)

# arch -> layers (= blocks with model.blocks=null). The six together take ~75 s on 2 cores (-n 2), so the default
# suite keeps one per kind of split (residual blocks, features children, ViT encoder); vgg11_bn (a 120M-weight
# classifier: torchvision's 7x7 avgpool output feeds 25088 -> 4096), efficientnet_b0 and convnext_tiny are slow.
MODELS = [("resnet18", 9), ("mobilenet_v2", 19), ("vit_b_16", 13),
          pytest.param("vgg11_bn", 8, marks=pytest.mark.slow),
          pytest.param("efficientnet_b0", 9, marks=pytest.mark.slow),
          pytest.param("convnext_tiny", 8, marks=pytest.mark.slow)]


def build(arch, *overrides, spec=SPEC):
    return build_network(compose_cfg(["model=torchvision", f"model.arch={arch}", *overrides]).model, spec)


def test_supported_names_are_torchvision_classifiers():
    import torchvision

    known = set(torchvision.models.list_models(module=torchvision.models))
    assert set(TORCHVISION_ARCHES) <= known
    # Every torchvision name of a supported family is listed (a new torchvision model of a family shows up here).
    prefixes = {"resnet": ("resnet", "resnext", "wide_resnet"), "vgg": ("vgg",), "mobilenet": ("mobilenet",),
                "efficientnet": ("efficientnet",), "convnext": ("convnext",), "vit": ("vit_",)}
    for family, names in TORCHVISION_FAMILIES.items():
        assert {n for n in known if n.startswith(prefixes[family])} == set(names), family


@pytest.mark.parametrize("rule", ["bp", "dgl"])
@pytest.mark.parametrize("arch, layers", MODELS)
def test_converted_model_takes_a_step(arch, layers, rule):
    overrides = [f"method={rule}", "model=torchvision", f"model.arch={arch}"]
    module, x, y = small_module(overrides, SPEC, batch=8)
    assert len(module.net.blocks) == layers
    before = [p.detach().clone() for p in module.net.parameters()]
    # Two steps: torchvision zero-initialises ViT's head, so the first bp step reaches only the head.
    train_batches(module, x, y, batch_size=4)
    unchanged = [n for (n, p), a in zip(module.net.named_parameters(), before) if torch.equal(a, p)]
    assert not unchanged  # every block and the head learn (dgl: each block from its own aux head)
    assert torch.isfinite(module.net(x)).all()


def test_blocks_group_layers_and_other_input_shapes():
    net = build("mobilenet_v2", "model.blocks=4", spec=InputSpec(1, 28, 7))  # 1 channel, 28 px, 7 classes
    assert len(net.blocks) == 4 and net(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    vit = build("vit_b_32", spec=InputSpec(3, 64, 5))
    assert vit.blocks[0](torch.randn(2, 3, 64, 64)).shape == (2, 5, 768)  # class token + 2x2 patches
    assert vit(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_unknown_families_and_bad_vit_sizes_are_one_line():
    with pytest.raises(ConfigError, match=r"model.arch='densenet121' is not a torchvision classifier the converter "
                                          r"splits; supported families: resnet \(resnet18, \.\.\.\), vgg"):
        compose_and_check(["model=torchvision", "model.arch=densenet121"])
    with pytest.raises(ConfigError, match="the input size 30 must be divisible by 16"):
        build("vit_b_16", spec=InputSpec(3, 30, 10))


def compose_and_check(overrides):
    from layerwise.config.schema import validate

    return validate(compose_cfg(overrides))

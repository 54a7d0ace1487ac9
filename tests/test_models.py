import pytest
import torch
from torch import nn

from conftest import compose_cfg
from layerwise.errors import ConfigError
from layerwise.models import InputSpec, build_network, group_layers

CIFAR = InputSpec(3, 32, 10)


def convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_basic_cnn_is_the_thesis_architecture():
    net = build_network(compose_cfg(["model=basic_cnn"]).model, CIFAR)
    assert len(net.blocks) == 3
    for block in net.blocks:
        (conv,) = convs(block)
        assert (conv.out_channels, conv.kernel_size, conv.padding) == (128, (5, 5), (2, 2))
        assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    linears = [m for m in net.head.modules() if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(128 * 4 * 4, 256), (256, 10)]
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name, n_convs", [("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16)])
def test_vgg_plans_end_in_512x1x1_and_a_linear(name, n_convs):
    net = build_network(compose_cfg([f"model={name}"]).model, CIFAR)
    assert len(net.blocks) == n_convs == len(convs(net))
    assert net.block_outputs(torch.randn(2, 3, 32, 32))[-1].shape == (2, 512, 1, 1)
    assert [type(m) for m in net.head] == [nn.Flatten, nn.Linear]


def test_vgg11c_keeps_4x4_maps_and_an_mlp_head():
    net = build_network(compose_cfg(["model=vgg11c"]).model, CIFAR)
    assert len(convs(net)) == 8 and sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 3
    assert net.block_outputs(torch.randn(2, 3, 32, 32))[-1].shape == (2, 512, 4, 4)
    assert sum(isinstance(m, nn.Linear) for m in net.head.modules()) == 2


def test_vgg8b_is_noklands_plan():
    net = build_network(compose_cfg(["model=vgg8b"]).model, CIFAR)
    assert [c.out_channels for c in convs(net)] == [128, 256, 256, 512, 512, 512]
    assert net.block_outputs(torch.randn(2, 3, 32, 32))[-1].shape == (2, 512, 2, 2)
    assert [m.out_features for m in net.head.modules() if isinstance(m, nn.Linear)] == [1024, 10]


def test_mlp_widths_and_options():
    cfg = compose_cfg(["model=mlp", "model.widths=[64,32]", "model.dropout=0.3", "model.head_hidden=[16]"]).model
    net = build_network(cfg, InputSpec(1, 8, 10))
    assert len(net.blocks) == 2
    assert net.block_outputs(torch.randn(4, 1, 8, 8))[-1].shape == (4, 32)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in net.head.modules())


def test_circular_padding_reaches_every_conv():
    net = build_network(compose_cfg(["model=basic_cnn", "model.padding_mode=circular"]).model, CIFAR)
    assert {c.padding_mode for c in convs(net)} == {"circular"}


def test_block_grouping():
    layers = [nn.Identity() for _ in range(5)]
    assert len(group_layers(layers, None)) == 5
    assert [len(b) if isinstance(b, nn.Sequential) else 1 for b in group_layers(layers, 2)] == [3, 2]
    assert [len(b) if isinstance(b, nn.Sequential) else 1 for b in group_layers(layers, [1, 4])] == [1, 4]
    with pytest.raises(ConfigError, match="summing to the 5 layers"):
        group_layers(layers, [2, 2])
    net = build_network(compose_cfg(["model=vgg16", "model.blocks=4"]).model, CIFAR)
    assert len(net.blocks) == 4 and len(convs(net)) == 13


def test_too_many_pools_for_the_image_size_is_a_clear_error():
    with pytest.raises(ConfigError, match="data.image_size >= 32"):
        build_network(compose_cfg(["model=vgg16"]).model, InputSpec(1, 16, 10))

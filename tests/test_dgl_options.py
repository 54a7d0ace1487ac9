"""DGL's thesis options against their math: direct-global gradient mixing and frozen blocks."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import train_batches
from layerwise.errors import ConfigError
from test_rule_math import make


def aux_output_grad(w: float):
    """The gradient that block 0's signal sends into its aux head's logits (via the last layer's bias)."""
    _, module, x, y = make("dgl", ["method.direct_global=true", f"method.last_gradient_weight={w}"])
    net, rule = module.net, module.rule
    buffers = [b.clone() for b in net.buffers()]
    rule.begin_batch(net, x, y)
    assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers())), "the global pass must not move BN stats"
    h = net.blocks[0](x)
    signal = rule.block_signal(0, h, y)
    signal.surrogate(h).backward()
    with torch.no_grad():
        global_error = (net(x).softmax(-1) - F.one_hot(y, 5)) / len(y)
    for b, v in zip(net.buffers(), buffers):
        b.copy_(v)
    local_error = (signal.logits.softmax(-1) - F.one_hot(y, 5)) / len(y)
    bias = rule.aux["0"][-1][-1].bias  # aux = Sequential(mlp(...)); the mlp's last Linear
    return bias.grad, local_error.detach().sum(0), global_error.sum(0), signal


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0])
def test_direct_global_mixes_the_heads_error_into_aux_outputs(w):
    grad, local, global_, signal = aux_output_grad(w)
    torch.testing.assert_close(grad, (1 - w) * local + w * global_, atol=1e-6, rtol=1e-5)
    assert torch.isfinite(signal.loss)  # the reported loss stays the aux cross-entropy


def test_direct_global_with_zero_weight_trains_exactly_like_dgl():
    _, plain, x, y = make("dgl", ["optimizer.momentum=0"])
    _, mixed, _, _ = make("dgl", ["optimizer.momentum=0", "method.direct_global=true",
                                  "method.last_gradient_weight=0"])
    train_batches(plain, x, y, batch_size=8)
    train_batches(mixed, x, y, batch_size=8)
    for a, b in zip(plain.parameters(), mixed.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_direct_global_refuses_aux_outputs_of_another_shape():
    _, module, x, _ = make("dgl", ["method.direct_global=true"])
    module.rule.aux["0"] = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ConfigError, match="direct_global"):
        module.rule._check_global_shapes(module.net, x)


def test_weight_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="last_gradient_weight"):
        make("dgl", ["method.direct_global=true", "method.last_gradient_weight=1.5"])


def params_of(module_):
    return [p.detach().clone() for p in module_.parameters()]


def test_blocks_before_the_first_trainable_one_stay_at_init():
    _, module, x, y = make("dgl", ["method.first_trainable_block=1"])
    before = [params_of(b) for b in module.net.blocks]
    assert sorted(module.rule.aux) == ["1"]
    assert [g.name for g in module.groups] == ["block1", "block2+head"]
    train_batches(module, x, y, batch_size=8)
    after = [params_of(b) for b in module.net.blocks]
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
    assert not any(torch.equal(a, b) for a, b in zip(before[1], after[1]))


def test_random_features_trains_only_the_head():
    _, module, x, y = make("random_features")
    blocks_before, head_before = params_of(module.net.blocks), params_of(module.net.head)
    assert [g.name for g in module.groups] == ["head"] and len(module.rule.aux) == 0
    train_batches(module, x, y, batch_size=8)
    assert all(torch.equal(a, b) for a, b in zip(blocks_before, params_of(module.net.blocks)))
    assert not any(torch.equal(a, b) for a, b in zip(head_before, params_of(module.net.head)))


@pytest.mark.parametrize("value", [4, -1, "two"])
def test_first_trainable_block_out_of_range_is_refused(value):
    with pytest.raises(ConfigError, match="first_trainable_block"):
        make("dgl", [f"method.first_trainable_block={value}"])


# ----------------------------------------------------------------------------- Belilovsky et al.'s aux heads
def _layers(head):
    return [(type(m).__name__, tuple(m.weight.shape) if hasattr(m, "weight") and m.weight is not None
             else None) for m in head if not isinstance(m, nn.Sequential)]


@pytest.mark.parametrize("sr", [False, True])
def test_dgl_paper_head_pools_to_2x2_then_three_bn_layers_of_width_4c(sr):
    from omegaconf import OmegaConf

    from layerwise.rules.dgl import build_aux_head

    cfg = OmegaConf.create({"type": "dgl_paper_sr" if sr else "dgl_paper", "hidden_dim": 256, "n_hidden_layers": 1,
                            "pool_size": None, "cnn_channels": 128, "cnn_layers": 1})
    head = build_aux_head(torch.Size((8, 16, 16)), 10, cfg)
    assert isinstance(head[0], nn.AdaptiveAvgPool2d) and head[0].output_size == (4, 4)  # ceil(16/4)
    sr_layers = [("Conv2d", (8, 8, 1, 1)), ("BatchNorm2d", (8,)), ("ReLU", None)] * 3 if sr else []
    mlp = [("Linear", (32, 32)), ("BatchNorm1d", (32,)), ("ReLU", None)] * 3  # 4C = 32
    assert _layers(head)[1:] == [*sr_layers, ("AdaptiveAvgPool2d", None), ("Flatten", None), *mlp,
                                 ("Linear", (10, 32))]
    assert all(m.bias is None for m in head if isinstance(m, nn.Conv2d))
    x = torch.randn(6, 8, 16, 16)
    assert head(x).shape == (6, 10)
    if not sr:  # the two pools average the map into 2x2 quadrants
        pooled = x.view(6, 8, 2, 8, 2, 8).mean((3, 5)).flatten(1)
        torch.testing.assert_close(head[3](pooled), head[3](head[2](head[1](head[0](x)))))


def test_dgl_paper_aux_type_builds_through_the_rule_and_refuses_flat_blocks():
    from layerwise.rules.dgl import build_aux_head

    _, module, x, y = make("dgl", ["method.aux.type=dgl_paper"])
    rule = module.rule
    assert "aux dgl_paper" in rule.describe()
    assert [head[-1].in_features for head in rule.aux.values()] == [4 * 4, 4 * 6]  # blocks of 4 and 6 channels
    h = module.net.blocks[0](x)
    assert rule.block_signal(0, h, y).logits.shape == (len(x), 5)
    with pytest.raises(ConfigError, match="method.aux.type=dgl_paper needs conv blocks"):
        build_aux_head(torch.Size((32,)), 5, rule.cfg.aux)

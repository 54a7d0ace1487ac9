"""InfoPro against its math (lambda schedule, SupCon, one real step vs. a hand computation) and in training."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import DIGITS, TINY, compose_cfg, fit_cfg, train_batches
from layerwise.errors import ConfigError
from layerwise.methods import build_rule
from layerwise.methods.infopro import lambda_schedule, supcon_loss
from layerwise.models import InputSpec, LayerGroup, build_network, regroup
from layerwise.module import LayerwiseModule

SPEC = InputSpec(3, 8, 5)
SGD = ["optimizer.lr=0.1", "optimizer.momentum=0", "optimizer.weight_decay=0"]


def make(extra=(), spec=SPEC):
    cfg = compose_cfg(["model=basic_cnn", "model.channels=[4,6,8]", "model.kernel_size=3", "model.head_hidden=[16]",
                       "method=infopro", "method.aux.hidden_dim=12", "method.decoder_channels=5",
                       "method.feature_dim=8", "optimizer.scheduler.name=none", *extra])
    torch.manual_seed(0)
    net = build_network(cfg.model, spec)
    rule = build_rule(cfg.method)
    x = torch.randn(16, spec.channels, spec.size, spec.size)
    y = torch.arange(16) % spec.num_classes
    rule.setup(net, x, spec.num_classes)
    module = LayerwiseModule(net, rule, cfg.optimizer, spec.num_classes, x[:2], max_epochs=1)
    return module, x, y


def test_lambdas_interpolate_linearly_over_the_local_modules():
    assert lambda_schedule([5.0, 0.5], 3) == pytest.approx([5.0, 2.75, 0.5])
    assert lambda_schedule([1.0, 0.0], 5) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert lambda_schedule([2.0, 7.0], 1) == [2.0]  # one local module: t = 0
    module, _, _ = make(["method.num_modules=4", "model.channels=[4,4,4,4]", "method.pred_weight=[0.5,2.0]"],
                        InputSpec(3, 16, 5))
    assert module.rule.recon_weights == pytest.approx([5.0, 2.75, 0.5])
    assert module.rule.pred_weights == pytest.approx([0.5, 1.25, 2.0])


def test_supcon_matches_a_hand_computation():
    # Anchors 0 and 1 are positives of each other; anchor 2 (alone in its class) is left out.
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    t = 0.5
    a0 = -0.6 / t + math.log(math.exp(0.6 / t) + math.exp(0.0))
    a1 = -0.6 / t + math.log(math.exp(0.6 / t) + math.exp(0.8 / t))
    assert supcon_loss(z, y, t).item() == pytest.approx((a0 + a1) / 2, rel=1e-6)
    # Two identical features of one class and a different one: positives already maximally similar.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # float32 rounds ~6e-7 away
    assert supcon_loss(z, y, 0.07).item() == pytest.approx(math.log1p(math.exp(-1 / 0.07)), rel=1e-4)
    # An anchor with two positives averages their log-probabilities.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    y3 = torch.tensor([0, 0, 0])
    lp = lambda s, others: s - math.log(sum(math.exp(o) for o in others))  # noqa: E731
    per_anchor = [(lp(0.0, [0.0, 0.6]) + lp(0.6, [0.0, 0.6])) / 2,
                  (lp(0.0, [0.0, 0.8]) + lp(0.8, [0.0, 0.8])) / 2,
                  (lp(0.6, [0.6, 0.8]) + lp(0.8, [0.6, 0.8])) / 2]
    assert supcon_loss(z, y3, 1.0).item() == pytest.approx(-sum(per_anchor) / 3, rel=1e-6)
    # No positives at all: zero, still differentiable.
    zz = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    loss = supcon_loss(zz, torch.tensor([0, 1, 2]), 0.07)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(zz.grad, torch.zeros_like(zz))


def test_one_step_of_each_module_equals_its_local_loss_gradient():
    lr = 0.1
    module, x, y = make(SGD)
    ref_net, ref_rule = copy.deepcopy(module.net), copy.deepcopy(module.rule)
    n = len(ref_net.blocks)
    assert n == 3 and ref_rule.recon_weights == [5.0, 0.5] and ref_rule.pred_weights == [1.0, 1.0]

    flat = x.flatten(2)
    target = ((flat - flat.min(2, keepdim=True).values)
              / (flat.max(2, keepdim=True).values - flat.min(2, keepdim=True).values)).view_as(x)
    expected = {}
    h = x
    for i, block in enumerate(ref_net.blocks):
        out = block(h.detach())
        if i < n - 1:
            dec, aux = ref_rule.decoders[i], ref_rule.label_heads[i]
            up = F.interpolate(out, size=(8, 8), mode="bilinear", align_corners=True)
            recon = F.binary_cross_entropy(torch.sigmoid(dec.net(up)), target)
            loss = ref_rule.recon_weights[i] * recon + ref_rule.pred_weights[i] * F.cross_entropy(aux(out), y)
            params = [*block.parameters(), *dec.parameters(), *aux.parameters()]
        else:
            loss = F.cross_entropy(ref_net.head(out), y)
            params = [*block.parameters(), *ref_net.head.parameters()]
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            expected[id(p)] = p.detach() - lr * g
        h = out
    ref_params = [*ref_net.parameters(), *ref_rule.parameters()]
    before = [p.detach().clone() for p in [*module.net.parameters(), *module.rule.parameters()]]

    train_batches(module, x, y, batch_size=len(x))

    got = [*module.net.parameters(), *module.rule.parameters()]
    assert len(got) == len(ref_params) == len(expected)
    for p_ref, p_got, p_before in zip(ref_params, got, before):
        assert not torch.equal(p_got, p_before), "every module, decoder and aux head must be trained"
        torch.testing.assert_close(p_got.detach(), expected[id(p_ref)], atol=1e-6, rtol=1e-5)
    assert [g.name for g in module.groups] == ["block0", "block1", "block2+head"]
    assert module.meter._live == 0  # every local graph was freed by its backward


def test_num_modules_regroups_the_layers_and_trains():
    module, x, y = make(["method.num_modules=2"])
    net = module.net
    assert len(net.blocks) == 2 and isinstance(net.blocks[0], LayerGroup) and len(net.blocks[0]) == 2
    out_channels = [[c.out_channels for c in b.modules() if isinstance(c, nn.Conv2d)] for b in net.blocks]
    assert out_channels == [[4, 6], [8]]
    assert [type(m) for m in net.blocks[1]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]  # one layer
    assert len(module.rule.decoders) == 1 and module.rule.recon_weights == [5.0]
    assert [g.name for g in module.groups] == ["block0", "block1+head"]
    before = [p.detach().clone() for p in net.parameters()]
    train_batches(module, x, y, batch_size=8)
    assert all(not torch.equal(p, b) for p, b in zip(net.parameters(), before))


def test_regroup_keeps_the_layers_and_state_dict_keys():
    cfg = compose_cfg(["model=basic_cnn", "model.channels=[4,6,8]", "model.blocks=2"]).model
    net = build_network(cfg, SPEC)
    keys = list(net.state_dict())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    regroup(net, [1, 2])
    assert [len(b) for b in net.blocks] == [4, 2] and isinstance(net.blocks[1], LayerGroup)  # a layer; 2 layers
    assert [m for m in net.modules() if isinstance(m, nn.Conv2d)] == convs
    regroup(net, 2)
    assert list(net.state_dict()) == keys


@pytest.mark.parametrize("overrides, match", [
    (["method.recon_loss=l1"], "recon_loss='l1' is not known"),
    (["method.label_loss=nce"], "label_loss='nce' is not known"),
    (["method.recon_weight=[1.0,-1.0]"], "negative weight"),
    (["method.recon_weight=[0,1]", "method.pred_weight=[0,1]"], "both 0"),
    (["method.pred_weight=[1.0]"], r"\[start, end\] pair"),
    (["method.pred_weight=1.0"], r"\[start, end\] pair"),
    (["method.num_modules=2", "method.split=[2,1]"], "set one of them"),
    (["method.num_modules=1"], "between 2 and the number of layers"),
    (["method.split=[3]"], "at least 2 positive sizes"),
    (["method.split=[1,1]"], "summing to the 3 layers"),
    (["model.blocks=1"], "at least 2 modules"),
])
def test_config_errors_name_the_fix(overrides, match):
    with pytest.raises(ConfigError, match=match):
        make(overrides)


def test_infopro_learns_digits(tmp_path):
    summary = fit_cfg([*DIGITS, "method=infopro"], tmp_path / "run")
    assert summary["test_acc"] > 0.85  # measured 0.98 after 3 epochs; chance is 0.10


@pytest.mark.parametrize("extra", [
    ["model=basic_cnn", "model.channels=[8,8]", "method.label_loss=contrast", "method.recon_loss=mse"],
    ["model=mlp", "model.widths=[32,32,32]", "method.num_modules=2"],
    ["model=mlp", "model.widths=[32,32]", "method.label_loss=contrast"],
])
def test_variants_train(tmp_path, extra):
    summary = fit_cfg([*TINY, "method=infopro", *extra], tmp_path / "run")
    assert summary["status"] == "completed" and summary["test_acc"] is not None

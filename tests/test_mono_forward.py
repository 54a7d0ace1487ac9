"""Mono-Forward (Gong et al. 2025) against its math: each layer's update is the local cross-entropy of its
goodness G_i = a_i M_i^T, with the paper's closed-form gradients."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import DIGITS_MLP, compose_cfg, fit_cfg, train_batches
from layerwise.core.module import LayerwiseModule
from layerwise.models import InputSpec, build_network
from layerwise.rules import build_rule

SPEC = InputSpec(3, 8, 5)
LR = 0.1


def make(extra=()):
    cfg = compose_cfg(["model=basic_cnn", "model.channels=[4,6,8]", "model.kernel_size=3", "model.head_hidden=[]",
                       "method=mono_forward", "optimizer.lr=0.1", "optimizer.momentum=0", "optimizer.weight_decay=0",
                       "optimizer.scheduler.name=none", *extra])
    torch.manual_seed(0)
    net, rule = build_network(cfg.model, SPEC), build_rule(cfg.method)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    rule.setup(net, x, SPEC.num_classes)
    return LayerwiseModule(net, rule, cfg.optimizer, SPEC.num_classes, x[:2], max_epochs=1), x, y


def test_each_layer_and_its_projection_step_on_the_local_cross_entropy_of_its_goodness():
    module, x, y = make()
    net, rule = copy.deepcopy(module.net), copy.deepcopy(module.rule)
    n, onehot = len(net.blocks), F.one_hot(y, 5).float()
    expected = {}
    a = x
    for i, block in enumerate(net.blocks):
        a = block(a.detach())                            # the layer sees a detached input
        flat = a.flatten(1)
        linear = rule.projections[str(i)][-1] if i < n - 1 else net.head[-1]  # the last layer's M is the head
        goodness = flat @ linear.weight.t() + (linear.bias if linear.bias is not None else 0)  # G = a M^T (+ b)
        dG = (goodness.softmax(-1) - onehot) / len(y)    # d CE / d G, by hand
        expected[id(linear.weight)] = linear.weight - LR * dG.t() @ flat     # dL/dM = dG^T a
        if linear.bias is not None:
            expected[id(linear.bias)] = linear.bias - LR * dG.sum(0)
        dA = (dG @ linear.weight).reshape(a.shape)       # dL/da = dG M: the only error the layer receives
        params = list(block.parameters())
        for p, g in zip(params, torch.autograd.grad(a, params, grad_outputs=dA.detach())):
            expected[id(p)] = p - LR * g
    ref = [*net.parameters(), *rule.parameters()]
    assert len(expected) == len(ref)

    train_batches(module, x, y, batch_size=len(x))

    for p_ref, p_got in zip(ref, [*module.net.parameters(), *module.rule.parameters()]):
        torch.testing.assert_close(p_got.detach(), expected[id(p_ref)].detach(), atol=1e-6, rtol=1e-5)


def test_projections_flatten_or_pool_and_have_no_bias():
    module, x, _ = make()
    shapes = [tuple(p[-1].weight.shape) for p in module.rule.projections.values()]
    assert shapes == [(5, 4 * 4 * 4), (5, 6 * 2 * 2)]
    assert all(p[-1].bias is None for p in module.rule.projections.values())
    pooled, _, _ = make(["method.pool_size=1", "method.bias=true"])
    assert [tuple(p[-1].weight.shape) for p in pooled.rule.projections.values()] == [(5, 4), (5, 6)]
    assert "M_last = the head (one Linear)" in module.rule.describe()


def test_pipeline_accepts_it():
    from layerwise.runs.pipeline import check_pipeline_rule

    assert check_pipeline_rule(compose_cfg(["trainer=pipeline", "method=mono_forward"])).name == "mono_forward"


def test_bad_option_is_one_line():
    from layerwise.errors import ConfigError

    with pytest.raises(ConfigError, match=r"method.pool_size=0 is out of range"):
        build_rule(compose_cfg(["method=mono_forward", "method.pool_size=0"]).method)


def test_mono_forward_learns_digits(tmp_path):
    summary = fit_cfg([*DIGITS_MLP, "method=mono_forward", "trainer.max_epochs=2"], tmp_path)
    assert summary["test_acc"] > 0.84 and summary["block_test_acc"][0] > 0.89  # measured 0.878, block0 0.928

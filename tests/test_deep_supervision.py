"""Deep supervision (Lee et al. 2015) and contrastive deep supervision (Zhang et al. 2022) against their math."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import DIGITS, compose_cfg, fit_cfg, train_batches
from layerwise.core.module import LayerwiseModule
from layerwise.errors import ConfigError
from layerwise.models import InputSpec, build_network
from layerwise.rules import build_rule
from layerwise.rules.deep_supervision import companion_weight, shifted_and_flipped, supcon_loss

SPEC = InputSpec(3, 8, 5)
SGD = ["optimizer.lr=0.1", "optimizer.momentum=0", "optimizer.weight_decay=0", "optimizer.scheduler.name=none"]


def make(extra=()):
    cfg = compose_cfg(["model=basic_cnn", "model.channels=[4,6,8]", "model.kernel_size=3", "model.head_hidden=[16]",
                       "method=deep_supervision", "method.aux.hidden_dim=12", *SGD, *extra])
    torch.manual_seed(0)
    net, rule = build_network(cfg.model, SPEC), build_rule(cfg.method)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    rule.setup(net, x, SPEC.num_classes)
    return LayerwiseModule(net, rule, cfg.optimizer, SPEC.num_classes, x[:2], max_epochs=1), x, y


def stepped_like(module, objective, lr=0.1):
    """Parameters after one SGD step on `objective(net, rule)` computed on copies (net, rule)."""
    net, rule = copy.deepcopy(module.net), copy.deepcopy(module.rule)
    params = [*net.parameters(), *rule.parameters()]
    grads = torch.autograd.grad(objective(net, rule), params, allow_unused=True)
    return [p.detach() - lr * g if g is not None else p.detach() for p, g in zip(params, grads)]


def assert_trained_to(module, expected):
    got = [*module.net.parameters(), *module.rule.parameters()]
    assert len(got) == len(expected)
    for p, e in zip(got, expected):
        torch.testing.assert_close(p.detach(), e, atol=1e-6, rtol=1e-5)


def test_companion_weight_is_the_papers_linear_decay():
    assert companion_weight(0.3, 5, 10, "none", None, None) == 0.3
    assert companion_weight(0.3, 0, 10, "linear", None, None) == 0.3
    assert companion_weight(0.3, 5, 10, "linear", None, None) == pytest.approx(0.3 * (1 - 5 / 10))  # N = max_epochs
    assert companion_weight(0.3, 5, 10, "linear", 20, None) == pytest.approx(0.3 * (1 - 5 / 20))
    assert companion_weight(0.3, 30, 10, "linear", 20, None) == 0.0
    assert companion_weight(0.3, 4, 10, "none", None, 4) == 0.0 and companion_weight(0.3, 3, 10, "none", None, 4) == 0.3


def test_standard_update_is_the_gradient_of_head_plus_weighted_companions():
    """Lee et al.: one backward of CE(head) + alpha * sum_i [CE(aux_i) - gamma]_+ through the undetached network."""
    alpha, gamma = 0.3, 0.05
    module, x, y = make([f"method.alpha={alpha}", f"method.gamma={gamma}"])

    def objective(net, rule):
        h, companions = x, 0.0
        for i, block in enumerate(net.blocks):
            h = block(h)  # no detach: every block also receives the head's and later companions' gradients
            if i < len(net.blocks) - 1:
                companions = companions + torch.clamp(F.cross_entropy(rule.aux[str(i)](h), y) - gamma, min=0)
        return F.cross_entropy(net.head(h), y) + alpha * companions

    expected = stepped_like(module, objective)
    block0 = [p.detach().clone() for p in module.net.blocks[0].parameters()]
    train_batches(module, x, y, batch_size=len(x))
    assert_trained_to(module, expected)
    assert not all(torch.equal(a, b) for a, b in zip(block0, module.net.blocks[0].parameters()))


def test_supcon_is_khosla_et_al_eq_2():
    torch.manual_seed(1)
    z1, z2 = F.normalize(torch.randn(4, 3), dim=1), F.normalize(torch.randn(4, 3), dim=1)
    y, tau = torch.tensor([0, 1, 0, 2]), 0.5
    z, labels = torch.cat([z1, z2]), torch.cat([y, y])

    def by_hand(positive):
        total = 0.0
        for i in range(8):
            others = [a for a in range(8) if a != i]
            denominator = sum(math.exp(float(z[i] @ z[a]) / tau) for a in others)
            pos = [p for p in others if positive(i, p)]
            total += -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denominator) for p in pos) / len(pos)
        return total / 8

    supcon = by_hand(lambda i, p: labels[i] == labels[p])
    simclr = by_hand(lambda i, p: p % 4 == i % 4)
    assert supcon_loss(z1, z2, y, tau).item() == pytest.approx(supcon, rel=1e-5)
    assert supcon_loss(z1, z2, None, tau).item() == pytest.approx(simclr, rel=1e-5)


def test_views_are_shifted_crops_and_flips():
    torch.manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float).reshape(2, 1, 4, 4)
    padded = F.pad(x, (1, 1, 1, 1))
    for _ in range(5):
        out = shifted_and_flipped(x, 1, True)
        for b in range(2):
            crops = [padded[b, :, dy:dy + 4, dx:dx + 4] for dy in range(3) for dx in range(3)]
            assert any(torch.equal(out[b], c) or torch.equal(out[b], c.flip(-1)) for c in crops)
    assert torch.equal(shifted_and_flipped(x, 0, False), x)


def test_contrastive_update_is_ce_on_the_first_view_plus_supcon_on_every_block():
    """Zhang et al.: CE(head(view 1)) + alpha * sum_i SupCon(normalize(proj_i(h_i))) over both views, end to end.
    Views fixed (no shift, no flip) so the hand computation sees the rule's batch."""
    alpha, tau = 0.2, 0.1
    module, x, y = make(["method.variant=contrastive", f"method.alpha={alpha}", f"method.temperature={tau}",
                         "method.proj_dim=6", "method.crop_pad=0", "method.flip=false"])

    def objective(net, rule):
        h, companions = torch.cat([x, x]), 0.0
        for i, block in enumerate(net.blocks):
            h = block(h)
            z1, z2 = F.normalize(rule.aux[str(i)](h), dim=1).split(len(y))
            companions = companions + supcon_loss(z1, z2, y, tau)
        return F.cross_entropy(net.head(h)[:len(y)], y) + alpha * companions

    expected = stepped_like(module, objective)
    train_batches(module, x, y, batch_size=len(x))
    assert_trained_to(module, expected)


def test_bad_options_are_one_line_before_any_data():
    with pytest.raises(ConfigError, match="method.decay_epochs=5 only applies to method.decay=linear"):
        build_rule(compose_cfg(["method=deep_supervision", "method.decay_epochs=5"]).method)
    with pytest.raises(ConfigError, match="method.variant"):
        build_rule(compose_cfg(["method=deep_supervision", "method.variant=supcon"]).method)


def test_pipeline_refuses_it_in_one_line():
    from layerwise.runs.pipeline import check_pipeline_rule

    with pytest.raises(ConfigError, match="method=deep_supervision sends signals backward between blocks"):
        check_pipeline_rule(compose_cfg(["trainer=pipeline", "method=deep_supervision"]))


# Digits at their native 8 px: a run costs about as much as bp's 16-px digits check (mostly fixed overhead).
DIGITS_8 = [*DIGITS, "data.image_size=8", "method=deep_supervision", "method.aux.hidden_dim=32"]


def test_deep_supervision_learns_digits(tmp_path):
    summary = fit_cfg([*DIGITS_8, "method.decay=linear"], tmp_path)
    # measured 0.978, companions 0.967 / 0.972 (3 epochs, basic_cnn)
    assert summary["test_acc"] > 0.94 and min(summary["block_test_acc"]) > 0.93


def test_contrastive_deep_supervision_learns_digits(tmp_path):
    summary = fit_cfg([*DIGITS_8, "method.variant=contrastive", "method.crop_pad=1", "method.flip=false",
                       "method.proj_dim=16"], tmp_path)
    assert summary["test_acc"] > 0.94 and summary["block_test_acc"] == []  # measured 0.983 (3 epochs)

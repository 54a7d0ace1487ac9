"""Feedback alignment and sign-symmetry against their math, and a learning check on digits."""
import copy

import pytest
import torch
from torch import nn

from conftest import DIGITS, DIGITS_MLP, compose_cfg, fit_cfg
from layerwise.config.checks import check_config
from layerwise.errors import ConfigError
from layerwise.models import InputSpec, build_network
from layerwise.rules import build_rule
from layerwise.rules.feedback import (
    FeedbackConv2d,
    FeedbackLinear,
    FixedFeedback,
    SignMagnitudeFeedback,
    convert_layers,
    exact_gradients,
    last_linear,
)


def _grads(layer, x, grad_out):
    x = x.detach().clone().requires_grad_(True)
    layer.zero_grad()
    layer(x).backward(grad_out)
    return [x.grad] + [p.grad.clone() for p in layer.parameters()]


def _feedback_copy(layer, b):
    fa = copy.deepcopy(layer)
    assert sum(convert_layers(fa, lambda m: FixedFeedback(b.clone())).values()) == 1
    return fa


LAYERS = {
    "linear": (lambda: nn.Linear(7, 5), (4, 3, 7)),  # extra leading dim: batched sequences work too
    "conv": (lambda: nn.Conv2d(3, 6, 3, padding=1), (2, 3, 8, 8)),
    "conv-stride2-pad2": (lambda: nn.Conv2d(3, 4, 5, stride=2, padding=2), (2, 3, 9, 9)),
    "conv-circular": (lambda: nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular", bias=False), (2, 2, 6, 6)),
    "conv-dilation-groups2": (lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), (2, 4, 7, 7)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_fa_with_feedback_equal_to_w_is_exactly_bp(name):
    torch.manual_seed(0)
    make, shape = LAYERS[name]
    layer = make()
    x = torch.randn(shape)
    out = layer(x)
    grad_out = torch.randn_like(out)
    fa = _feedback_copy(layer, layer.weight.detach())
    assert isinstance(fa, (FeedbackLinear, FeedbackConv2d))
    torch.testing.assert_close(fa(x), out, rtol=0, atol=0)
    for got, want in zip(_grads(fa, x, grad_out), _grads(layer, x, grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", LAYERS)
def test_fa_sends_the_error_through_b_and_keeps_the_weight_gradient_exact(name):
    torch.manual_seed(1)
    make, shape = LAYERS[name]
    layer = make()
    b = torch.randn_like(layer.weight)
    x = torch.randn(shape)
    grad_out = torch.randn_like(layer(x))
    got = _grads(_feedback_copy(layer, b), x, grad_out)
    want = _grads(layer, x, grad_out)
    # Input gradient: what the same layer with weight B would give.
    with_b = copy.deepcopy(layer)
    with_b.weight.data.copy_(b)
    torch.testing.assert_close(got[0], _grads(with_b, x, grad_out)[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[0], want[0], atol=1e-3)
    for g, w in zip(got[1:], want[1:]):  # weight (and bias) gradients are the true ones
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_exact_gradients_context_gives_bp_through_feedback_layers():
    torch.manual_seed(2)
    layer = nn.Linear(6, 3)
    fa = _feedback_copy(layer, torch.randn(3, 6))
    x, g = torch.randn(5, 6), torch.randn(5, 3)
    with exact_gradients():
        got = _grads(fa, x, g)
    for a, b in zip(got, _grads(layer, x, g)):
        torch.testing.assert_close(a, b)


def _rule_on_basic_cnn(method, extra=()):
    cfg = compose_cfg(["model=basic_cnn", "model.channels=[4,6,8]", "model.kernel_size=3", "model.head_hidden=[16]",
                       f"method={method}", *extra])
    torch.manual_seed(0)
    spec = InputSpec(3, 8, 5)
    net = build_network(cfg.model, spec)
    rule = build_rule(cfg.method)
    return net, rule, spec


@pytest.mark.parametrize("exact_last, n_linear", [(False, 2), (True, 1)])
def test_conversion_is_in_place_counts_layers_and_can_keep_the_output_layer_exact(exact_last, n_linear):
    net, rule, spec = _rule_on_basic_cnn("fa", [f"method.exact_last={str(exact_last).lower()}"])
    params = {name: p for name, p in net.named_parameters()}
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        before = net(x)
    rule.setup(net, x, spec.num_classes)
    assert rule.converted == {"Conv2d": 3, "Linear": n_linear}
    assert f"converted {3 + n_linear} layers" in rule.describe()
    assert isinstance(last_linear(net.head), FeedbackLinear) != exact_last
    assert all(p is params[name] for name, p in net.named_parameters())  # same Parameter objects: optimizers see them
    with torch.no_grad():
        torch.testing.assert_close(net(x), before)
    # B is a buffer: checkpoints carry it, and a fresh conversion loads it back.
    state = net.state_dict()
    assert sum(k.endswith("feedback.matrix") for k in state) == 3 + n_linear
    net2, rule2, _ = _rule_on_basic_cnn("fa", [f"method.exact_last={str(exact_last).lower()}"])
    torch.manual_seed(123)
    rule2.setup(net2, x, spec.num_classes)
    net2.load_state_dict(state)
    b1 = [m.feedback_weight() for m in net.modules() if isinstance(m, (FeedbackLinear, FeedbackConv2d))]
    b2 = [m.feedback_weight() for m in net2.modules() if isinstance(m, (FeedbackLinear, FeedbackConv2d))]
    assert all(torch.equal(a, b) for a, b in zip(b1, b2))


def test_feedback_is_drawn_like_w():
    net, rule, spec = _rule_on_basic_cnn("fa")
    rule.setup(net, torch.randn(2, 3, 8, 8), spec.num_classes)
    for m in net.modules():
        if isinstance(m, (FeedbackLinear, FeedbackConv2d)):
            b = m.feedback_weight()
            assert b.shape == m.weight.shape and not torch.equal(b, m.weight)
            assert 0.8 < b.std() / m.weight.std() < 1.25  # same init scheme (PyTorch's default), scale 1


def _sign_rule(variant, scale="null"):
    net, rule, spec = _rule_on_basic_cnn("sign_symmetry",
                                         [f"method.variant={variant}", f"method.feedback.scale={scale}"])
    rule.setup(net, torch.randn(2, 3, 8, 8), spec.num_classes)
    layers = [m for m in net.modules() if isinstance(m, (FeedbackLinear, FeedbackConv2d))]
    assert len(layers) == 5
    return net, rule, layers


def test_usf_feedback_is_sign_of_w_times_scale_and_follows_w():
    net, rule, layers = _sign_rule("usf", 0.25)
    for m in layers:
        torch.testing.assert_close(m.feedback_weight(), torch.sign(m.weight.detach()) * 0.25)
    m = layers[0]
    with torch.no_grad():
        m.weight.neg_()
    torch.testing.assert_close(m.feedback_weight(), torch.sign(m.weight.detach()) * 0.25)
    _, _, auto = _sign_rule("usf")
    for m in auto:  # scale null: ||B|| = ||W||
        torch.testing.assert_close(m.feedback_weight().norm(), m.weight.detach().norm())
        torch.testing.assert_close(torch.sign(m.feedback_weight()), torch.sign(m.weight.detach()))


@pytest.mark.parametrize("variant, redrawn", [("brsf", True), ("frsf", False)])
def test_random_magnitude_sign_feedback(variant, redrawn):
    net, rule, layers = _sign_rule(variant)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    first = [m.feedback_weight().clone() for m in layers]
    for m, b in zip(layers, first):
        assert torch.equal(torch.sign(b), torch.sign(m.weight.detach()))
        assert isinstance(m.feedback, SignMagnitudeFeedback)
        assert b.abs().std() > 0  # magnitudes vary, unlike usf
    rule.begin_batch(net, x, y)
    for m, b in zip(layers, first):
        assert torch.equal(torch.sign(m.feedback_weight()), torch.sign(m.weight.detach()))
        assert torch.equal(m.feedback_weight(), b) != redrawn
    with torch.no_grad():
        layers[0].weight.neg_()
    assert torch.equal(torch.sign(layers[0].feedback_weight()), torch.sign(layers[0].weight.detach()))


@pytest.mark.parametrize("overrides, match", [
    (["method=fa", "method.feedback.init=gaussian"], "method.feedback.init='gaussian' is not known"),
    (["method=fa", "method.feedback.scale=0"], "must be a number > 0"),
    (["method=sign_symmetry", "method.variant=xsf"], "choose one of usf, brsf, frsf"),
])
def test_bad_options_name_the_fix(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_rule(compose_cfg(overrides).method)


@pytest.mark.parametrize("method", ["fa", "sign_symmetry"])
@pytest.mark.parametrize("data", [DIGITS, DIGITS_MLP], ids=["cnn", "mlp"])
def test_learns_digits(method, data, tmp_path):
    summary = fit_cfg([*data, f"method={method}"], tmp_path)
    assert summary["test_acc"] > 0.6, summary  # chance is 0.10


# ----------------------------------------------------------------------------- biotorch's uSF scale
@pytest.mark.parametrize("init, formula", [
    ("default", lambda fi, fo: 1 / (3 * fi) ** 0.5),
    ("kaiming_uniform", lambda fi, fo: (2 / fi) ** 0.5),
    ("kaiming_normal", lambda fi, fo: (2 / fi) ** 0.5),
    ("xavier_uniform", lambda fi, fo: (2 / (fi + fo)) ** 0.5),
    ("xavier_normal", lambda fi, fo: (2 / (fi + fo)) ** 0.5),
])
def test_init_std_is_the_schemes_std(init, formula):
    from layerwise.rules.feedback import init_std, random_feedback

    shape = (64, 32, 3, 3)  # fan_in 288, fan_out 576
    assert init_std(shape, init) == pytest.approx(formula(288, 576))
    drawn = random_feedback(shape, init, generator=torch.Generator().manual_seed(0))
    assert drawn.std().item() == pytest.approx(init_std(shape, init), rel=0.03)
    assert init_std((40, 10), "orthogonal") == pytest.approx(1 / 40 ** 0.5)  # orthonormal columns: 10/(40·10)


def test_usf_init_std_is_sign_of_w_times_the_fixed_init_std():
    """biotorch's uSF: B = sign(W)·sqrt(2/(fan_in+fan_out)) with xavier init, fixed while W's magnitude moves."""
    net, rule, layers = _sign_rule("usf", "init_std")
    rule2 = build_rule(compose_cfg(["method=sign_symmetry", "method.feedback.scale=init_std",
                                    "method.feedback.init=xavier_uniform"]).method)
    conv0 = layers[0]  # Conv2d(3, 4, 3x3): fan_in 27, fan_out 36
    torch.testing.assert_close(conv0.feedback_weight(), torch.sign(conv0.weight.detach()) / (3 * 27) ** 0.5)
    with torch.no_grad():
        conv0.weight.mul_(10)
    torch.testing.assert_close(conv0.feedback_weight(), torch.sign(conv0.weight.detach()) / (3 * 27) ** 0.5)
    net2, _, _ = _rule_on_basic_cnn("sign_symmetry", [])
    rule2.setup(net2, torch.randn(2, 3, 8, 8), 5)
    conv0 = next(m for m in net2.modules() if isinstance(m, FeedbackConv2d))
    torch.testing.assert_close(conv0.feedback_weight(), torch.sign(conv0.weight.detach()) * (2 / (27 + 36)) ** 0.5)
    assert "scale init_std" in rule2.describe()


@pytest.mark.parametrize("overrides, match", [
    (["method=fa", "method.feedback.scale=init_std"], "scale of method=sign_symmetry method.variant=usf only"),
    (["method=sign_symmetry", "method.variant=brsf", "method.feedback.scale=rms"], "usf only"),
    (["method=sign_symmetry", "method.feedback.scale=big"], "must be a number > 0 or rms | init_std"),
])
def test_scale_words_belong_to_usf(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_rule(compose_cfg(overrides).method)
    with pytest.raises(ConfigError, match=match):
        check_config(compose_cfg(overrides))

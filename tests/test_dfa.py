"""Direct feedback alignment: its update against the paper's formula, its feedback matrices, the head split,
the zero-derivative activation check, and learning on digits."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_cfg, fit_cfg, one_backward, rule_on_random_batch, run_cli, train_batches
from layerwise.config.checks import check_config
from layerwise.core.module import LayerwiseModule
from layerwise.errors import ConfigError
from layerwise.models import InputSpec
from layerwise.rules import build_rule

SPEC = InputSpec(1, 4, 5)  # 16 inputs, 5 classes
CNN = ["model=basic_cnn", "model.channels=[4,6]", "model.kernel_size=3", "model.head_hidden=[7]"]


def make(overrides, spec=SPEC, n=12):
    return rule_on_random_batch("dfa", overrides, spec, n)



@pytest.mark.parametrize("injection", ["post", "pre"])
def test_hidden_update_is_feedback_times_input(injection):
    """One hidden tanh layer: dW1 = (B e ⊙ f'(a)) hᵀ (post) or (B e) hᵀ (pre); the output layer's is exact."""
    _, net, rule, x, y = make(["model=mlp", "model.widths=[6]", "model.head_hidden=[]", "model.activation=tanh",
                               f"method.injection={injection}"])
    one_backward(net, rule, x, y)

    linear1, linear2 = net.blocks[0][1], net.head[-1]
    h = x.flatten(1)
    a = h @ linear1.weight.T + linear1.bias
    z = torch.tanh(a)
    logits = z @ linear2.weight.T + linear2.bias
    e = (logits.softmax(-1) - F.one_hot(y, 5)) / len(y)  # dL/dlogits of the mean cross-entropy
    be = e @ rule.feedback0  # B is (classes, hidden): e·B, the block's feedback
    delta = be * (1 - z ** 2) if injection == "post" else be
    torch.testing.assert_close(linear1.weight.grad, delta.T @ h)
    torch.testing.assert_close(linear1.bias.grad, delta.sum(0))
    torch.testing.assert_close(linear2.weight.grad, e.T @ z)
    torch.testing.assert_close(linear2.bias.grad, e.sum(0))


@pytest.mark.parametrize("injection", ["post", "pre"])
def test_conv_blocks_receive_feedback_shaped_like_their_output(injection):
    _, net, rule, x, y = make([*CNN, f"method.injection={injection}"], spec=InputSpec(3, 8, 5))
    assert len(net.blocks) == 3 and len(net.head) == 1  # the head's hidden Linear+act became block 2
    # What reaches each block: its output's gradient (post) or its last activation's input's (pre).
    seen, grads = {}, {}
    for i, block in enumerate(net.blocks):
        act = [m for m in block.modules() if type(m).__name__ == "ReLU"][-1]
        where = block if injection == "post" else act

        def keep(module, args, out, i=i):
            t = out if injection == "post" else args[0]
            seen[i] = t
            t.register_hook(lambda g: grads.__setitem__(i, g))

        where.register_forward_hook(keep)
    one_backward(net, rule, x, y)

    logits = net.head(seen[2].detach() if injection == "post" else torch.relu(seen[2]).detach())
    e = (logits.softmax(-1) - F.one_hot(y, 5)) / len(y)
    pre_pool = {"post": [(4, 4, 4), (6, 2, 2), (7,)], "pre": [(4, 8, 8), (6, 4, 4), (7,)]}[injection]
    for i in range(3):
        b = rule.feedback(i)
        assert tuple(b.shape) == (5, *pre_pool[i]) == (5, *seen[i].shape[1:])
        torch.testing.assert_close(grads[i], (e @ b.flatten(1)).view_as(seen[i]))


def test_feedback_matrices_are_distinct_buffers_fixed_by_training():
    cfg, net, rule, x, y = make(["model=mlp", "model.widths=[8,8]", "model.head_hidden=[8]"])
    module = LayerwiseModule(net, rule, cfg.optimizer, 5, x[:2])
    before = [rule.feedback(i).clone() for i in range(3)]
    weights = [p.detach().clone() for p in net.parameters()]
    assert all(before[0].shape == b.shape for b in before)
    assert not torch.equal(before[0], before[1]) and not torch.equal(before[1], before[2])
    assert {f"rule.feedback{i}" for i in range(3)} <= set(module.state_dict())
    assert not any(p is b for p in module.parameters() for b in before)

    train_batches(module, x, y, batch_size=4)
    for i, b in enumerate(before):
        assert torch.equal(rule.feedback(i), b)
    assert all(not torch.equal(p, w) for p, w in zip(net.parameters(), weights)), "every layer trains"
    assert module.meter._live == 0  # every kept block graph was backpropagated and freed
    assert rule.describe() == "dfa (post-activation, 3 feedback matrices, 1 head layer moved into blocks)"
    assert [g.name for g in module.groups] == ["block0", "block1", "block2", "head"]


def test_head_split_is_deterministic_for_checkpoints():
    keys = [list(make(CNN, spec=InputSpec(3, 8, 5))[1].state_dict()) for _ in range(2)]
    assert keys[0] == keys[1] and "head.0.weight" in keys[0] and "blocks.2.1.weight" in keys[0]


def test_pre_activation_hooks_follow_a_deepcopy_of_net_and_rule():
    _, net, rule, x, y = make([*CNN, "method.injection=pre"], spec=InputSpec(3, 8, 5))
    net_copy, rule_copy = copy.deepcopy((net, rule))
    one_backward(net_copy, rule_copy, x, y)
    assert all(p.grad is None for p in net.parameters()), "the copy must not reach the original"
    one_backward(net, rule, x, y)
    for p, q in zip(net.parameters(), net_copy.parameters()):
        torch.testing.assert_close(q.grad, p.grad)
    copy.deepcopy((net, rule))  # nothing from the batch (a non-leaf tensor) is left behind


@pytest.mark.parametrize("override, message", [
    ("method.injection=middle", "method.injection='middle' is not known"),
    ("method.feedback.init=gaussian", "method.feedback.init='gaussian' is not known"),
    ("method.feedback.scale=0", "method.feedback.scale=0 must be a number > 0"),
])
def test_bad_options_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        build_rule(compose_cfg(["method=dfa", override]).method)


def test_zero_derivative_activations_need_a_rule_that_skips_f_prime(tmp_path):
    check_config(compose_cfg(["method=dfa", "method.injection=pre", "model.activation=sign"]))
    check_config(compose_cfg(["method=dfa", "method.injection=post", "model.activation=step"]))  # runs, warns
    with pytest.raises(ConfigError, match="use model.activation=relu, or method=dfa method.injection=pre"):
        check_config(compose_cfg(["method=dgl", "model.activation=step"]))

    res = run_cli(["method=bp", "model.activation=sign", "logger=none"], tmp_path, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert ("model.activation=sign has zero derivative, so method=bp cannot train through it; "
            "use model.activation=relu, or method=dfa method.injection=pre") in res.stderr


DIGITS = ["data=digits", "data.image_size=16", "trainer.max_epochs=3", "trainer.accelerator=cpu", "logger=none",
          "trainer.progress_bar=false", "method=dfa"]


@pytest.mark.parametrize("model, floor", [
    (["model=mlp", "model.widths=[128]", "model.head_hidden=[]"], 0.85),
    (["model=basic_cnn", "model.channels=[16,16,16]", "model.head_hidden=[64]"], 0.8),
], ids=["mlp", "basic_cnn"])
def test_learns_digits(model, floor, tmp_path):
    """Chance is 0.10; default SGD (lr 0.05, momentum 0.9) and feedback (default init, scale 0.3)."""
    assert fit_cfg([*DIGITS, *model], tmp_path)["test_acc"] > floor


def test_sign_units_learn_with_pre_activation_feedback_only(tmp_path):
    """With sign units, post-injection trains no hidden weight: only the head learns, a linear readout of 16
    random binary features (~0.55). Pre-injection trains the features too (~0.85)."""
    sign = [*DIGITS, "model=mlp", "model.widths=[16]", "model.head_hidden=[]", "model.activation=sign",
            "optimizer.lr=0.2"]
    pre = fit_cfg([*sign, "method.injection=pre"], tmp_path / "pre")["test_acc"]
    post = fit_cfg([*sign, "method.injection=post"], tmp_path / "post")["test_acc"]
    assert pre > 0.7 and pre > post + 0.15, (pre, post)


def test_post_injection_gives_sign_units_no_gradient_and_pre_does():
    grads = {}
    for injection in ("post", "pre"):
        _, net, rule, x, y = make(["model=mlp", "model.widths=[6]", "model.head_hidden=[]",
                                   "model.activation=sign", f"method.injection={injection}"])
        one_backward(net, rule, x, y)
        grads[injection] = net.blocks[0][1].weight.grad
    assert torch.count_nonzero(grads["post"]) == 0 and torch.count_nonzero(grads["pre"]) > 0


# ----------------------------------------------------------------------------- biotorch's conv-shared form
def _conv_shared_by_hand(e, b, in_hw, stride, padding, out_hw):
    """delta[n,c,y,x] = Σ_k e[n,k] Σ_{u,v} B[k,c,u,v] over the kernel taps (u,v) by which input (y,x) reaches an
    output position (oy,ox) = ((y+p-u)/s, (x+p-v)/s) inside the output map: e broadcast over the map, sent
    back through the kernel."""
    n, classes = e.shape
    _, channels, kh, kw = b.shape
    delta = torch.zeros(n, channels, *in_hw, dtype=torch.float64)
    for y in range(in_hw[0]):
        for x in range(in_hw[1]):
            for u in range(kh):
                for v in range(kw):
                    oy, ox = y + padding - u, x + padding - v
                    if oy % stride or ox % stride:
                        continue
                    oy, ox = oy // stride, ox // stride
                    if 0 <= oy < out_hw[0] and 0 <= ox < out_hw[1]:
                        delta[:, :, y, x] += e.double() @ b[:, :, u, v].double()
    return delta.float()


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0), (2, 2)])
def test_conv_shared_feedback_is_the_kernel_applied_to_the_broadcast_error(stride, padding):
    from layerwise.rules.dfa import conv_geometry, conv_shared_feedback

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, stride=stride, padding=padding)
    shape = torch.Size((3, 7, 7))
    geometry = conv_geometry(conv, shape, 0)
    assert geometry.out_size == tuple(conv(torch.zeros(1, *shape)).shape[2:])
    e, b = torch.randn(2, 5), torch.randn(5, 3, 3, 3)
    got = conv_shared_feedback(e, b, torch.Size((2, *shape)), geometry)
    torch.testing.assert_close(got, _conv_shared_by_hand(e, b, (7, 7), stride, padding, geometry.out_size))


def test_conv_shared_block_gets_the_shared_kernel_feedback_and_learns_from_it():
    """biotorch's DFA (xavier, scale 1): block 0 feeds a 3x3 conv, so B_0 is (classes, 4, 3, 3) and its output
    gradient is B_0 e spread by that conv's geometry; interior positions all get e·ΣB (spatially shared).
    Block 1 feeds the head's Linear through a flatten: dense, as in biotorch."""
    _, net, rule, x, y = make([*CNN, "method.feedback.shape=conv_shared", "method.feedback.init=xavier_uniform",
                               "method.feedback.scale=1.0"], spec=InputSpec(3, 8, 5))
    assert rule.feedback(0).shape == (5, 4, 3, 3) and rule.feedback(1).shape == (5, 6, 2, 2)
    assert rule.geometry[0].out_size == (4, 4) and rule.geometry[1] is None
    assert "1 conv-shared" in rule.describe()
    seen, grads = {}, {}
    for i, block in enumerate(net.blocks):
        def keep(module, args, out, i=i):
            seen[i] = out
            out.register_hook(lambda g: grads.__setitem__(i, g))
        block.register_forward_hook(keep)
    one_backward(net, rule, x, y)
    logits = net.head(seen[2].detach())
    e = (logits.softmax(-1) - F.one_hot(y, 5)) / len(y)
    torch.testing.assert_close(grads[0], _conv_shared_by_hand(e, rule.feedback(0), (4, 4), 1, 1, (4, 4)))
    torch.testing.assert_close(grads[0][:, :, 1:3, 1:3],
                               (e @ rule.feedback(0).sum((2, 3)))[:, :, None, None].expand(-1, -1, 2, 2))
    torch.testing.assert_close(grads[1], (e @ rule.feedback(1).flatten(1)).view_as(seen[1]))


def test_dense_xavier_feedback_counts_fans_of_the_classes_x_size_matrix():
    """biotorch's dense B is a (classes, size) xavier matrix: std sqrt(2/(size+classes)), not a 4-d tensor's."""
    _, net, rule, x, y = make(["model=mlp", "model.widths=[400]", "model.head_hidden=[]",
                               "method.feedback.init=xavier_uniform", "method.feedback.scale=1.0"])
    assert rule.feedback(0).std().item() == pytest.approx((2 / (400 + 5)) ** 0.5, rel=0.05)


@pytest.mark.parametrize("overrides, message", [
    (["method.feedback.shape=conv_shared", "method.injection=pre"], "use method.injection=post"),
    (["method.feedback.shape=tied"], "method.feedback.shape='tied' is not known"),
    (["method.feedback.scale=init_std"], "sign_symmetry method.variant=usf only"),
])
def test_bad_feedback_forms_are_refused_before_data(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_cfg(["method=dfa", *overrides]))
    with pytest.raises(ConfigError, match=message):
        build_rule(compose_cfg(["method=dfa", *overrides]).method)

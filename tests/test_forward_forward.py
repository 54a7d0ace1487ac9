"""Forward-Forward: goodness and loss by hand, label overlay and negatives, prediction, locality, config errors,
and learning real digits."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import compose_cfg, fit_cfg, small_module, train_batches
from layerwise.core.batch import run_batch
from layerwise.errors import ConfigError
from layerwise.models import InputSpec, Network, build_network
from layerwise.rules import build_rule
from layerwise.rules import forward_forward as ff

SPEC = InputSpec(3, 8, 5)
SGD = ["optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0", "optimizer.weight_decay=0",
       "optimizer.scheduler.name=none"]
MLP = ["model=mlp", "model.widths=[12,10,8]", "model.head_hidden=[16]"]


def rule_for(net, example, num_classes, extra=()):
    rule = build_rule(compose_cfg(["method=forward_forward", *extra]).method)
    rule.setup(net, example, num_classes)
    return rule


def make(extra=()):
    return small_module([*MLP, "method=forward_forward", *SGD, *extra], SPEC)


# The form this project used before the reference one became the default.
LEGACY = ["method.loss_reduction=sum_halves", "method.normalize=unit", "method.threshold=5",
          "method.peer_normalization=0"]


def test_goodness_and_loss_by_hand():
    h = torch.tensor([[1.0, 2.0, 0.0], [0.0, 3.0, -1.0]])
    torch.testing.assert_close(ff.goodness(h), torch.tensor([5.0, 10.0]))
    g_pos, g_neg, theta = torch.tensor([5.0, 1.0]), torch.tensor([2.0, 6.0]), 4.0
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731
    expected = ((sp(-(5 - 4)) + sp(2 - 4)) + (sp(-(1 - 4)) + sp(6 - 4))) / 2
    torch.testing.assert_close(ff.ff_loss(g_pos, g_neg, theta, "sum_halves"), torch.tensor(expected))
    # The reference: binary cross-entropy of sigmoid(g - theta) averaged over the 2N rows, half the above.
    torch.testing.assert_close(ff.ff_loss(g_pos, g_neg, theta, "mean"), torch.tensor(expected / 2))
    bce = F.binary_cross_entropy_with_logits(torch.cat([g_pos, g_neg]) - theta, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(ff.ff_loss(g_pos, g_neg, theta, "mean"), bce)
    # Length normalisation: unit rows, direction kept, no mean subtraction.
    n = ff.normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), "unit")
    torch.testing.assert_close(n, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    # RMS normalisation (the reference): length sqrt(D); [3, 4] has RMS sqrt(12.5).
    n = ff.normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), "rms")
    r = math.sqrt(12.5)
    torch.testing.assert_close(n, torch.tensor([[3 / r, 4 / r], [0.0, 0.0]]))
    torch.testing.assert_close(n[0].norm(), torch.tensor(math.sqrt(2.0)))
    # Peer normalisation: mean over units of (mean of the running means - each running mean)^2.
    running = torch.tensor([0.5, 1.0, 0.0, 0.5])
    torch.testing.assert_close(ff.peer_loss(running), torch.tensor((0 + 0.25 + 0.25 + 0) / 4))


def test_the_defaults_are_the_reference_formulation():
    cfg = compose_cfg(["method=forward_forward"]).method
    assert (cfg.threshold, cfg.loss_reduction, cfg.normalize, cfg.peer_normalization, cfg.peer_momentum) == (
        "units", "mean", "rms", 0.03, 0.9)
    module, _, _ = make()
    assert module.rule.thresholds == [12.0, 10.0, 8.0]  # theta = each block's width
    legacy, _, _ = make(LEGACY)
    assert legacy.rule.thresholds == [5.0, 5.0, 5.0]


def test_negative_labels_are_uniform_over_the_wrong_ones():
    k = 10
    y = torch.arange(k).repeat(2000)
    torch.manual_seed(0)
    neg = ff.negative_labels(y, k)
    assert neg.min() >= 0 and neg.max() < k and not (neg == y).any()
    counts = torch.zeros(k, k)
    counts.index_put_((y, neg), torch.ones(len(y)), accumulate=True)
    off_diagonal = counts[~torch.eye(k, dtype=torch.bool)]
    assert counts.diagonal().sum() == 0 and off_diagonal.min() > 150  # each of the 9 wrong labels ~222 times


def test_overlay_writes_the_scaled_one_hot_over_the_first_k_entries():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 3, 3) * 0.5
    x[2, 0, 2, 2] = 3.0  # the batch's max
    before = x.clone()
    labels = torch.tensor([0, 3, 1, 3])
    out = ff.overlay(x, labels, 4)
    assert out.shape == x.shape
    out = out.flatten(1)
    torch.testing.assert_close(out[:, :4], F.one_hot(labels, 4).float() * 3.0)
    torch.testing.assert_close(out[:, 4:], x.flatten(1)[:, 4:])
    torch.testing.assert_close(x, before)  # the input batch is not written to


def test_prediction_is_the_label_with_the_most_accumulated_goodness():
    """Unit j of block 0 fires on label j and on class feature j: the true label adds the two, so its goodness
    (m+a)^2/(m^2+a^2) beats the 1 of a wrong label. Block 1 sees a unit vector and passes it: goodness 1."""
    k = 4
    y = torch.tensor([2, 0, 3, 1, 2])
    a = torch.tensor([1.0, 2.0, 0.5, 1.5, 2.0])
    x = torch.zeros(len(y), 1, 3, 4)  # 12 entries: k label slots, k class features, 4 zeros
    x.view(len(y), -1)[torch.arange(len(y)), k + y] = a
    w0 = torch.zeros(k, 12)
    w0[:, :k] = torch.eye(k)
    w0[:, k:2 * k] = torch.eye(k)
    lin0, lin1 = nn.Linear(12, k, bias=False), nn.Linear(k, k, bias=False)
    with torch.no_grad():
        lin0.weight.copy_(w0)
        lin1.weight.copy_(torch.eye(k))
    net = Network([nn.Sequential(nn.Flatten(), lin0, nn.ReLU()), nn.Sequential(lin1, nn.ReLU())], nn.Linear(k, k))

    m = a.max()
    right = (m + a) ** 2 / (m ** 2 + a ** 2)
    expected = torch.ones(len(y), k) * 2
    expected[torch.arange(len(y)), y] = right + 1
    scores, exits = rule_for(net, x, k, ["method.normalize=unit"]).evaluate(net, x)
    torch.testing.assert_close(scores, expected)
    assert exits == {} and torch.equal(scores.argmax(1), y)
    # RMS-normalised inputs are sqrt(D) times longer, so goodness (quadratic) is D times larger: block 0 sees
    # D = 12 inputs, block 1 a 4-vector of length 2 (goodness 4).
    rms_scores, _ = rule_for(net, x, k).evaluate(net, x)
    torch.testing.assert_close(rms_scores, 12 * (expected - 1) + 4)
    skip_first, _ = rule_for(net, x, k, ["method.score_from=1", "method.normalize=unit"]).evaluate(net, x)
    torch.testing.assert_close(skip_first, torch.ones(len(y), k))


@pytest.mark.parametrize("reference", [True, False], ids=["reference", "legacy"])
def test_each_block_steps_on_its_own_loss_and_the_head_never_changes(monkeypatch, reference):
    lr, batch = 0.1, 8
    module, x, y = make([] if reference else LEGACY)
    ref = copy.deepcopy(module.net)
    head_before = [p.detach().clone() for p in module.net.head.parameters()]
    drawn, draw = [], ff.negative_labels

    def record(yb, k):  # the reference replays the same wrong labels
        drawn.append(draw(yb, k))
        return drawn[-1]

    monkeypatch.setattr(ff, "negative_labels", record)
    seen = []
    for i, part in enumerate([*module.net.blocks[1:], module.net.head], start=1):
        part.register_forward_pre_hook(lambda m, args, i=i: seen.append(args[0].requires_grad))

    train_batches(module, x, y, batch_size=batch)

    assert len(drawn) == 2 and seen and not any(seen)  # two steps; every later block saw a detached input
    running = [torch.full((w,), 0.5) for w in (12, 10, 8)]
    for xb, yb, neg in zip(x.split(batch), y.split(batch), drawn):
        h = torch.cat([ff.overlay(xb, yb, 5), ff.overlay(xb, neg, 5)]).flatten(1)
        for j, block in enumerate(ref.blocks):
            if reference:  # divide by the RMS; BCE over 2N rows at theta = width; peer loss on running means
                inp = h / h.pow(2).mean(1, keepdim=True).sqrt().add(1e-8)
                out = block(inp.detach())
                g = out.pow(2).sum(1)
                theta = out.shape[1]
                labels = torch.cat([torch.ones(batch), torch.zeros(batch)])
                loss = F.binary_cross_entropy_with_logits(g - theta, labels)
                new = 0.9 * running[j] + 0.1 * out[:batch].mean(0)
                running[j] = new.detach()
                loss = loss + 0.03 * ((new.mean() - new) ** 2).mean()
            else:
                out = block(ff.normalize(h, "unit").detach())
                g = out.pow(2).sum(1)
                loss = (F.softplus(5.0 - g[:batch]) + F.softplus(g[batch:] - 5.0)).mean()
            params = list(block.parameters())
            with torch.no_grad():
                for p, grad in zip(params, torch.autograd.grad(loss, params)):
                    p -= lr * grad
            h = out.detach()
    for p_ref, p_got in zip(ref.blocks.parameters(), module.net.blocks.parameters()):
        torch.testing.assert_close(p_got.detach(), p_ref.detach(), atol=1e-6, rtol=1e-5)
    if reference:  # the running means are the rule's buffers (saved in checkpoints)
        for j in range(3):
            torch.testing.assert_close(getattr(module.rule, f"running_mean{j}"), running[j])
    for p, before in zip(module.net.head.parameters(), head_before):
        assert torch.equal(p, before)
    n = len(module.net.blocks)
    assert [(g.name, g.step_after) for g in module.groups] == [(f"block{i}", i) for i in range(n)]
    assert module.meter._live == 0  # every block's graph was freed by its own backward, and the head built none
    assert not any(p.requires_grad for p in module.net.head.parameters())


def test_signals_report_goodness_and_the_head_passes_no_gradient():
    module, x, y = make(["method.threshold=3"])  # reference form otherwise: the peer loss is reported too
    signals = []
    run_batch(module.net, module.rule, x, y, lambda s, out, prefix, stage: signals.append((prefix, s)),
              lambda i: None)
    blocks, (head_prefix, head) = signals[:-1], signals[-1]
    assert [p for p, _ in blocks] == ["block0/train_", "block1/train_", "block2/train_"]
    for _, s in blocks:
        assert set(s.metrics) == {"pos_goodness", "neg_goodness", "ff_loss", "peer_loss"}
        assert s.loss.requires_grad and s.logits is None
        torch.testing.assert_close(s.loss.detach(), s.metrics["ff_loss"] + 0.03 * s.metrics["peer_loss"].detach())
    assert head_prefix == "train/" and head.logits is None and head.surrogate(None) is None
    torch.testing.assert_close(head.loss, torch.stack([s.loss for _, s in blocks]).mean().detach())
    assert module.rule.describe() == ("forward_forward (threshold 3, loss mean, normalize rms, peer normalization "
                                      "0.03, score from block 0)")


@pytest.mark.parametrize("model, match", [
    (["model=basic_cnn", "model.channels=[4,6]"], "forward_forward needs blocks without batch norm; set "
                                                  "model.batch_norm=false"),
    ([*MLP, "model.batch_norm=true"], "model.batch_norm=false"),
    ([*MLP, "method.score_from=3"], r"score_from=3 must name a block in \[0, 2\]"),
    ([*MLP, "method.goodness=channel"], "method.goodness=channel needs convolutional blocks"),
], ids=["conv-batch-norm", "batch-norm", "score-from", "channel-goodness-on-mlp"])
def test_config_errors_name_the_fix(model, match):
    cfg = compose_cfg([*model, "method=forward_forward"])
    net = build_network(cfg.model, SPEC)
    with pytest.raises(ConfigError, match=match):
        build_rule(cfg.method).setup(net, torch.randn(4, 3, 8, 8), SPEC.num_classes)


def test_input_smaller_than_the_label_is_refused():
    spec = InputSpec(1, 2, 5)  # 4 values for 5 labels
    net = build_network(compose_cfg([*MLP]).model, spec)
    with pytest.raises(ConfigError, match="only 4; use a larger data.image_size"):
        rule_for(net, torch.randn(4, 1, 2, 2), 5)


# Adam at lr 0.02 without a schedule, batch 32: measured 0.83 +- 0.03 (4 seeds) after 4 epochs; at batch 64 (the
# digits default) FF needs ~8 epochs to get there, and the cosine schedule's decay slows it further.
DIGITS_FF = ["data=digits", "data.image_size=16", "data.batch_size=32", "model=mlp", "model.widths=[128,128]",
             "method=forward_forward", "optimizer=adam", "optimizer.lr=0.02", "optimizer.scheduler.name=none",
             "trainer.max_epochs=4", "trainer.accelerator=cpu", "logger=none", "trainer.progress_bar=false"]


def test_forward_forward_learns_digits(tmp_path):
    summary = fit_cfg([*DIGITS_FF, *LEGACY], tmp_path / "run")
    assert summary["status"] == "completed" and summary["block_test_acc"] == []
    assert summary["test_acc"] > 0.6, summary  # chance is 0.10


def test_the_reference_formulation_learns_digits(tmp_path):
    """The defaults (RMS inputs, theta = width, BCE mean, peer normalisation 0.03) want a smaller Adam step:
    inputs sqrt(D) times longer than unit-normalised ones."""
    summary = fit_cfg([*[o for o in DIGITS_FF if not o.startswith("optimizer.lr")], "optimizer.lr=0.005"],
                      tmp_path / "run")
    assert summary["status"] == "completed"
    assert summary["test_acc"] > REFERENCE_FLOOR, summary


REFERENCE_FLOOR = 0.6  # measured 0.81 and 0.85 (seeds 0, 1); the former form at lr 0.02: 0.84, 0.84


@pytest.mark.parametrize("overrides, match", [
    (["method.loss_reduction=sum"], "loss_reduction='sum' is not known; choose one of mean, sum_halves"),
    (["method.normalize=l2"], "normalize='l2' is not known; choose one of rms, unit"),
    (["method.threshold=width"], "threshold='width' must be a number or units"),
    (["method.peer_normalization=-1"], "peer_normalization=-1 is out of range; it must be >= 0"),
    (["method.peer_momentum=1"], r"peer_momentum=1 is out of range; it must be in \[0, 1\)"),
    (["method.goodness=pixel"], "goodness='pixel' is not known; choose one of sum, location, channel"),
    (["method.label=channel"], "label='channel' is not known; choose one of auto, pixels, pattern"),
    (["method.predict=linear"], "predict='linear' is not known; choose one of goodness, head"),
])
def test_formulation_options_are_checked(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_rule(compose_cfg(["method=forward_forward", *overrides]).method)

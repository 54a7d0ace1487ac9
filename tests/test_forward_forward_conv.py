"""Forward-Forward on convolutional blocks: goodness per location and per channel by hand, label gratings, layer
collaboration (Lorberbom et al. 2024) and the linear-head prediction replayed by hand, and learning real digits."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_cfg, fit_cfg, small_module, train_batches
from layerwise.errors import ConfigError
from layerwise.models import InputSpec
from layerwise.rules import forward_forward as ff

SPEC = InputSpec(3, 8, 5)
SGD = ["optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0", "optimizer.weight_decay=0",
       "optimizer.scheduler.name=none"]
CNN = ["model=basic_cnn", "model.channels=[4,6]", "model.batch_norm=false", "model.head_hidden=[]",
       "model.kernel_size=3"]


def make(extra=()):
    return small_module([*CNN, "method=forward_forward", *SGD, *extra], SPEC, batch=16)


def test_goodness_per_location_and_per_channel_by_hand():
    h = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]],     # channel 0
                       [[2.0, 0.0], [1.0, 3.0]]]])   # channel 1
    torch.testing.assert_close(ff.goodness(h), torch.tensor([20.0]))  # Hinton: every unit
    torch.testing.assert_close(ff.goodness(h, "location"), torch.tensor([[[5.0, 4.0], [1.0, 10.0]]]))
    torch.testing.assert_close(ff.goodness(h, "channel"), torch.tensor([[6.0, 14.0]]))
    # The next block's input: each location's channel vector divided by its RMS (length sqrt(C)).
    n = ff.normalize(h, "rms", "location")
    torch.testing.assert_close(n[0, :, 0, 0], torch.tensor([1.0, 2.0]) / math.sqrt(2.5))
    torch.testing.assert_close(ff.goodness(n, "location"), torch.full((1, 2, 2), 2.0))
    torch.testing.assert_close(ff.goodness(ff.normalize(h, "unit", "channel"), "channel"), torch.ones(1, 2))
    # One binary decision per location: the BCE of sigmoid(g - theta) averaged over the 2N x H x W groups.
    g_neg = torch.tensor([[[0.0, 3.0], [2.0, 1.0]]])
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731
    pos = [sp(2 - g) for g in (5, 4, 1, 10)]
    neg = [sp(g - 2) for g in (0, 3, 2, 1)]
    torch.testing.assert_close(ff.ff_loss(ff.goodness(h, "location"), g_neg, 2.0, "mean"),
                               torch.tensor(sum(pos + neg) / 8))


def test_thresholds_count_the_units_of_a_goodness_group():
    # basic_cnn [4, 6] on 8 px: block 0 is 4 x 4 x 4 after its pool, block 1 is 6 x 2 x 2.
    assert make()[0].rule.thresholds == [64.0, 24.0]
    assert make(["method.goodness=location"])[0].rule.thresholds == [4.0, 6.0]
    assert make(["method.goodness=channel"])[0].rule.thresholds == [16.0, 4.0]
    assert make(["method.peer_normalization=0.03"])[0].rule.running_mean1.shape == (6,)  # a channel is one unit


def test_label_gratings_cover_the_whole_image():
    p = ff.label_patterns(4, 4, 4)
    rows, cols = torch.arange(4.0).view(-1, 1), torch.arange(4.0).view(1, -1)
    torch.testing.assert_close(p[0], torch.cos(math.pi / 2 * rows).expand(4, 4))  # angle 0: along the rows
    torch.testing.assert_close(p[2], torch.cos(math.pi / 2 * cols).expand(4, 4), atol=1e-6, rtol=0)  # pi / 2
    torch.testing.assert_close(p[1], torch.cos(math.pi / 2 * (rows + cols) / math.sqrt(2)))
    x = torch.randn(3, 2, 4, 4)
    out = ff.add_pattern(x, torch.tensor([0, 2, 1]), p)
    for row, label in enumerate([0, 2, 1]):
        for c in range(2):
            torch.testing.assert_close(out[row, c], x[row, c] + x.std() * p[label])
    neutral = ff.add_pattern(x, torch.full((3, 4), 0.25), p)
    torch.testing.assert_close(neutral, x + x.std() * p.mean(0))
    module, _, _ = make()
    assert module.rule.label == "pattern" and "patterns" not in module.rule.state_dict()  # auto; rebuilt by setup


def record_negatives(monkeypatch):
    drawn, draw = [], ff.negative_labels

    def record(yb, k):
        drawn.append(draw(yb, k))
        return drawn[-1]

    monkeypatch.setattr(ff, "negative_labels", record)
    return drawn


def rms(h, dims):
    return h / h.pow(2).mean(dims, keepdim=True).sqrt().add(1e-8)


def test_collaborative_per_location_step_by_hand(monkeypatch):
    """Lorberbom et al. 2024: p_i = sigmoid(g_i + gamma_i - theta), gamma_i = sum_{t != i} of the other blocks'
    detached goodness; here per location, gamma from each block's mean location goodness, theta = sum of the
    blocks' thresholds (C_0 + C_1 = 10)."""
    batch = 8
    module, x, y = make(["method.goodness=location", "method.collaborative=true", "method.peer_normalization=0"])
    ref = copy.deepcopy(module.net.blocks)
    patterns = ff.label_patterns(5, 8, 8)
    drawn = record_negatives(monkeypatch)
    train_batches(module, x, y, batch_size=batch)
    assert len(drawn) == 2
    for xb, yb, neg in zip(x.split(batch), y.split(batch), drawn):
        h = torch.cat([xb + xb.std() * patterns[yb].unsqueeze(1), xb + xb.std() * patterns[neg].unsqueeze(1)])
        inputs, outs = [], []
        for j, block in enumerate(ref):
            inputs.append(rms(h, (1, 2, 3)) if j == 0 else rms(h, (1,)))
            outs.append(block(inputs[-1].detach()))
            h = outs[-1].detach()
        row_goodness = [o.detach().pow(2).sum(1).mean((1, 2)) for o in outs]
        for j, (block, out) in enumerate(zip(ref, outs)):
            gamma = sum(g for t, g in enumerate(row_goodness) if t != j).view(-1, 1, 1)
            logit = out.pow(2).sum(1) + gamma - 10.0
            labels = torch.cat([torch.ones(batch), torch.zeros(batch)]).view(-1, 1, 1).expand_as(logit)
            loss = F.binary_cross_entropy_with_logits(logit, labels)
            params = list(block.parameters())
            with torch.no_grad():
                for p, grad in zip(params, torch.autograd.grad(loss, params)):
                    p -= 0.1 * grad
    for block_ref, block in zip(ref, module.net.blocks):
        for p_ref, p_got in zip(block_ref.parameters(), block.parameters()):
            torch.testing.assert_close(p_got.detach(), p_ref.detach(), atol=1e-6, rtol=1e-5)
    assert module.meter._live == 0


def test_linear_head_trains_on_neutral_rows_and_leaves_the_blocks_alone(monkeypatch):
    """predict=head: a linear layer on the normalised, detached outputs of the blocks >= score_from for the image
    with a neutral label (every grating at 1/K) learns by cross-entropy; the blocks learn exactly as without it."""
    module, x, y = make(["method.predict=head", "method.goodness=channel", "method.peer_normalization=0"])
    x, y = x[:8], y[:8]  # one step
    blocks, lin = copy.deepcopy(module.net.blocks), copy.deepcopy(module.rule.classifier)
    assert lin.in_features == 64 + 24
    drawn = record_negatives(monkeypatch)
    train_batches(module, x, y, batch_size=8)

    plain, _, _ = make(["method.goodness=channel", "method.peer_normalization=0"])
    monkeypatch.setattr(ff, "negative_labels", lambda yb, k: drawn.pop(0))
    train_batches(plain, x, y, batch_size=8)
    for a, b in zip(plain.net.blocks.parameters(), module.net.blocks.parameters()):
        torch.testing.assert_close(a, b)

    h, feats = x + x.std() * ff.label_patterns(5, 8, 8).mean(0), []
    for j, block in enumerate(blocks):
        h = block(rms(h, (1, 2, 3)) if j == 0 else rms(h, (2, 3))).detach()
        feats.append(rms(h, (2, 3)).flatten(1))
    loss = F.cross_entropy(lin(torch.cat(feats, 1)), y)
    with torch.no_grad():
        for p, grad in zip(lin.parameters(), torch.autograd.grad(loss, list(lin.parameters()))):
            p -= 0.1 * grad
    for p_ref, p_got in zip(lin.parameters(), module.rule.classifier.parameters()):
        torch.testing.assert_close(p_got.detach(), p_ref.detach(), atol=1e-6, rtol=1e-5)
    logits, exits = module.rule.evaluate(module.net, x)
    assert logits.shape == (8, 5) and exits == {}
    assert [g.name for g in module.groups] == ["block0", "block1", "classifier"]


def test_alignment_and_locality_diagnostics():
    """Blocks learn on their own signal only; with collaboration, block 0's signal also depends on block 1's
    forward pass (the detached gamma), which diagnostics=locality reports."""
    from layerwise.diagnostics.locality import certify
    from layerwise.diagnostics.probes import gradient_alignment

    for extra, later in [([], False), (["method.collaborative=true"], True)]:
        module, x, y = make(["method.predict=head", "method.goodness=location", *extra])
        align = gradient_alignment(module.net, module.rule, x, y)
        assert math.isfinite(align["block0/align_bp"]) and math.isfinite(align["block1/align_bp"])
        assert math.isnan(align["head/align_bp"])  # the frozen head gets no gradient
        result = certify(module.net, module.rule, x, y)
        assert [b["signal_reaches"] for b in result["blocks"]] == [[0], [1]]
        assert [b["depends_on_later_blocks"] for b in result["blocks"]] == [later, False]
        assert result["local"] is not later and result["head_signal_reaches"] == []


def test_pipeline_refuses_in_one_line():
    from layerwise.runs.pipeline import check_pipeline_rule

    with pytest.raises(ConfigError, match="cannot run method=forward_forward: its prediction embeds every label"):
        check_pipeline_rule(compose_cfg(["method=forward_forward", "trainer=pipeline"]))


# BasicCNN [16, 16] without batch norm on the 8x8 digits, Adam 0.005 without a schedule, one epoch.
DIGITS_CNN = ["data=digits", "data.image_size=8", "data.batch_size=32", "model=basic_cnn", "model.channels=[16,16]",
              "model.batch_norm=false", "model.head_hidden=[]", "method=forward_forward", "method.predict=head",
              "optimizer=adam", "optimizer.lr=0.005", "optimizer.scheduler.name=none", "trainer.max_epochs=1",
              "trainer.accelerator=cpu", "logger=none", "trainer.progress_bar=false"]


def test_linear_head_on_conv_blocks_learns_digits(tmp_path):
    summary = fit_cfg(DIGITS_CNN, tmp_path / "run")
    assert summary["status"] == "completed" and summary["block_test_acc"] == []
    assert summary["test_acc"] > DIGITS_FLOOR, summary  # chance is 0.10


DIGITS_FLOOR = 0.8

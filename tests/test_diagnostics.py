"""Diagnostics: gradient alignment with BP (and W/B geometry of feedback layers), linear probes per block."""
import copy
import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import DIGITS, TINY, compose_cfg, fit_cfg, read_summary
from layerwise.core.checkpoint import load_checkpoint
from layerwise.diagnostics.probes import GradientAlignment, feedback_geometry, gradient_alignment, linear_probe
from layerwise.models import InputSpec, build_network
from layerwise.rules import build_rule
from layerwise.rules.feedback import FeedbackLayer, FixedFeedback, convert_layers

MLP = ["model=mlp", "model.widths=[32,32,32]", "model.head_hidden=[16]"]
SPEC = InputSpec(3, 8, 5)


def make(method: str, extra=()):
    """A small CNN (3 blocks + MLP head) and its rule, set up on one batch of random tensors."""
    cfg = compose_cfg(["model=basic_cnn", "model.channels=[4,6,8]", "model.kernel_size=3", "model.head_hidden=[16]",
                       f"method={method}", *(["method.aux.hidden_dim=12"] if method == "dgl" else []), *extra])
    torch.manual_seed(0)
    net, rule = build_network(cfg.model, SPEC), build_rule(cfg.method)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    rule.setup(net, x, SPEC.num_classes)
    return net, rule, x, y


def test_both_selection_syntaxes_compose():
    assert "diagnostics" not in compose_cfg([])  # none by default
    one = compose_cfg(["diagnostics=alignment", "diagnostics.alignment.every_n_steps=3"])
    assert set(one.diagnostics) == {"alignment"} and one.diagnostics.alignment.every_n_steps == 3
    both = compose_cfg(["diagnostics=[alignment,probe]"])
    assert set(both.diagnostics) == {"alignment", "probe"}


def test_bp_is_aligned_with_itself_and_dgl_block0_is_not():
    net, rule, x, y = make("bp", ["model.dropout=0.3"])  # dropout: both passes must draw the same masks
    bp = gradient_alignment(net, rule, x, y)
    n = len(net.blocks)
    assert set(bp) == {f"block{i}/align_bp" for i in range(n)} | {"head/align_bp"}
    for key, value in bp.items():
        assert value == pytest.approx(1.0, abs=1e-5), key

    net, rule, x, y = make("dgl")
    dgl = gradient_alignment(net, rule, x, y)
    assert dgl["block0/align_bp"] < 0.99
    # DGL's last block and head train on the network head's loss: exactly the BP gradient there.
    assert dgl[f"block{n - 1}/align_bp"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method", ["deep_supervision", "mono_forward"])
def test_issue_18_rules_match_bp_only_where_the_head_trains(method):
    net, rule, x, y = make(method)
    result = gradient_alignment(net, rule, x, y)
    n = len(net.blocks)
    assert set(result) == {f"block{i}/align_bp" for i in range(n)} | {"head/align_bp"}
    # The last block and head get the head's loss alone in both (no companion there); block 0 gets more (deep
    # supervision) or only its own loss (Mono-Forward).
    assert result[f"block{n - 1}/align_bp"] == pytest.approx(1.0, abs=1e-5) and result["block0/align_bp"] < 0.99


def test_alignment_leaves_the_module_untouched():
    net, rule, x, y = make("dgl")
    module = nn.ModuleList([net, rule])
    state = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    gradient_alignment(net, rule, x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in module.parameters())
    for k, v in module.state_dict().items():
        assert torch.equal(v, state[k]), k


def _forward_gradient(widths, *extra):
    cfg = compose_cfg(["model=mlp", f"model.widths={widths}", "model.head_hidden=[]", "method=forward_gradient",
                       "method.estimator=weight", "method.loss=global", *extra])
    torch.manual_seed(0)
    net, rule = build_network(cfg.model, InputSpec(1, 4, 3)), build_rule(cfg.method)
    x, y = torch.randn(16, 1, 4, 4), torch.arange(16) % 3
    rule.setup(net, x, 3)
    return net, rule, x, y


def test_forward_gradient_alignment_is_the_estimate_training_applies():
    """The diagnostic reads the estimate of the batch about to be trained, with training's own tangents: one
    tangent in ~70k dimensions is nearly orthogonal to the true gradient; 400 of them in 35 are close to it."""
    net, rule, x, y = _forward_gradient("[128,128]")
    cos = gradient_alignment(net, rule, x, y)
    assert all(abs(v) < 0.05 for v in cos.values()), cos  # measured -0.003, 0.001, 0.024

    # The step training then takes has exactly that cosine with BP's gradient (same batch, same tangents).
    from layerwise.core.batch import backward_only, run_batch
    bp = copy.deepcopy(net)
    F.cross_entropy(bp(x), y).backward()
    run_batch(net, rule, x, y, backward_only, step=lambda i: None)
    got = torch.cat([p.grad.flatten() for p in net.blocks[0].parameters()])
    ref = torch.cat([p.grad.flatten() for p in bp.blocks[0].parameters()])
    assert float(got @ ref / (got.norm() * ref.norm())) == pytest.approx(cos["block0/align_bp"], abs=1e-6)

    net, rule, x, y = _forward_gradient("[4]", "method.tangents=400")
    for key, value in gradient_alignment(net, rule, x, y).items():
        assert value > 0.8, (key, value)  # measured 0.87 (block 0), 0.95 (head)


def _feedback_linear(d_in, d_out, b=None):
    layer = nn.Linear(d_in, d_out)
    convert_layers(layer, lambda m: FixedFeedback(m.weight.detach().clone() if b is None else b(m.weight)))
    return layer


def test_feedback_geometry():
    torch.manual_seed(0)
    same = nn.Sequential(_feedback_linear(6, 5), nn.ReLU(), _feedback_linear(5, 4))
    geo = feedback_geometry(same)
    assert geo["angle_wb"] == pytest.approx(0.0, abs=1e-3) and geo["norm_ratio_bw"] == pytest.approx(1.0)
    geo = feedback_geometry(_feedback_linear(6, 5, b=lambda w: -2 * w.detach()))
    assert geo["angle_wb"] == pytest.approx(180.0, abs=1e-3) and geo["norm_ratio_bw"] == pytest.approx(2.0)
    assert feedback_geometry(nn.Linear(3, 3)) == {}


def test_fa_alignment_uses_the_true_gradient_as_reference():
    net, rule, x, y = make("fa")
    fa = gradient_alignment(net, rule, x, y)
    n = len(net.blocks)
    assert all(f"block{i}/angle_wb" in fa and f"block{i}/norm_ratio_bw" in fa for i in range(n))
    assert 45 < fa["block0/angle_wb"] < 135  # a random B is nearly orthogonal to W
    assert fa["block0/align_bp"] < 0.99
    # B == W: feedback alignment is backprop, and the geometry says so.
    for layer in net.modules():
        if isinstance(layer, FeedbackLayer):
            layer.feedback.matrix.copy_(layer.weight.detach())
    fa = gradient_alignment(net, rule, x, y)
    for i in range(n):
        assert fa[f"block{i}/align_bp"] == pytest.approx(1.0, abs=1e-5)
        assert fa[f"block{i}/angle_wb"] == pytest.approx(0.0, abs=0.1)
        assert fa[f"block{i}/norm_ratio_bw"] == pytest.approx(1.0, abs=1e-6)
    callback = GradientAlignment(every_n_steps=1)
    callback.last, callback.n_blocks = fa, n
    summary = callback.summary()
    assert summary["align_bp"] == pytest.approx([1.0] * n, abs=1e-5)
    assert summary["angle_wb"] == pytest.approx([0.0] * n, abs=0.1)
    assert summary["norm_ratio_bw"] == pytest.approx([1.0] * n)


def test_linear_probe_separates_separable_features():
    gen = torch.Generator().manual_seed(0)
    centers = 4 * torch.randn(4, 20, generator=gen)
    y = torch.randint(0, 4, (600,), generator=gen)
    x = centers[y] + torch.randn(600, 20, generator=gen)
    acc = linear_probe(x[:400], y[:400], x[400:], y[400:], 4, epochs=20, lr=0.05, batch_size=200)
    assert acc == pytest.approx(1.0, abs=0.01)
    again = linear_probe(x[:400], y[:400], x[400:], y[400:], 4, epochs=20, lr=0.05, batch_size=200)
    assert again == acc  # deterministic


@pytest.fixture(scope="module")
def dropout_runs(tmp_path_factory):
    """The same 2-epoch run (dropout, shuffled batches) without and with the alignment diagnostic."""
    base = [*TINY, *MLP, "method=dgl", "model.dropout=0.3", "trainer.max_epochs=2"]
    plain = tmp_path_factory.mktemp("plain")
    aligned = tmp_path_factory.mktemp("aligned")
    fit_cfg(base, plain)
    fit_cfg([*base, "diagnostics=alignment", "diagnostics.alignment.every_n_steps=2"], aligned)
    return plain, aligned


def test_alignment_does_not_change_training(dropout_runs):
    plain, aligned = (load_checkpoint(d / "checkpoints" / "last.ckpt")["state_dict"]
                      for d in dropout_runs)
    assert plain.keys() == aligned.keys()
    for k in plain:
        assert torch.equal(plain[k], aligned[k]), k


def test_alignment_goes_to_metrics_csv_and_summary(dropout_runs):
    run = dropout_runs[1]
    with open(run / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("block0/align_bp")]
    # 3 batches per epoch, 2 epochs, every 2nd batch counted across epochs: batches 0, 2, 4.
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    for r in rows:
        for key in ("block0/align_bp", "block1/align_bp", "block2/align_bp", "head/align_bp"):
            assert math.isfinite(float(r[key])), key
    summary = read_summary(run)
    assert len(summary["align_bp"]) == 3 and all(math.isfinite(v) for v in summary["align_bp"])
    assert summary["align_bp"][0] == pytest.approx(float(rows[-1]["block0/align_bp"]))
    assert "angle_wb" not in summary  # no feedback layers in a DGL net
    assert "align_bp" not in read_summary(dropout_runs[0])


def test_probe_on_digits(tmp_path):
    summary = fit_cfg([*DIGITS, "trainer.max_epochs=1", "trainer.limit_train_batches=5", "diagnostics=probe",
                       "diagnostics.probe.max_train_samples=600", "diagnostics.probe.epochs=10",
                       "diagnostics.probe.batch_size=300", "diagnostics.probe.lr=0.02"], tmp_path)
    acc = summary["probe_acc"]
    assert len(acc) == 3 and all(0.0 <= a <= 1.0 for a in acc)
    assert acc[-1] > 0.5, acc  # chance is 0.10


# ------------------------------------------------------------------------------------------------ locality
LOCAL_RULES = ["dgl", "dni", "cdni", "ssl", "predsim", "infopro", "random_features", "auglocal", "drtp",
               "forward_gradient", "mono_forward"]
MLP_FF = ["model=mlp", "model.widths=[12,10,8]", "model.head_hidden=[16]"]


def certify_rule(method: str, model=None, extra=()):
    from layerwise.diagnostics.locality import certify

    if model is None:
        net, rule, x, y = make(method, extra)
    else:
        cfg = compose_cfg([*model, f"method={method}", *extra])
        torch.manual_seed(0)
        net, rule = build_network(cfg.model, SPEC), build_rule(cfg.method)
        x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
        rule.setup(net, x, SPEC.num_classes)
    before = [p.detach().clone() for p in [*net.parameters(), *rule.parameters()]]
    result = certify(net, rule, x, y)
    after = [*net.parameters(), *rule.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(after, before)) and all(p.grad is None for p in after)
    return result


def reaches(result):
    return [b["signal_reaches"] for b in result["blocks"]], result["head_signal_reaches"]


@pytest.mark.parametrize("method", LOCAL_RULES)
def test_every_local_rule_certifies_local(method):
    result = certify_rule(method)
    assert result["local"] is True and result["rule_declares_local"] is True
    blocks, head = reaches(result)
    for i, touched in enumerate(blocks):
        assert touched in ([i], [])  # its own block, or none (the last block learns from the head)
        assert result["blocks"][i]["depends_on_later_blocks"] is False
    assert set(head) <= {2, "head"}  # the head's signal may train the last block (DGL, DNI, InfoPro)


def test_predsim_and_forward_forward_train_every_block_on_its_own_signal():
    assert reaches(certify_rule("predsim")) == ([[0], [1], [2]], ["head"])
    ff = certify_rule("forward_forward", MLP_FF)
    assert ff["local"] is True and reaches(ff) == ([[0], [1], [2]], [])  # FF's head is frozen: no signal
    assert reaches(certify_rule("random_features")) == ([[], [], []], ["head"])


@pytest.mark.parametrize("method", ["bp", "fa", "sign_symmetry"])
def test_backprop_and_feedback_alignment_reach_every_block_from_the_head(method):
    result = certify_rule(method)
    assert result["local"] is False
    assert reaches(result) == ([[], [], []], [0, 1, 2, "head"])
    assert [b["depends_on_later_blocks"] for b in result["blocks"]] == [True, True, False]


def test_dfa_reaches_each_block_alone_but_carries_the_output_error():
    """DFA's B_i·e reaches block i only (no gradient crosses a block), yet e depends on every later block."""
    result = certify_rule("dfa")
    blocks, head = reaches(result)
    assert blocks == [[i] for i in range(len(blocks))] and head == ["head"]
    assert [b["depends_on_later_blocks"] for b in result["blocks"]] == [True] * (len(blocks) - 1) + [False]
    assert result["local"] is False and result["rule_declares_local"] is True


@pytest.mark.parametrize("method", ["drtp", "pepita"])
def test_alignment_of_target_and_input_modulation_rules(method):
    """drtp's update (B_i y*, no error) and pepita's (the passes' difference) against BP's gradient: a cosine for
    every block; the output layer's error is the true one (pepita: e times the modulated input, close to BP)."""
    net, rule, x, y = make(method) if method == "drtp" else small_mlp(method)
    align = gradient_alignment(net, rule, x, y)
    assert all(math.isfinite(align[f"block{i}/align_bp"]) for i in range(len(net.blocks)))
    assert align["head/align_bp"] > (0.99 if method == "drtp" else 0.9)


def small_mlp(method):
    cfg = compose_cfg(["model=mlp", "model.widths=[12,10]", "model.batch_norm=false", f"method={method}"])
    torch.manual_seed(0)
    net, rule = build_network(cfg.model, SPEC), build_rule(cfg.method)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    rule.setup(net, x, SPEC.num_classes)
    return net, rule, x, y


def test_pepita_blocks_are_cut_apart_but_carry_the_output_error():
    result = certify_rule("pepita", ["model=mlp", "model.widths=[12,10]", "model.batch_norm=false"])
    blocks, head = reaches(result)
    assert blocks == [[0], [1]] and head == ["head"]
    assert result["local"] is False and result["blocks"][0]["depends_on_later_blocks"] is True


def test_dgl_direct_global_is_not_local():
    """Mixing the head's error into the aux gradient leaks downstream information into every block's update."""
    result = certify_rule("dgl", extra=["method.direct_global=true"])
    assert result["local"] is False
    assert [b["depends_on_later_blocks"] for b in result["blocks"]][:2] == [True, True]
    assert reaches(result)[0][:2] == [[0], [1]]  # the gradient paths alone would have passed it


def test_a_rule_that_forgets_to_detach_is_caught():
    """A rule declaring itself local whose block inputs are not detached: block 1's loss reaches block 0."""
    net, rule, x, y = make("dgl", ["method.aux.hidden_dim=12"])
    rule.block_input = lambda i, h: h  # the bug: no detach between blocks
    from layerwise.diagnostics.locality import certify

    result = certify(net, rule, x, y)
    assert result["local"] is False and result["rule_declares_local"] is True
    assert reaches(result)[0][:2] == [[0], [0, 1]]


def test_locality_goes_to_summary_through_the_cli(tmp_path):
    from conftest import run_cli, run_dirs

    proc = run_cli(["method=dgl", "diagnostics=locality", *TINY, "model=basic_cnn", "model.channels=[4,4]",
                    "model.head_hidden=[]"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = read_summary(run_dirs(tmp_path)[0])
    assert summary["locality"] == {
        "local": True, "rule_declares_local": True, "head_signal_reaches": [1, "head"],
        "blocks": [{"block": 0, "signal_reaches": [0], "depends_on_later_blocks": False},
                   {"block": 1, "signal_reaches": [], "depends_on_later_blocks": False}]}
    assert compose_cfg(["diagnostics=[locality,probe]"]).diagnostics.locality.check_later_blocks is True

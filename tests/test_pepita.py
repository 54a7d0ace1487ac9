"""PEPITA: its update against the paper's Algorithm 1 on small tensors, the same dropout masks in both passes,
the refusals (conv layers, trainer=pipeline, bad options), and learning on digits."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_cfg, fit_cfg, one_backward, rule_on_random_batch
from layerwise.config.checks import check_config
from layerwise.errors import ConfigError
from layerwise.models import InputSpec

SPEC = InputSpec(1, 4, 5)  # 16 inputs, 5 classes
MLP = ["model=mlp", "model.batch_norm=false", "model.activation=tanh"]


def make(overrides, spec=SPEC, n=12):
    return rule_on_random_batch("pepita", overrides, spec, n)[1:]



@pytest.mark.parametrize("output_error", ["first", "modulated"])
def test_update_is_algorithm_1(output_error):
    """h_0^mod = x + F e; ΔW_ℓ = (h_ℓ − h_ℓ^mod)(h_{ℓ-1}^mod)ᵀ for the hidden layers, ΔW_L = e (h_{L-1}^mod)ᵀ
    (e of the standard pass, or of the modulated one), averaged over the batch, as the gradient W descends."""
    net, rule, x, y = make([*MLP, "model.widths=[6,7]", "model.head_hidden=[]", "method.input_scale=3",
                            f"method.output_error={output_error}"])
    one_backward(net, rule, x, y)

    (l1, l2), out = [b[-2] for b in net.blocks], net.head[-1]

    def forward(h0):
        h1 = torch.tanh(h0 @ l1.weight.T + l1.bias)
        h2 = torch.tanh(h1 @ l2.weight.T + l2.bias)
        return h1, h2, h2 @ out.weight.T + out.bias

    n, target = len(y), F.one_hot(y, 5).float()
    with torch.no_grad():
        h0 = x.flatten(1)
        h1, h2, logits = forward(h0)
        e = logits.softmax(-1) - target
        h0m = h0 + e @ rule.projection.T
        h1m, h2m, logits_m = forward(h0m)
    if output_error == "modulated":
        e = logits_m.softmax(-1) - target
    for layer, d, h_in in ((l1, h1 - h1m, h0m), (l2, h2 - h2m, h1m), (out, e, h2m)):
        torch.testing.assert_close(layer.weight.grad, d.T @ h_in / n)
        torch.testing.assert_close(layer.bias.grad, d.sum(0) / n)
    assert (h1 - h1m).abs().max() > 1e-3  # the modulation moved the hidden activity: the test sees the update


def test_input_projection_is_the_papers_fixed_uniform_matrix():
    net, rule, x, y = make([*MLP, "model.widths=[6]", "model.head_hidden=[]"])
    f = rule.projection
    bound = math.sqrt(6 / 16) * 0.05
    assert f.shape == (16, 5) and f.abs().max() <= bound and f.abs().max() > 0.8 * bound
    before = f.clone()
    one_backward(net, rule, x, y)
    assert torch.equal(rule.projection, before)
    assert [(g.name, g.step_after) for g in rule.train_groups(net)] == [("block0", 0), ("head", 1)]


def test_both_passes_draw_the_same_dropout_masks():
    """The head's hidden layer (moved into a block) has dropout before it. With a tiny F the two passes differ by
    almost nothing only if they drop the same units; other masks would give that block a large update."""
    net, rule, x, y = make([*MLP, "model.widths=[6]", "model.head_hidden=[8]", "model.dropout=0.5",
                            "method.input_scale=1e-6"])
    assert rule.moved == 1 and len(net.blocks) == 2
    one_backward(net, rule, x, y)
    assert net.blocks[1][2].weight.grad.abs().max() < 1e-5
    assert net.head[-1].weight.grad.abs().max() > 1e-3  # the output layer still learns from e


@pytest.mark.parametrize("overrides, message", [
    (["method.input_scale=0"], "method.input_scale=0 is out of range"),
    (["method.output_error=last"], "method.output_error='last' is not known"),
    (["trainer=pipeline"], "trainer=pipeline needs a rule whose blocks learn from local losses only"),
])
def test_bad_options_are_refused_before_data(overrides, message):
    from layerwise.runs.pipeline import check_pipeline_rule

    cfg = compose_cfg(["method=pepita", *overrides])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)
        check_pipeline_rule(cfg)


def test_conv_models_are_refused():
    with pytest.raises(ConfigError, match="method=pepita trains fully-connected networks"):
        make(["model=basic_cnn", "model.channels=[4]"], spec=InputSpec(3, 8, 5))


DIGITS = ["data=digits", "data.image_size=16", "trainer.max_epochs=3", "trainer.accelerator=cpu", "logger=none",
          "trainer.progress_bar=false", "method=pepita"]


def test_learns_digits(tmp_path):
    """Chance is 0.10; default SGD (lr 0.05, momentum 0.9), F at the paper's scale. Measured 0.869."""
    model = ["model=mlp", "model.widths=[128]", "model.head_hidden=[]", "model.batch_norm=false"]
    assert fit_cfg([*DIGITS, *model], tmp_path)["test_acc"] > 0.8

"""Every method learns: a smoke run per method x model on synthetic data, and a real-data run on digits."""
import math

import pytest

from conftest import DIGITS, TINY, fit_cfg

# Rules whose blocks have early-exit classifiers (reported as block_test_acc, one per block).
EXITS = {"dgl", "ssl", "predsim", "infopro", "deep_supervision", "mono_forward", "auglocal", "forward_gradient"}
METHODS = ["bp", "dgl", "dni", "cdni", "ssl", "predsim", "infopro", "random_features", "fa", "sign_symmetry", "dfa",
           "forward_forward"]


# The rules added later run on the grouped MLP only (their conv and residual runs: test_resnets' matrix and each
# rule's own tests), which keeps this table's cost flat as rules are added.
LATER_METHODS = ["deep_supervision", "deep_supervision_contrastive", "mono_forward", "auglocal", "forward_gradient",
                 "kolen_pollack", "weight_mirror", "pfa", "drtp", "target_prop", "pepita"]
MODELS = {
    "basic_cnn": (["model=basic_cnn", "model.channels=[8,8,8]", "model.head_hidden=[32]"], 3),
    "vgg11c-grouped": (["model=vgg11c", "model.width_mult=0.125", "model.head_hidden=[32]", "model.blocks=[3,2,3]"], 3),
    "mlp-grouped": (["model=mlp", "model.widths=[64,64,64]", "model.blocks=2"], 2),
}
CASES = [(m, name) for m in METHODS for name in MODELS] + [(m, "mlp-grouped") for m in LATER_METHODS]


@pytest.mark.parametrize("method, model_name", CASES, ids=[f"{m}-{name}" for m, name in CASES])
def test_smoke_each_method_and_model(method, model_name, tmp_path):
    """Every rule trains every model, with layers grouped into blocks by model.blocks."""
    model, n_blocks = MODELS[model_name]
    if method == "ssl" and model[0] == "model=mlp":
        pytest.skip("ssl reconstructs images from conv blocks (refusal tested in test_ssl)")
    if method == "forward_forward" and model[0] != "model=mlp":
        model = [*model, "model.batch_norm=false"]  # batch norm mixes positive and negative rows (refused)
    summary = fit_cfg([*TINY, f"method={method}", *model], tmp_path)
    assert summary["status"] == "completed" and summary["epochs_done"] == 1
    assert math.isfinite(summary["test_loss"]) and 0.0 <= summary["test_acc"] <= 1.0
    assert summary["imgs_per_sec"] > 0 and summary["peak_activation_mb"] > 0
    # Rules with aux heads report every block's early-exit accuracy (DGL's last block: the network head's).
    assert len(summary["block_test_acc"]) == (n_blocks if method in EXITS else 0)


@pytest.mark.parametrize("method, floor", [("bp", 0.85), ("dgl", 0.85)])
def test_learns_digits_well_above_chance(method, floor, tmp_path):
    """10 classes: chance is 0.10. Three epochs of a small BasicCNN on the real 8x8 digits."""
    summary = fit_cfg([*DIGITS, f"method={method}"], tmp_path)
    assert summary["test_acc"] > floor, summary
    if method == "dgl":
        assert len(summary["block_test_acc"]) == 3
        assert summary["block_test_acc"][-1] == pytest.approx(summary["test_acc"])  # last block = network head
        assert all(acc > 0.5 for acc in summary["block_test_acc"])

"""Every method learns: a smoke run per method x model on synthetic data, and a real-data run on digits."""
import math

import pytest

from conftest import TINY, fit_cfg


@pytest.mark.parametrize("method", ["bp", "dgl"])
@pytest.mark.parametrize("model, n_blocks", [
    (["model=basic_cnn", "model.channels=[8,8,8]", "model.head_hidden=[32]"], 3),
    (["model=vgg11c", "model.width_mult=0.125", "model.head_hidden=[32]"], 8),
    (["model=mlp", "model.widths=[64,64]"], 2),
], ids=["basic_cnn", "vgg11c", "mlp"])
def test_smoke_each_method_and_model(method, model, n_blocks, tmp_path):
    summary = fit_cfg([*TINY, f"method={method}", *model], tmp_path)
    assert summary["status"] == "completed" and summary["epochs_done"] == 1
    assert math.isfinite(summary["test_loss"]) and 0.0 <= summary["test_acc"] <= 1.0
    assert summary["imgs_per_sec"] > 0 and summary["peak_activation_mb"] > 0
    # DGL reports every block's early-exit accuracy (the last block's is the network head's); BP has none.
    assert len(summary["block_test_acc"]) == (n_blocks if method == "dgl" else 0)


@pytest.mark.parametrize("method, floor", [("bp", 0.85), ("dgl", 0.85)])
def test_learns_digits_well_above_chance(method, floor, tmp_path):
    """10 classes: chance is 0.10. Three epochs of a small BasicCNN on the real 8x8 digits."""
    summary = fit_cfg(["data=digits", "data.image_size=16", "model=basic_cnn", "model.channels=[16,16,16]",
                       "model.head_hidden=[64]", f"method={method}", "trainer.max_epochs=3", "trainer.accelerator=cpu",
                       "logger=none", "trainer.progress_bar=false"], tmp_path)
    assert summary["test_acc"] > floor, summary
    if method == "dgl":
        assert len(summary["block_test_acc"]) == 3
        assert summary["block_test_acc"][-1] == pytest.approx(summary["test_acc"])  # last block = network head
        assert all(acc > 0.5 for acc in summary["block_test_acc"])

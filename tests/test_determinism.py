"""trainer.deterministic=true: the same seed gives the same metrics, epoch by epoch (CPU)."""
import csv

import pytest

from conftest import TINY, fit_cfg

# Wall-clock columns differ between any two runs; everything else must match exactly.
TIMING = {"train/imgs_per_sec"}


def _metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


@pytest.mark.parametrize("method", ["dgl", "dfa"])
def test_same_seed_same_metrics(method, tmp_path):
    cfg = [*[o for o in TINY if not o.startswith(("logger", "trainer.max_epochs"))], "logger=csv",
           "trainer.max_epochs=2", "trainer.deterministic=true", "model=basic_cnn", "model.channels=[8,8,8]",
           "model.head_hidden=[32]", "model.dropout=0.2", "data.augment.random_crop=true",
           "data.augment.horizontal_flip=true", f"method={method}", "seed=3"]
    first = fit_cfg(cfg, tmp_path / "a")
    second = fit_cfg(cfg, tmp_path / "b")
    assert first["status"] == second["status"] == "completed"
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert len(a) >= 2 and a == b
    other = fit_cfg([*cfg[:-1], "seed=4"], tmp_path / "c")  # the check can fail: another seed differs
    assert _metrics(tmp_path / "c") != a and other["test_loss"] != first["test_loss"]

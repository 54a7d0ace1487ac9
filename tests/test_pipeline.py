"""Pipelined DGL (trainer=pipeline): 2 CPU processes learn, and with buffer 0 they train exactly as sequential DGL."""
from __future__ import annotations

import pytest
import torch

from conftest import fit_cfg, run_cli

# Real 8x8 digits at their native size, a 3-block MLP: each stage process starts in a few seconds.
BASE = ["data=digits", "data.image_size=8", "data.batch_size=64", "model=mlp", "model.widths=[64,64,64]",
        "model.head_hidden=[]", "method=dgl", "method.aux.hidden_dim=64", "optimizer=adam", "optimizer.lr=0.003",
        "trainer.max_epochs=2", "trainer.accelerator=cpu", "logger=csv", "trainer.progress_bar=false", "seed=3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    pipelined = fit_cfg([*BASE, "trainer=pipeline", "trainer.pipeline.stages=2"], root / "pipeline")
    # Float sums depend on how intra-op threads split them: the reference runs with the stages' thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = fit_cfg([*BASE, "trainer=default"], root / "sequential")
    finally:
        torch.set_num_threads(threads)
    return root, pipelined, sequential


def _state(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_pipeline_learns(runs):
    root, pipelined, _ = runs
    assert pipelined["status"] == "completed" and pipelined["epochs_done"] == 2
    assert pipelined["pipeline"]["stages"] == 2 and sum(pipelined["pipeline"]["blocks"], []) == [0, 1, 2]
    assert pipelined["test_acc"] > 0.6  # chance is 0.10
    assert len(pipelined["block_test_acc"]) == 3 and pipelined["imgs_per_sec"] > 0
    lines = (root / "pipeline" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and "block0/train_loss" in lines[0] and "train/loss" in lines[0]


def test_buffer_zero_equals_sequential_dgl(runs):
    root, pipelined, sequential = runs
    ours, reference = _state(root / "pipeline"), _state(root / "sequential")
    assert ours.keys() == reference.keys()
    different = [k for k in reference if not torch.equal(ours[k], reference[k])]
    assert not different, f"tensors differ from sequential DGL: {different}"
    assert pipelined["test_acc"] == pytest.approx(sequential["test_acc"], abs=1e-6)


def test_refused_rule_one_line_error(tmp_path):
    result = run_cli(["trainer=pipeline", "method=bp", "data=synthetic", "trainer.accelerator=cpu", "logger=none"],
                     tmp_path, timeout=120)
    assert result.returncode == 2
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "trainer=pipeline" in line]
    assert len(errors) == 1 and "method=dgl" in errors[0] and "trainer=default" in errors[0]
    assert "Traceback" not in result.stderr

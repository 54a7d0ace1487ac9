"""Non-finite guard (trainer.nonfinite): stop before the bad step (status diverged, last good checkpoint kept,
exit 2, one-line message naming block, step and fix), or skip the batch and count it."""
import csv
import math

import pytest
import torch

from conftest import TINY, fit_cfg, read_summary, run_cli_forked, run_dirs

MLP = ["model=mlp", "model.widths=[32,32,32]"]
BLOWUP = ["optimizer.lr=1e30"]  # the first SGD step makes the weights ~1e29: the next forward is inf/NaN


def _finite_state(path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def _nan_block1_at(monkeypatch, epoch_batch: int):
    """DGL's block 1 aux loss becomes NaN on its `epoch_batch`-th training call (3 batches per epoch here)."""
    from layerwise.rules.dgl import DecoupledGreedy

    original, calls = DecoupledGreedy.block_signal, {"n": 0}

    def block_signal(self, i, h, y):
        signal = original(self, i, h, y)
        if i == 1 and torch.is_grad_enabled() and signal is not None:
            calls["n"] += 1
            if calls["n"] == epoch_batch:
                signal.loss = signal.loss * float("nan")
                signal.objective = None
        return signal

    monkeypatch.setattr(DecoupledGreedy, "block_signal", block_signal)


def test_stop_raises_before_the_step_and_keeps_the_last_good_checkpoint(monkeypatch, tmp_path):
    from layerwise.core.guard import DivergedError

    _nan_block1_at(monkeypatch, 5)  # epoch 2, batch 2
    with pytest.raises(DivergedError) as err:
        fit_cfg([*TINY, *MLP, "method=dgl", "trainer.max_epochs=3"], tmp_path)
    message = str(err.value)
    assert "non-finite loss (nan) in block1 at epoch 2, batch 2" in message and "\n" not in message
    summary = read_summary(tmp_path)
    assert summary["status"] == "diverged" and summary["error"] == message
    assert summary["diverged_at"] == {"what": "loss", "where": "block1", "value": "nan", "epoch": 2, "batch": 2}
    assert summary["epochs_done"] == 1
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 0  # epoch 1's, not overwritten
    assert _finite_state(last)


def test_stop_through_the_cli_exits_2_with_one_line_naming_the_fix(tmp_path):
    res = run_cli_forked([*TINY, *MLP, *BLOWUP, "trainer.max_epochs=2"], tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "Traceback" not in out
    (line,) = [ln for ln in out.splitlines() if "training diverged" in ln]
    assert "in head at epoch 1, batch 2" in line
    assert "optimizer.lr" in line and "trainer.grad_clip" in line and "trainer.nonfinite=skip" in line
    (run,) = run_dirs(tmp_path)
    summary = read_summary(run)
    assert summary["status"] == "diverged" and "in head at epoch 1, batch 2" in summary["error"]
    for ckpt in (run / "checkpoints").glob("*.ckpt"):  # none is written mid-epoch; any that is must be finite
        assert _finite_state(ckpt)


def test_stop_in_a_multirun_marks_the_job_diverged(tmp_path):
    res = run_cli_forked(["-m", *TINY, *MLP, *BLOWUP], tmp_path)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    (run,) = run_dirs(tmp_path)
    summary = read_summary(run)
    assert summary["status"] == "diverged" and "in head at epoch 1, batch 2" in summary["error"]
    assert "diverged: training diverged" in res.stderr  # the sweep's failed-jobs report


def test_skip_completes_counts_the_batches_and_keeps_weights_finite(tmp_path):
    summary = fit_cfg([*TINY, *MLP, *BLOWUP, "trainer.max_epochs=2", "trainer.nonfinite=skip"], tmp_path)
    assert summary["status"] == "completed" and summary["epochs_done"] == 2
    assert summary["skipped_batches"] == 5  # 3 batches x 2 epochs, all but the first step
    with open(tmp_path / "metrics.csv") as f:
        per_epoch = [float(r["train/skipped_batches"]) for r in csv.DictReader(f) if r.get("train/skipped_batches")]
    assert per_epoch == [2.0, 3.0]
    assert _finite_state(tmp_path / "checkpoints" / "last.ckpt")


def test_skip_drops_only_the_affected_block(monkeypatch, tmp_path):
    _nan_block1_at(monkeypatch, 2)
    summary = fit_cfg([*TINY, *MLP, "method=dgl", "trainer.nonfinite=skip"], tmp_path)
    assert summary["status"] == "completed" and summary["skipped_batches"] == 1
    assert math.isfinite(summary["test_loss"])


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_a_normal_run_is_unaffected(mode, tmp_path):
    summary = fit_cfg([*TINY, *MLP, "method=dgl", f"trainer.nonfinite={mode}"], tmp_path)
    assert summary["status"] == "completed" and summary["skipped_batches"] == 0
    assert math.isfinite(summary["test_loss"])


def test_guard_checks_gradients_without_overflowing_on_large_finite_ones():
    from layerwise.core.guard import DivergedError, NonFiniteGuard

    big, bad = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(3))
    # Finite, but their 2-norm and their sum overflow to inf: the CPU screen's sum must be confirmed exactly.
    big.grad = torch.full((4,), 3e38)
    assert not big.grad.sum().isfinite()
    bad.grad = torch.tensor([0.0, float("inf"), 1.0])
    guard = NonFiniteGuard("stop")
    guard.begin_epoch(0)
    guard.begin_batch(6)
    assert guard.check([("block0", [big])]) == set()
    with pytest.raises(DivergedError, match=r"non-finite gradient \(nan or inf\) in block2 at epoch 1, batch 7"):
        guard.check([("block0", [big]), ("block2", [bad])])
    skip = NonFiniteGuard("skip")
    assert skip.check([("block0", [big]), ("block2", [bad])]) == {1} and skip.skipped_total == 1


def test_unknown_mode_is_a_config_error():
    from layerwise.core.guard import NonFiniteGuard
    from layerwise.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.nonfinite='ignore'"):
        NonFiniteGuard("ignore")

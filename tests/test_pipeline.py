"""Pipelined DGL (trainer=pipeline): 2 CPU processes learn, with buffer 0 they train exactly as sequential DGL,
and a stopped run (signal) resumes to the same bits as an uninterrupted one."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, compose_cfg, fit_cfg, run_cli, run_cli_forked

# Real 8x8 digits at their native size, a 3-block MLP: each stage process starts in a few seconds. Batches of 8
# make an epoch (180 batches) long enough for a signal sent after epoch 1 to land inside the run.
BASE = ["data=digits", "data.image_size=8", "data.batch_size=8", "model=mlp", "model.widths=[64,64,64]",
        "model.head_hidden=[]", "method=dgl", "method.aux.hidden_dim=64", "optimizer=adam", "optimizer.lr=0.003",
        "optimizer.scheduler.name=cosine", "trainer.max_epochs=3", "trainer.accelerator=cpu", "logger=csv",
        "trainer.progress_bar=false", "seed=3"]
PIPELINE = [*BASE, "trainer=pipeline", "trainer.pipeline.stages=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    pipelined = fit_cfg(PIPELINE, root / "pipeline")
    # Float sums depend on how intra-op threads split them: the reference runs with the stages' thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = fit_cfg([*BASE, "trainer=default"], root / "sequential")
    finally:
        torch.set_num_threads(threads)
    return root, pipelined, sequential


def _checkpoint(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def _state(run_dir) -> dict[str, torch.Tensor]:
    return _checkpoint(run_dir)["state_dict"]


def _training_state(run_dir) -> dict:
    """Everything a continued run trains on: weights, and each stage's optimizers, schedulers and RNG states."""
    checkpoint = _checkpoint(run_dir)
    stages = [{k: part[k] for k in ("optim", "rng", "replay_rng", "memory")}
              for part in checkpoint["pipeline"]["stages"]]
    return {"state_dict": checkpoint["state_dict"], "stages": stages}


def _assert_same(a, b, where="checkpoint"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _metrics(run_dir) -> list[dict]:
    """metrics.csv without its timing columns (img/s), which differ between any two runs."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if "imgs_per_sec" not in k} for row in csv.DictReader(f)]


def test_pipeline_learns(runs):
    root, pipelined, _ = runs
    assert pipelined["status"] == "completed" and pipelined["epochs_done"] == 3
    assert pipelined["pipeline"]["stages"] == 2 and sum(pipelined["pipeline"]["blocks"], []) == [0, 1, 2]
    assert pipelined["test_acc"] > 0.6  # chance is 0.10
    assert len(pipelined["block_test_acc"]) == 3 and pipelined["imgs_per_sec"] > 0
    lines = (root / "pipeline" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 4 and "block0/train_loss" in lines[0] and "train/loss" in lines[0]


def test_buffer_zero_equals_sequential_dgl(runs):
    root, pipelined, sequential = runs
    ours, reference = _state(root / "pipeline"), _state(root / "sequential")
    assert ours.keys() == reference.keys()
    different = [k for k in reference if not torch.equal(ours[k], reference[k])]
    assert not different, f"tensors differ from sequential DGL: {different}"
    assert pipelined["test_acc"] == pytest.approx(sequential["test_acc"], abs=1e-6)


def test_summary_has_the_default_runs_keys(runs):
    """DESIGN.md's output contract: a pipeline summary has every key a default run's has (null where the
    pipeline does not measure it), plus its own `pipeline` and `steady_imgs_per_sec`."""
    _, pipelined, sequential = runs
    assert set(sequential) - set(pipelined) == set()
    # segment_wall_s, segments, selected_on: keys the default summary gains with resume-aware summaries
    assert set(pipelined) - set(sequential) <= {"pipeline", "steady_imgs_per_sec", "segment_wall_s", "segments",
                                                 "selected_on"}
    assert pipelined["config_hash"] != sequential["config_hash"]  # trainer=pipeline is part of what is trained
    assert pipelined["peak_activation_mb"] is None and pipelined["skipped_batches"] is None


def test_throughput_definitions():
    """train/imgs_per_sec: the epoch's images over stage 0's start to the last stage's end (as the default
    trainer: first batch taken to last batch done); steady: the last stage's rate after the warm-up batches,
    over the epochs after the first."""
    from layerwise.runs.pipeline import merge_epoch, steady_rate

    stage0 = {"epoch": 1, "_t_start": 10.0, "block0/train_loss": 1.0}
    last = {"epoch": 1, "_t_end": 12.0, "_samples": 100, "_steady_s": 1.0, "_steady_n": 80, "train/loss": 2.0}
    row = merge_epoch([stage0, last])
    assert row["train/imgs_per_sec"] == 50.0 and row["block0/train_loss"] == 1.0 and row["train/loss"] == 2.0
    first_epoch = {"_steady_s": 10.0, "_steady_n": 10}
    assert steady_rate([first_epoch, last, last]) == 80.0
    assert steady_rate([first_epoch]) == 1.0


@pytest.mark.slow
def test_stop_mid_epoch_then_resume_is_bit_identical(runs, tmp_path):
    """A stop before batch 7 of epoch 2 (as a signal would): interrupted summary and checkpoint, Interrupted(SIGTERM);
    resume= continues to the uninterrupted run's weights, optimizer and scheduler states, RNG and metrics.

    Slow: the SIGTERM test below checks the same through the CLI (four more stage processes here); this one
    stops at a known batch instead of wherever the signal lands."""
    from layerwise.core.preemption import Interrupted
    from layerwise.runlog import setup_console
    from layerwise.runs.pipeline import fit_pipeline
    from layerwise.runs.resume import resolve

    root = runs[0]
    setup_console("WARNING")
    cfg = compose_cfg(PIPELINE)
    with pytest.raises(Interrupted) as stopped:
        fit_pipeline(cfg, tmp_path, stop_at=(1, 7))
    assert stopped.value.exit_code == 143
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_done"] == 1
    assert summary["test_acc"] == float(_metrics(root / "pipeline")[0]["test/acc"])  # epoch 1's, as the default
    position = _checkpoint(tmp_path)["layerwise"]["position"]
    assert position == {"epoch": 1, "batches_done": 7}

    resumed = fit_pipeline(cfg, tmp_path, resolve(str(tmp_path), tmp_path))
    assert resumed["status"] == "completed" and resumed["epochs_done"] == 3
    _assert_same(_training_state(root / "pipeline"), _training_state(tmp_path))
    assert _metrics(tmp_path) == _metrics(root / "pipeline")  # epoch 2's losses join both segments exactly
    assert resumed["best_test_acc"] == runs[1]["best_test_acc"]
    assert resumed["segments"] == 2 and resumed["wall_s"] > resumed["segment_wall_s"]


def test_sigterm_then_requeued_job_continues_bit_identical(runs, tmp_path):
    """The real CLI, SIGTERM to the whole process group (a Slurm time limit) during training: every stage stops,
    exit 143, one resumable checkpoint, no temp file; the same command again in the same run dir (a requeued
    job) continues and ends bit-identical to the uninterrupted run."""
    root = runs[0]
    run_dir = tmp_path / "run"
    args = [*PIPELINE, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "LAYERWISE_OUTPUT_ROOT": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        log = run_dir / "run.log"
        if log.is_file() and "epoch 1/3" in log.read_text():
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, (out + err)[-3000:]
    assert "Traceback" not in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert f"resume={run_dir}" in summary["resume"]
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    position = _checkpoint(run_dir)["layerwise"]["position"]
    assert position["epoch"] >= 1 and summary["epochs_done"] == position["epoch"]
    # The interrupted summary reports the last finished epoch's test accuracy, as the default trainer's does.
    assert summary["test_acc"] == float(_metrics(root / "pipeline")[position["epoch"] - 1]["test/acc"])

    again = run_cli(args, tmp_path, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "holds an interrupted run: continuing it" in again.stdout + again.stderr
    assert "epoch 3/3  loss" in again.stdout + again.stderr  # the per-epoch lines of the default trainer
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["epochs_done"] == 3
    _assert_same(_training_state(root / "pipeline"), _training_state(run_dir))
    assert _metrics(run_dir) == _metrics(root / "pipeline")  # the stopped epoch's losses join both segments exactly
    assert resumed["best_test_acc"] == runs[1]["best_test_acc"]
    assert resumed["segments"] == 2 and resumed["wall_s"] > resumed["segment_wall_s"]


def test_resume_refusals_one_line(runs, tmp_path):
    """A pipeline checkpoint resumed with another split or by the default trainer, a default checkpoint resumed
    by the pipeline, and a finished run resumed with the same max_epochs: one line each, nothing written."""
    from layerwise.core.checkpoint import CheckpointError
    from layerwise.errors import ConfigError
    from layerwise.runs.pipeline import fit_pipeline
    from layerwise.runs.resume import resolve
    from layerwise.runs.train import fit

    root = runs[0]
    pipeline_run, default_run = resolve(str(root / "pipeline"), root), resolve(str(root / "sequential"), root)
    before = {p: p.read_bytes() for p in (root / "pipeline").rglob("*") if p.is_file()}

    def accept():  # train.run's: the run may write into its directory from now on
        pytest.fail("a refused resume was accepted")

    with pytest.raises(ConfigError, match=r"trainer.pipeline.split=\[1,2\]"):
        fit_pipeline(compose_cfg([*PIPELINE, "trainer.pipeline.split=[2,1]", "trainer.max_epochs=4"]), tmp_path,
                     pipeline_run, accept=accept)
    with pytest.raises(ConfigError, match="already trained 3 epochs.*raise trainer.max_epochs above 3"):
        fit_pipeline(compose_cfg(PIPELINE), tmp_path, pipeline_run, accept=accept)
    with pytest.raises(CheckpointError, match="written by trainer=default, not trainer=pipeline"):
        fit_pipeline(compose_cfg([*PIPELINE, "trainer.max_epochs=4"]), tmp_path, default_run, accept=accept)
    with pytest.raises(CheckpointError, match="written by trainer=pipeline"):
        fit(compose_cfg([*BASE, "trainer=default", "trainer.max_epochs=4"]), tmp_path, pipeline_run)
    assert before == {p: p.read_bytes() for p in (root / "pipeline").rglob("*") if p.is_file()}
    assert not list(tmp_path.iterdir())


def test_finished_run_trains_on_with_more_epochs(runs, tmp_path):
    """A completed pipeline run's last.ckpt holds the training state: trainer.max_epochs=4 continues it."""
    import shutil

    from layerwise.runs.pipeline import fit_pipeline
    from layerwise.runs.resume import resolve

    run_dir = tmp_path / "run"
    shutil.copytree(runs[0] / "pipeline", run_dir)
    longer = fit_pipeline(compose_cfg([*PIPELINE, "trainer.max_epochs=4"]), run_dir, resolve(str(run_dir), tmp_path))
    assert longer["status"] == "completed" and longer["epochs_done"] == 4 and longer["segments"] == 2
    assert _metrics(run_dir)[:3] == _metrics(runs[0] / "pipeline") and len(_metrics(run_dir)) == 4


def test_refused_rule_one_line_error(tmp_path):
    result = run_cli_forked(["trainer=pipeline", "method=bp", "data=synthetic", "trainer.accelerator=cpu",
                             "logger=none"], tmp_path, timeout=120)
    assert result.returncode == 2
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "trainer=pipeline" in line]
    assert len(errors) == 1 and "method=dgl" in errors[0] and "trainer=default" in errors[0]
    assert "Traceback" not in result.stderr

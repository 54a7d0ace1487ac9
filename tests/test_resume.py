"""Exact resume: a run interrupted by a signal and resumed ends bit-identical to the same run uninterrupted."""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, compose_cfg, fit_cfg, run_cli, run_cli_forked

# Three batches per epoch, two epochs; dropout and augmentation draw random numbers, step-LR changes the rate.
BASE = ["data=synthetic", "data.n_train=96", "data.n_test=32", "data.batch_size=32", "data.image_size=16",
        "data.augment.random_crop=true", "data.augment.horizontal_flip=true", "trainer.accelerator=cpu",
        "trainer.max_epochs=2", "logger=csv", "trainer.progress_bar=false", "optimizer.scheduler.name=step",
        "optimizer.scheduler.step_size=1", "seed=5"]
CNN = ["model=basic_cnn", "model.channels=[8,8,8]", "model.head_hidden=[16]", "model.dropout=0.2"]
MLP = ["model=mlp", "model.widths=[32,32]", "model.head_hidden=[]"]

# bp, dgl and one rule of each later family: synthetic gradients, local losses, feedback (sign_symmetry brsf,
# which redraws its feedback magnitudes every batch), Forward-Forward (conv, with its linear head and collaboration).
# The stop point is (epoch, batch): mid-epoch, or the first batch of the second epoch.
CASES = {
    "bp": (["method=bp", *CNN], (1, 1)),
    "bp_val_split": (["method=bp", *CNN, "data.val_fraction=0.25"], (1, 1)),  # best chosen on val/acc
    "dgl": (["method=dgl", *CNN], (0, 2)),
    "dni": (["method=dni", *CNN], (1, 0)),
    "predsim": (["method=predsim", *CNN], (1, 2)),
    "sign_symmetry_brsf": (["method=sign_symmetry", "method.variant=brsf", *CNN], (1, 1)),
    "forward_forward": (["method=forward_forward", *CNN, "model.batch_norm=false", "method.predict=head",
                         "method.collaborative=true", "optimizer=adam", "optimizer.lr=0.01"], (1, 1)),
    "auglocal": (["method=auglocal", *CNN], (0, 1)),  # new state: the aux networks' layer copies
    # tangents keyed to (seed, batch): the rule's extra state
    "forward_gradient": (["method=forward_gradient", *MLP], (1, 1)),
    "target_prop": (["method=target_prop", "method.variant=ldrl", *CNN], (1, 1)),  # learned feedback, noise draws
    # the companion weight decays with the epoch (rule.begin_epoch) and the second view draws random shifts
    "deep_supervision_contrastive": (["method=deep_supervision", "method.variant=contrastive", "method.decay=linear",
                                      "method.aux.hidden_dim=16", "method.proj_dim=8", *CNN], (1, 0)),
    # learned feedback: kolen_pollack's B is a parameter (with momentum); weight_mirror's B is a buffer rewritten
    # from seeded noise (its seed and step count are buffers too)
    "kolen_pollack": (["method=kolen_pollack", *CNN], (1, 1)),
    "weight_mirror": (["method=weight_mirror", *CNN], (0, 2)),
}


def _stop_at(epoch: int, batch: int):
    from layerwise.core.preemption import Preemption

    class StopAt(Preemption):
        """Delivers SIGTERM's effect at a chosen batch, so the test knows where the run stopped."""

        def on_train_batch_start(self, trainer, pl_module, batch_, batch_idx):
            if (trainer.current_epoch, batch_idx) == (epoch, batch):
                self._handle(signal.SIGTERM, None)
            super().on_train_batch_start(trainer, pl_module, batch_, batch_idx)

    return StopAt


def _assert_same(a, b, where="checkpoint"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _training_state(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return {k: ckpt[k] for k in ("state_dict", "optimizer_states", "lr_schedulers", "epoch")}


@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_then_resumed_equals_uninterrupted(case, tmp_path):
    from layerwise.core.preemption import Interrupted, Preemption
    from layerwise.runlog import setup_console
    from layerwise.runs.resume import resolve
    from layerwise.runs.train import fit

    setup_console("WARNING")
    overrides, (epoch, batch) = CASES[case]
    cfg = compose_cfg([*BASE, *overrides])
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    for d in (straight, interrupted):
        d.mkdir()
    assert fit(cfg, straight)["status"] == "completed"

    stop = _stop_at(epoch, batch)(interrupted / "checkpoints" / "last.ckpt")
    with pytest.raises(Interrupted):
        fit(cfg, interrupted, None, stop)
    summary = json.loads((interrupted / "summary.json").read_text())
    assert stop.saved and summary["status"] == "interrupted"
    position = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)["layerwise"]["position"]
    assert position == {"epoch": epoch, "batches_done": batch}

    resumed = fit(cfg, interrupted, resolve(str(interrupted), tmp_path), Preemption(stop.checkpoint_path))
    assert resumed["status"] == "completed" and resumed["epochs_done"] == 2
    _assert_same(_training_state(straight), _training_state(interrupted))
    # The summary covers the whole run, not the part after the resume: best accuracies (test and val), epochs,
    # skipped batches, peak memory; wall_s is both segments, segment_wall_s the resumed one.
    whole = json.loads((straight / "summary.json").read_text())
    timing = ("imgs_per_sec", "wall_s", "segment_wall_s", "segments")
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in whole.items() if k not in timing}
    assert resumed["segments"] == 2 and resumed["wall_s"] > resumed["segment_wall_s"]
    # best.ckpt is the same epoch's: ModelCheckpoint's best score survived the resume
    best = [torch.load(d / "checkpoints" / "best.ckpt", weights_only=True) for d in (straight, interrupted)]
    _assert_same(best[0]["state_dict"], best[1]["state_dict"], "best.ckpt")


def test_resume_refuses_a_checkpoint_of_another_network(tmp_path):
    from layerwise.core.checkpoint import CheckpointError
    from layerwise.runlog import setup_console
    from layerwise.runs.resume import resolve
    from layerwise.runs.train import fit

    setup_console("WARNING")
    run = tmp_path / "dgl"
    run.mkdir()
    fit(compose_cfg([*BASE, "method=dgl", *CNN, "trainer.max_epochs=1"]), run)
    target = resolve(str(run), tmp_path)
    with pytest.raises(CheckpointError, match=r"method=dgl \(this run: bp\)"):
        fit(compose_cfg([*BASE, "method=bp", *CNN]), tmp_path / "bp", target)
    with pytest.raises(CheckpointError, match="tensors differ"):
        fit(compose_cfg([*BASE, "method=dgl", "model=basic_cnn", "model.channels=[8,8,16]",
                         "model.head_hidden=[16]"]), tmp_path / "wider", target)


def test_submitit_requeue_runs_after_the_checkpoint(monkeypatch, tmp_path):
    """Under submitit its preemption handler (SIGUSR2) is chained: ours records the signal, and after the
    checkpoint `requeue()` hands over to submitit's, which requeues the job."""
    from layerwise.core.preemption import Preemption

    calls = []

    class SignalHandler:  # stands in for submitit.core.job_environment.SignalHandler
        __module__ = "submitit.core.job_environment"

        def checkpoint_and_try_requeue(self, signum, frame=None):
            calls.append(signum)

    submitit = SignalHandler().checkpoint_and_try_requeue
    previous = signal.signal(signal.SIGUSR2, submitit)
    try:
        with Preemption(tmp_path / "last.ckpt") as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)
            assert stop.received == signal.SIGUSR2 and calls == []  # nothing requeued before the checkpoint
            stop.requeue()
        assert calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) == submitit  # handlers restored
    finally:
        signal.signal(signal.SIGUSR2, previous)


def _cli(args, **kwargs):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for(path, text, proc, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.is_file() and text in path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_sigterm_mid_training_then_requeued_job_continues(tmp_path):
    """The real CLI: SIGTERM during epoch 2 -> checkpoint, status interrupted, exit 143; the same command run
    again in the same run dir (what a requeued job does) continues and ends equal to an uninterrupted run."""
    args = ["data=synthetic", "data.n_train=2000", "data.n_test=32", "data.batch_size=16", "data.image_size=8",
            *MLP, "model.dropout=0.1", "trainer.accelerator=cpu", "trainer.max_epochs=2", "logger=csv",
            "trainer.progress_bar=false"]
    run_dir = tmp_path / "run"
    proc = _cli([*args, f"hydra.run.dir={run_dir}"])
    _wait_for(run_dir / "run.log", "epoch 1/2", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert not list((run_dir / "checkpoints").glob("*.tmp"))

    again = _cli([*args, f"hydra.run.dir={run_dir}"])
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    assert "holds an interrupted run: continuing it" in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"

    # The uninterrupted reference trains in this process: a third CLI run would only add its imports.
    assert fit_cfg(args, tmp_path / "straight")["status"] == "completed"
    _assert_same(_training_state(tmp_path / "straight"), _training_state(run_dir))
    # metrics.csv kept the first part's rows: epoch 1's evaluation is there, and equal to the uninterrupted run's
    assert _test_acc_by_epoch(run_dir) == _test_acc_by_epoch(tmp_path / "straight")


def _test_acc_by_epoch(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return {row["epoch"]: row["test/acc"] for row in csv.DictReader(f) if row.get("test/acc")}


# ----------------------------------------------------------------- bad inputs around resume and checkpoints
TINY_MLP = ["data=synthetic", "data.n_train=64", "data.n_test=32", "data.batch_size=32", "data.image_size=8",
            "model=mlp", "model.widths=[16]", "model.head_hidden=[]", "trainer.accelerator=cpu",
            "trainer.max_epochs=1", "logger=csv", "trainer.progress_bar=false"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny mlp run (bp), written in-process."""
    from layerwise.runlog import setup_console
    from layerwise.runs.train import fit

    setup_console("WARNING")
    run = tmp_path_factory.mktemp("finished") / "run"
    run.mkdir()
    fit(compose_cfg(TINY_MLP), run)
    return run


def _truncated(run, tmp):
    data = (run / "checkpoints" / "last.ckpt").read_bytes()
    (tmp / "half.ckpt").write_bytes(data[: len(data) // 2])
    return tmp / "half.ckpt"


def _pickled_object(run, tmp):
    torch.save({"state_dict": {}, "note": argparse.Namespace(x=1)}, tmp / "object.ckpt")
    return tmp / "object.ckpt"


def _no_checkpoint_dir(run, tmp):
    (tmp / "empty_run").mkdir()
    return tmp / "empty_run"


# (argument builder(finished run dir, tmp dir) -> extra args, expected fragment of the one-line error)
BAD_RESUME = {
    "resume-missing-dir": (lambda run, tmp: ["resume=/nonexistent/run"], "no such run directory or checkpoint"),
    "resume-dir-without-checkpoint": (lambda run, tmp: [f"resume={_no_checkpoint_dir(run, tmp)}"],
                                      "has no checkpoints/last.ckpt"),
    "resume-last-nothing": (lambda run, tmp: ["resume=last", f"paths.output_root={tmp / 'none'}"],
                            "resume=last: no run under"),
    "resume-sweep": (lambda run, tmp: ["-m", f"resume={run}", "seed=1,2"], "resume= continues one run, not a sweep"),
    "output-dir-not-writable": (lambda run, tmp: ["paths.output_root=/proc/layerwise-runs"],
                                "cannot write to the output directory /proc/layerwise-runs"),
    # trainer.max_epochs=2: the finished run is continued to train longer, so the checkpoint is then checked
    "checkpoint-other-architecture": (lambda run, tmp: [f"resume={run}", "model.widths=[32]", "trainer.max_epochs=2"],
                                      "was written by another network or rule (3 tensors differ"),
    "checkpoint-other-rule": (lambda run, tmp: [f"resume={run}", "method=fa", "trainer.max_epochs=2"],
                              "was written by another network or rule (method=bp (this run: fa)"),
    "checkpoint-truncated": (lambda run, tmp: [f"resume={_truncated(run, tmp)}"], "is not a checkpoint"),
    "checkpoint-with-objects": (lambda run, tmp: [f"resume={_pickled_object(run, tmp)}"],
                                "holds objects other than tensors (it needs argparse.Namespace)"),
}


@pytest.mark.parametrize("case", list(BAD_RESUME))
def test_bad_resume_input_exits_with_one_clear_line(case, finished_run, tmp_path):
    build, message = BAD_RESUME[case]
    args = [*TINY_MLP, *build(finished_run, tmp_path)]
    res = run_cli_forked(args, tmp_path, timeout=180)
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if "ERROR" in line or line.startswith("error:")]
    assert len(errors) == 1, errors
    assert not list(tmp_path.rglob("*.tmp"))


def test_disk_full_on_checkpoint_write_leaves_no_partial_file(tmp_path):
    """The file-size limit stands in for a full disk: the checkpoint write fails with EFBIG instead of ENOSPC."""
    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # logs fit, a checkpoint does not

    res = run_cli([*TINY_MLP, "model.widths=[64]"], tmp_path, preexec_fn=limited, timeout=180)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "could not write checkpoint" in res.stderr and "earlier checkpoints are intact" in res.stderr
    assert "Traceback" not in res.stderr
    (summary,) = tmp_path.rglob("summary.json")
    assert json.loads(summary.read_text())["status"] == "failed"
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".ckpt", ".tmp")]


def test_rerun_sweep_in_its_dir_keeps_completed_jobs(tmp_path):
    """hydra.sweep.dir=<old sweep>: completed jobs are kept (not retrained, not overwritten); a job whose config
    changed is trained again."""
    sweep = tmp_path / "sweep"
    first = run_cli(["-m", *TINY_MLP, "seed=1,2", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p: p.stat().st_mtime_ns for p in sweep.rglob("last.ckpt")}
    again = run_cli(["-m", *TINY_MLP, "seed=1,3", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("already holds this job's completed run") == 1  # seed=1 kept, seed=3 is new
    kept, retrained = sorted(before)
    assert kept.stat().st_mtime_ns == before[kept] and retrained.stat().st_mtime_ns != before[retrained]
    assert json.loads((sweep / "1" / "summary.json").read_text())["seed"] == 3


def test_summary_state_survives_a_resume():
    """The issue's case: best 0.297 at epoch 2, a resume, 0.269 at epoch 3 -> best stays 0.297."""
    from types import SimpleNamespace

    from layerwise.runs.summary import SummaryCallback

    def epoch(callback, acc, val):
        trainer = SimpleNamespace(sanity_checking=False,
                                  callback_metrics={"test/acc": torch.tensor(acc), "val/acc": torch.tensor(val)})
        callback.on_validation_epoch_end(trainer, None)

    first = SummaryCallback(None, {})
    epoch(first, 0.297, 0.31)
    first.imgs_per_sec = [100.0, 200.0]
    first.earlier_wall_s = 50.0
    state = first.state_dict()
    resumed = SummaryCallback(None, {})
    resumed.load_state_dict(state)
    epoch(resumed, 0.269, 0.25)
    assert resumed.best_test_acc == pytest.approx(0.297) and resumed.best_val_acc == pytest.approx(0.31)
    assert resumed.imgs_per_sec == [100.0, 200.0] and resumed.segments == 2
    assert resumed.state_dict()["wall_s"] >= 50.0


def test_best_score_survives_a_resume_through_another_spelling_of_the_run_dir(tmp_path):
    """A symlinked experiments/ (common on clusters): Lightning would compare the paths as strings and forget the
    best score, and best.ckpt would then be overwritten by a worse epoch."""
    from layerwise.core.checkpoint import RunCheckpoint

    real = tmp_path / "scratch" / "run" / "checkpoints"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "scratch")
    before = RunCheckpoint(dirpath=real, filename="best", monitor="test/acc", mode="max")
    before.best_model_score = torch.tensor(0.297)
    after = RunCheckpoint(dirpath=tmp_path / "link" / "run" / "checkpoints", filename="best", monitor="test/acc",
                          mode="max")
    assert after.state_key == before.state_key and after.state_key.startswith("ModelCheckpoint{")
    after.load_state_dict(before.state_dict())
    assert after.best_model_score == pytest.approx(0.297)


@pytest.mark.parametrize("overrides,expected", [
    ([], "4070d834014f913a"),
    (["method=dgl", "data=digits", "model=mlp"], "46e807ab726c32f7"),
    (["method=dfa", "model=resnet20"], "36a137109b9864d2"),
])
def test_config_hashes_survive_new_options_left_unset(overrides, expected):
    """The hashes of configs made before callbacks, logger.extra and allowed_targets existed: an
    interrupted run from then is still recognised as this run (and continued). A new key whose default changes
    these must be added to layout.UNSET_IS_ABSENT (or NOT_TRAINED), or the change said in the release notes."""
    from layerwise.config.checks import check_config
    from layerwise.core.layout import config_hash

    cfg = compose_cfg(overrides)
    check_config(cfg)
    assert config_hash(cfg) == expected

"""Run directories are safe: a completed run is never modified by a later command, one process writes a run
directory at a time, and nothing is written into a run directory before the command is allowed to write there."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, read_summary, run_cli, run_cli_forked

TINY_MLP = ["data=synthetic", "data.n_train=64", "data.n_test=32", "data.batch_size=32", "data.image_size=8",
            "model=mlp", "model.widths=[16]", "model.head_hidden=[]", "trainer.accelerator=cpu",
            "trainer.max_epochs=2", "logger=csv", "trainer.progress_bar=false"]


def snapshot(directory) -> dict:
    """Every file's hash and mtime and every folder's mtime (a created-then-removed file changes its folder's)."""
    state = {".": os.stat(directory).st_mtime_ns}
    for root, dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                state[os.path.relpath(path, directory)] = (hashlib.sha1(f.read()).hexdigest(),
                                                           os.stat(path).st_mtime_ns)
        for name in dirs:
            path = os.path.join(root, name)
            state[os.path.relpath(path, directory) + "/"] = os.stat(path).st_mtime_ns
    return state


@pytest.fixture(scope="module")
def completed(tmp_path_factory):
    """A completed 2-epoch run made by the real CLI (with its .hydra/), and the root it lies under."""
    root = tmp_path_factory.mktemp("completed")
    res = run_cli([*TINY_MLP, f"hydra.run.dir={root / 'run'}"], root)
    assert res.returncode == 0, res.stderr[-2000:]
    return root / "run"


def _other_tool_checkpoint(run):
    torch.save({"weights": torch.zeros(3)}, run / "checkpoints" / "other_tool.ckpt")  # a zip, not layerwise's
    return run / "checkpoints" / "other_tool.ckpt"


def _garbage_checkpoint(run):
    (run / "checkpoints" / "garbage.ckpt").write_bytes(b"\x00not a checkpoint" * 100)
    return run / "checkpoints" / "garbage.ckpt"


def _truncated_checkpoint(run):
    data = (run / "checkpoints" / "last.ckpt").read_bytes()
    (run / "checkpoints" / "half.ckpt").write_bytes(data[: len(data) // 2])
    return run / "checkpoints" / "half.ckpt"


def _text_file(run):
    (run / "notes.txt").write_text("my notes\n")
    return run / "notes.txt"


# name: (extra arguments given the run dir (files they need are made before the snapshot), the error's fragment)
REFUSED = {
    "resume-completed-same-epochs": (lambda run: [f"resume={run}"],
                                     "already completed at epoch 2; raise trainer.max_epochs (now 2)"),
    "resume-completed-fewer-epochs": (lambda run: [f"resume={run}", "trainer.max_epochs=1"],
                                      "already completed at epoch 2; raise trainer.max_epochs (now 1)"),
    "resume-last-completed": (lambda run: ["resume=last", f"paths.output_root={run.parent}"],
                              "already completed at epoch 2"),
    "resume-last-incompatible": (lambda run: ["resume=last", f"paths.output_root={run.parent}",
                                              "trainer.max_epochs=3", "method=fa"],
                                 "was written by another network or rule (method=bp (this run: fa)"),
    "hydra-run-dir-completed": (lambda run: [f"hydra.run.dir={run}", "seed=1"],
                                "already holds a completed run (bp/mlp/synthetic, seed 0, 2 epochs)"),
    "resume-text-file": (lambda run: [f"resume={_text_file(run)}"], "is not a checkpoint (a torch checkpoint is a zip"),
    "resume-garbage-ckpt": (lambda run: [f"resume={_garbage_checkpoint(run)}"], "is not a checkpoint"),
    "resume-truncated-ckpt": (lambda run: [f"resume={_truncated_checkpoint(run)}"], "is not a checkpoint"),
    "resume-other-tool-ckpt": (lambda run: [f"resume={_other_tool_checkpoint(run)}", "trainer.max_epochs=3"],
                               "is not a layerwise training checkpoint"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refusal_leaves_the_run_directory_byte_for_byte(case, completed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(completed, run)
    build, message = REFUSED[case]
    args = build(run)
    before = snapshot(run)
    res = run_cli_forked([*TINY_MLP, *args], tmp_path, timeout=180)
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if "ERROR" in line or line.startswith("error:")]
    assert len(errors) == 1, errors
    assert snapshot(run) == before
    assert not list(tmp_path.glob(".*.lock*"))  # the lock beside the run dir is gone too


def test_locked_run_directory_names_its_holder(completed, tmp_path):
    from layerwise.runs.rundir import RunDirLock

    run = tmp_path / "run"
    shutil.copytree(completed, run)
    before = snapshot(run)
    lock = RunDirLock(run)
    lock.acquire()
    try:
        res = run_cli([*TINY_MLP, f"resume={run}", "trainer.max_epochs=3"], tmp_path, timeout=180)
    finally:
        lock.release()
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"is in use by another process (pid {os.getpid()} on " in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert snapshot(run) == before
    assert not lock.path.exists() and not lock.holder_path.exists()


def test_stale_lock_of_a_killed_process_does_not_block(tmp_path):
    """SIGKILL leaves the lock file behind, but its OS lock died with the process."""
    run = tmp_path / "run"
    run.mkdir()
    code = ("import sys, time; from pathlib import Path; from layerwise.runs.rundir import RunDirLock; "
            "lock = RunDirLock(Path(sys.argv[1])); lock.acquire(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        from layerwise.errors import ConfigError
        from layerwise.runs.rundir import RunDirLock

        with pytest.raises(ConfigError, match=f"pid {holder.pid} on "):
            RunDirLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunDirLock(run)
    assert lock.path.exists()  # left behind by the killed process
    lock.acquire()
    lock.release()


def test_resume_with_more_epochs_continues_in_place_and_keeps_the_record(completed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(completed, run)
    first = read_summary(run)
    original_config = (run / ".hydra" / "config.yaml").read_bytes()
    res = run_cli([*TINY_MLP, f"resume={run}", "trainer.max_epochs=3"], tmp_path, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["epochs_done"] == 3 and summary["segments"] == 2
    assert summary["best_test_acc"] >= first["best_test_acc"]  # the first segment's epochs count
    assert summary["wall_s"] > summary["segment_wall_s"]  # whole run vs this segment
    assert (run / ".hydra" / "config.yaml").read_bytes() == original_config
    (resumed_cfg,) = (run / ".hydra").glob("resume-*/config.yaml")
    assert "max_epochs: 3" in resumed_cfg.read_text()
    assert not list(tmp_path.glob(".*.lock*"))


def test_overwrite_true_replaces_a_run_explicitly(completed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(completed, run)
    res = run_cli([*TINY_MLP, f"hydra.run.dir={run}", "seed=1", "trainer.max_epochs=1", "overwrite=true"],
                  tmp_path, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "overwrite=true: replacing a completed run" in res.stderr
    summary = read_summary(run)
    assert summary["seed"] == 1 and summary["epochs_done"] == 1
    assert not list((run / ".hydra").glob("resume-*"))
    assert "seed: 1" in (run / ".hydra" / "config.yaml").read_text()


def test_error_after_the_run_dir_exists_writes_a_failed_summary(tmp_path):
    """Missing CIFAR offline (and any other error once the run dir exists): status failed, not 'running'."""
    res = run_cli_forked(["data=cifar10", f"data.root={tmp_path / 'no_data'}", "data.download=false", "model=mlp",
                   "model.widths=[16]", "trainer.accelerator=cpu", "logger=csv", "trainer.progress_bar=false"],
                         tmp_path, timeout=180)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    (summary,) = tmp_path.rglob("summary.json")
    data = json.loads(summary.read_text())
    assert data["status"] == "failed" and "data.download=false" in data["error"]
    assert (summary.parent / ".hydra" / "config.yaml").is_file() and (summary.parent / "run.log").is_file()


def _popen(args, root):
    env = {**os.environ, "LAYERWISE_OUTPUT_ROOT": str(root), "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, text, proc, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.is_file() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")


LONG = ["data=synthetic", "data.n_train=2000", "data.n_test=32", "data.batch_size=16", "data.image_size=8",
        "model=mlp", "model.widths=[32]", "model.head_hidden=[]", "trainer.accelerator=cpu",
        "trainer.max_epochs=3", "logger=csv", "trainer.progress_bar=false"]


def test_second_process_on_a_run_dir_is_refused_and_the_first_goes_on_intact(tmp_path):
    run = tmp_path / "run"
    first = _popen([*LONG, "trainer.max_epochs=100", f"hydra.run.dir={run}"], tmp_path)
    try:
        _wait_for(run / "run.log", "epoch 1/100", first)
        second = run_cli([*TINY_MLP, f"hydra.run.dir={run}", "seed=3"], tmp_path, timeout=180)
        assert first.poll() is None  # still training: the second really met a running run
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"{run} is in use by another process (pid {first.pid} on " in second.stderr, second.stderr[-2000:]
    assert "Traceback" not in second.stderr
    assert first.returncode == 128 + signal.SIGTERM, err[-2000:]
    summary = read_summary(run)
    assert summary["status"] == "interrupted" and summary["seed"] == 0
    header, *rows = (run / "metrics.csv").read_text().splitlines()
    assert rows and all(row.count(",") == header.count(",") for row in rows)
    assert "seed=3" not in (run / "run.log").read_text()
    assert not list(tmp_path.glob(".*.lock*"))


def test_ctrl_c_twice_exits_130_like_once(tmp_path):
    run = tmp_path / "run"
    proc = _popen([*LONG, f"hydra.run.dir={run}"], tmp_path)
    try:
        _wait_for(run / "run.log", "epoch 1/3", proc)
        while not (run / "checkpoints" / "last.ckpt").is_file() and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Detected KeyboardInterrupt" not in err
    summary = read_summary(run)
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] >= 0  # intact
    assert f"resume={run}" in summary["resume"]
    assert not list(run.rglob("*.tmp"))


def test_second_ctrl_c_mid_batch_stops_as_interrupted_without_a_new_checkpoint(tmp_path):
    """The second Ctrl-C lands mid-batch (here: right after one): Interrupted(at_once), not Lightning's
    KeyboardInterrupt path (SystemExit 1); summary interrupted; no checkpoint of a half-trained state."""
    from conftest import compose_cfg
    from layerwise.core.preemption import Interrupted, Preemption
    from layerwise.runlog import setup_console
    from layerwise.runs.train import fit

    class CtrlCTwice(Preemption):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 0:
                self._handle(signal.SIGINT, None)
                self._handle(signal.SIGINT, None)

    setup_console("WARNING")
    stop = CtrlCTwice(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(Interrupted) as caught:
        fit(compose_cfg(TINY_MLP), tmp_path, None, stop)
    assert caught.value.at_once and caught.value.exit_code == 130
    assert not stop.saved and not (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert read_summary(tmp_path)["status"] == "interrupted"

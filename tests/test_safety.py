"""Safety: wandb failures never end a run, secrets never reach the run's files, checkpoints load weights only."""
import os

import pytest
import torch
from loguru import logger

from conftest import TINY, fit_cfg, read_summary, run_cli, run_dirs
from layerwise.core.checkpoint import CheckpointError, load_checkpoint
from layerwise.runlog import add_run_log, redact

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 hex characters, like a real wandb API key
MLP = ["model=mlp", "model.widths=[32,32]", "model.head_hidden=[16]"]


def _text_files(root):
    for path in root.rglob("*"):
        if path.is_file():
            yield path, path.read_bytes()


@pytest.fixture(scope="module")
def unreachable_wandb_run(tmp_path_factory):
    """A run asked to log online with a (fake) key while api.wandb.ai cannot be reached (no network, or refused)."""
    out = tmp_path_factory.mktemp("wandb_down")
    # logger.init_timeout, not WANDB_INIT_TIMEOUT: the config's 30 s wins over the environment, and each of the
    # two starts (online, then the offline fallback) may wait that long.
    res = run_cli([*TINY, *MLP, "logger=default", "logger.mode=online", "logger.init_timeout=5", "name=wandb_down"],
                  out, env={"WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": "online",
                            "WANDB_BASE_URL": "http://127.0.0.1:9"},  # port 9 (discard): refused, never reached
                  timeout=120)
    return res, out


def test_unreachable_wandb_does_not_stop_the_run(unreachable_wandb_run):
    res, out = unreachable_wandb_run
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = run_dirs(out)
    assert read_summary(run)["status"] == "completed"
    assert (run / "metrics.csv").read_text().count("\n") >= 2
    # Said once, on the console and in run.log, with what to do later.
    for text in (res.stderr, (run / "run.log").read_text()):
        assert text.count("wandb unavailable") == 1, text[-3000:]
    line = next(x for x in res.stderr.splitlines() if "wandb unavailable" in x)
    assert "continuing with metrics.csv" in line and "wandb sync" in line
    assert list((run / "wandb").glob("offline-run-*")), "the fallback offline wandb run is kept for `wandb sync`"


def test_api_key_is_in_no_file_of_the_run(unreachable_wandb_run):
    res, out = unreachable_wandb_run
    (run,) = run_dirs(out)
    names = {p.name for p, _ in _text_files(run)}
    assert {"run.log", "summary.json", "metrics.csv", "config.yaml", "debug.log", "debug-internal.log"} <= names
    leaks = [str(p.relative_to(run)) for p, data in _text_files(run) if FAKE_KEY.encode() in data]
    assert leaks == []
    assert FAKE_KEY not in res.stdout + res.stderr


def test_run_log_and_console_redact_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    sink = add_run_log(tmp_path)
    try:
        logger.info(f"environment WANDB_API_KEY={FAKE_KEY}")
        logger.info("settings {'api_key': 'zzzz-not-in-env-1234', 'password': 'hunter22'} tokens: 5")
        logger.info("header Authorization: Bearer sk-live-abcdef")
        try:
            raise RuntimeError(f"server said: bad key {FAKE_KEY} / hf_abcdefghijklmnop")
        except RuntimeError:
            logger.exception("a failure whose traceback carries the key")
    finally:
        logger.remove(sink)
    log = (tmp_path / "run.log").read_text()
    for secret in (FAKE_KEY, "zzzz-not-in-env-1234", "hunter22", "sk-live-abcdef", "hf_abcdefghijklmnop"):
        assert secret not in log, secret
    assert "WANDB_API_KEY=***" in log and "tokens: 5" in log and "RuntimeError" in log
    assert redact(f"key {FAKE_KEY} ok") == "key *** ok"


# --- checkpoints ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt")
    fit_cfg([*TINY, *MLP, "method=dgl"], run)  # dgl: aux heads and one optimizer per block in the checkpoint
    return run


def test_lightning_checkpoints_load_weights_only(tiny_run):
    for name in ("last.ckpt", "best.ckpt"):
        ckpt = load_checkpoint(tiny_run / "checkpoints" / name, map_location="cpu")
        assert ckpt["state_dict"] and all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())
        assert "hyper_parameters" not in ckpt  # the model is rebuilt from .hydra/config.yaml, not from pickles
        assert len(ckpt["optimizer_states"]) >= 2
        torch.load(tiny_run / "checkpoints" / name, weights_only=True)  # and so does plain torch


class Payload:
    def __reduce__(self):  # what a malicious checkpoint does: run code on unpickling
        return (print, ("pwned",))


@pytest.mark.parametrize("obj", [Payload(), {"cls": Payload}, {"fn": os.system}],
                         ids=["reduce-payload", "class", "function"])
def test_checkpoint_with_objects_is_refused(tmp_path, tiny_run, obj, capsys):
    path = tmp_path / "evil.ckpt"
    ckpt = load_checkpoint(tiny_run / "checkpoints" / "last.ckpt")
    ckpt["extra"] = obj
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"holds objects other than tensors.*weights only"):
        load_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out


def test_custom_class_instance_is_named(tmp_path):
    path = tmp_path / "custom.ckpt"
    torch.save({"thing": _Custom()}, path)
    with pytest.raises(CheckpointError, match=r"custom.ckpt holds objects other than tensors \(it needs "
                                              r"test_safety\._Custom\)"):
        load_checkpoint(path)


class _Custom:
    pass


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_gives_a_clear_message(tmp_path, tiny_run, damage):
    data = (tiny_run / "checkpoints" / "last.ckpt").read_bytes()
    path = tmp_path / "bad.ckpt"
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint\n" * 4}[damage])
    with pytest.raises(CheckpointError, match=r"bad.ckpt is not a readable (weights-only )?checkpoint"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.ckpt")


# --- wandb failing after start-up ----------------------------------------------------------------------------


class _BrokenRun:
    def log(self, *args, **kwargs):
        raise ConnectionError("wandb service went away")


def _capture_warnings():
    lines = []
    return lines, logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")


def test_wandb_log_failure_is_one_warning_and_training_goes_on():
    from layerwise.runs.wandb_setup import SafeWandbLogger

    wl = SafeWandbLogger(project="p", save_dir="/tmp", mode="disabled")
    wl._experiment = _BrokenRun()
    lines, sink = _capture_warnings()
    try:
        for step in range(3):
            wl.log_metrics({"train/loss": 1.0}, step=step)  # no exception reaches the trainer
    finally:
        logger.remove(sink)
    assert len(lines) == 1 and "wandb failed while logging metrics" in lines[0] and "ConnectionError" in lines[0]


def test_wandb_finish_failure_is_a_warning(monkeypatch):
    import wandb

    from layerwise.runs.wandb_setup import finish_wandb

    def broken_finish(*args, **kwargs):
        raise RuntimeError("upload failed")

    monkeypatch.setattr(wandb, "run", object(), raising=False)
    monkeypatch.setattr(wandb, "finish", broken_finish)
    lines, sink = _capture_warnings()
    try:
        finish_wandb()
    finally:
        logger.remove(sink)
    assert len(lines) == 1 and "wandb could not finish the run (RuntimeError: upload failed)" in lines[0]

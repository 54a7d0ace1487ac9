"""Shared helpers: composing configs in-process and running the real CLI in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1":
    # One intra-op thread per xdist worker: N workers x N threads on N cores thrash (measured ~2x slower).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
os.environ.setdefault("WANDB_SILENT", "true")

# Small and fast: a few hundred synthetic images, narrow convs.
TINY = ["data=synthetic", "data.n_train=192", "data.n_test=64", "data.batch_size=64", "data.image_size=16",
        "trainer.accelerator=cpu", "trainer.max_epochs=1", "logger=csv", "trainer.progress_bar=false"]


# A real-data learning check: a small BasicCNN for 3 epochs on scikit-learn's 8x8 digits (chance is 0.10).
DIGITS = ["data=digits", "data.image_size=16", "model=basic_cnn", "model.channels=[16,16,16]", "model.head_hidden=[64]",
          "trainer.max_epochs=3", "trainer.accelerator=cpu", "logger=none", "trainer.progress_bar=false"]


# The same digits check with an MLP (model.head_hidden=[]: the output layer follows the last block directly).
DIGITS_MLP = [o for o in DIGITS if not o.startswith("model")] + ["model=mlp", "model.widths=[128,128]",
                                                                  "model.head_hidden=[]"]


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def fit_cfg(overrides: list[str], run_dir: Path) -> dict:
    """Train in-process (no Hydra run dir) and return the summary."""
    from layerwise.runlog import setup_console
    from layerwise.runs.train import fit

    setup_console("WARNING")
    run_dir.mkdir(parents=True, exist_ok=True)
    return fit(compose_cfg(overrides), run_dir)


def rule_on_random_batch(method: str, overrides: list[str], spec, n: int = 12):
    """(cfg, net, rule, x, y): method=`method` set up on a seeded random batch of `n` shaped by `spec` (for the
    rules' math tests, which replay one step by hand)."""
    import torch

    from layerwise.models import build_network
    from layerwise.rules import build_rule

    cfg = compose_cfg([f"method={method}", "optimizer.scheduler.name=none", *overrides])
    torch.manual_seed(0)
    net = build_network(cfg.model, spec)
    rule = build_rule(cfg.method)
    x = torch.randn(n, spec.channels, spec.size, spec.size)
    y = torch.randint(0, spec.num_classes, (n,))
    rule.setup(net, x, spec.num_classes)
    return cfg, net, rule, x, y


def one_backward(net, rule, x, y):
    """The loop's backward for one batch (run_batch without stepping): gradients land in .grad."""
    from layerwise.core.batch import backward_only, run_batch

    net.zero_grad(set_to_none=True)
    run_batch(net, rule, x, y, backward_only, lambda i: None)


def small_module(overrides: list[str], spec, batch: int = 16):
    """A LayerwiseModule for `overrides` on a random batch shaped by `spec` (labels cycle through the classes)."""
    import torch

    from layerwise.core.module import LayerwiseModule
    from layerwise.models import build_network
    from layerwise.rules import build_rule

    cfg = compose_cfg(overrides)
    torch.manual_seed(0)
    net = build_network(cfg.model, spec)
    rule = build_rule(cfg.method)
    x = torch.randn(batch, spec.channels, spec.size, spec.size)
    y = torch.arange(batch) % spec.num_classes
    rule.setup(net, x, spec.num_classes)
    return LayerwiseModule(net, rule, cfg.optimizer, spec.num_classes, x[:2], max_epochs=1), x, y


def train_batches(module, x, y, batch_size):
    """One epoch of the real Lightning loop over (x, y), without validation or outputs."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)


def assert_one_epoch_reaches(module, x, y, batch_size: int, expected: list, what: str) -> None:
    """Trains (x, y) once through the real loop, then checks every parameter of module.net and module.rule (in that
    order) moved and equals its entry of `expected` (the step a test replayed by hand); `what` names them."""
    import torch

    before = [p.detach().clone() for p in [*module.net.parameters(), *module.rule.parameters()]]
    train_batches(module, x, y, batch_size=batch_size)
    got = [*module.net.parameters(), *module.rule.parameters()]
    assert len(got) == len(before) == len(expected)
    for want, p, p_before in zip(expected, got, before):
        assert not torch.equal(p, p_before), f"every {what} must be trained"
        torch.testing.assert_close(p.detach(), want, atol=1e-6, rtol=1e-5)


def run_cli(args: list[str], out_root: Path, env: dict | None = None, timeout: int = 300, **popen):
    full_env = {**os.environ, "LAYERWISE_OUTPUT_ROOT": str(out_root), **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=out_root, env=full_env,
                          capture_output=True, text=True, timeout=timeout, **popen)


def fork_main(args: list[str], out_root: Path, env: dict, stdout: int, stderr: int, clear_env: bool = True) -> int:
    """Fork a process that runs `python main.py <args>` as the interpreter would (exit code, traceback), with its
    streams on the file descriptors `stdout` / `stderr` and `env` on top of this environment (instead of it, with
    `clear_env`); its pid. Torch, Lightning and Hydra are imported here once, not in every child."""
    import runpy
    import traceback

    import layerwise.runs.train  # noqa: F401 - torch and Lightning, here once rather than in every child

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1  # the child: never returns into pytest
    try:
        import torch

        # GNU OpenMP cannot run a parallel region in the fork of a process that has run one (the child waits for
        # the parent's worker threads forever): like torch's DataLoader workers, the child uses one thread.
        torch.set_num_threads(1)
        import atexit

        atexit._clear()  # this process's exit handlers (pytest's temporary folders ...) are not the child's to run
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        if clear_env:
            os.environ.clear()
        os.environ.update({"LAYERWISE_OUTPUT_ROOT": str(out_root), **env})
        os.chdir(out_root)
        from loguru import logger

        import layerwise.runlog

        logger.remove()  # the console sink this process set up writes to pytest's capture, not to fd 2
        layerwise.runlog._console_sink = None
        sys.argv = [str(ROOT / "main.py"), *args]
        try:
            runpy.run_path(str(ROOT / "main.py"), run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - as the interpreter would: traceback, exit 1
            traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_cli_forked(args: list[str], out_root: Path, env: dict | None = None, timeout: int = 300):
    """run_cli for command lines whose interpreter start-up is not what is tested (errors after torch is imported,
    runs that stop, sweeps on the basic launcher): main.py runs in a fork of this process, which has torch,
    Lightning and Hydra imported already (a fresh interpreter spends ~8-10 s on them). Same exit code, stdout and
    stderr as the real command; what the imports themselves do (the torch-free config errors, wandb, a launcher's
    own processes) is left to the tests that use run_cli."""
    import signal
    import tempfile
    import time

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = fork_main(args, out_root, {**os.environ, **(env or {})}, out.fileno(), err.fileno())
        deadline = time.time() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.time() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired(args, timeout)
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), out.read(), err.read())


def run_dirs(out_root: Path) -> list[Path]:
    return sorted(p.parent for p in out_root.rglob("summary.json"))


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def tiny():
    return list(TINY)

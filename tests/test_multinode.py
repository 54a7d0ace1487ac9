"""Several nodes (trainer.num_nodes) and the lightning.Trainer arguments that pass through the trainer config.

Two local processes pose as two nodes of one device each, started the way torchrun or a cluster script starts
them: the same command on every node, with MASTER_ADDR / MASTER_PORT / WORLD_SIZE / NODE_RANK / LOCAL_RANK in the
environment, so Lightning starts no process itself. They are forks of the test process (torch and Lightning
imported once, as conftest.run_cli_forked does), not fresh interpreters, which would cost ~10 s each here.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, compose_cfg, fit_cfg, fork_main, read_summary, run_dirs
from layerwise.config.checks import check_config
from layerwise.config.groups import TRAINER_KEYS
from layerwise.config.trainer_args import REFUSED, check_trainer_args, force_add_trainer_args
from layerwise.errors import ConfigError
from layerwise.parallel.distributed import LayerwiseDDPStrategy, build_strategy

# MLP without BatchNorm or augmentation: per-sample math is the same however the batch is split (as test_ddp.py).
SMALL = ["data=synthetic", "data.n_train=128", "data.subset_train=128", "data.n_test=64", "data.image_size=8",
         "data.num_workers=0", "model=mlp", "model.widths=[32,32]", "model.head_hidden=[]", "method=dgl",
         "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.progress_bar=false", "logger=csv"]
GLOBAL_BATCH = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(args: list[str], env: dict, out_root: Path, log: Path) -> int:
    """Fork a process that runs `python main.py <args>` with `env` (both streams into `log`); its pid."""
    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
    node_env = {**{k: v for k, v in os.environ.items() if k not in ranks}, **env}
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        return fork_main(args, out_root, node_env, fd, fd)
    finally:
        os.close(fd)


def _wait(pids: list[int], timeout: float) -> list[int]:
    deadline, codes = time.time() + timeout, {}
    while len(codes) < len(pids):
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        if time.time() > deadline:
            for pid in set(pids) - set(codes):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            raise TimeoutError(f"nodes still running after {timeout} s")
        time.sleep(0.05)
    return [codes[pid] for pid in pids]


def test_two_nodes_train_one_run_like_one_process_on_the_global_batch(tmp_path):
    """trainer.num_nodes=2 trainer.devices=1, one process per "node": both exit 0, one run directory (rank 0's)
    with a completed summary, and the weights of one process on the same global batch (64 = 2 x 32).

    As in test_ddp.py the data module shards each epoch's permutation over the global ranks (node x devices +
    local), so the two nodes' batch t together is the one process's batch t, and every group steps on the average
    gradient over the same 64 samples. Tolerance 2e-4 as there (measured: see the report of this test's commit)."""
    run_dir = tmp_path / "run"
    port = _free_port()
    args = [*SMALL, f"data.batch_size={GLOBAL_BATCH // 2}", "trainer.num_nodes=2", "trainer.devices=1",
            "trainer.strategy=ddp", f"hydra.run.dir={run_dir}"]
    pids = []
    for node in (0, 1):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "NODE_RANK": str(node),
               "LOCAL_RANK": "0"}
        pids.append(_start_node(args, env, tmp_path, tmp_path / f"node{node}.log"))
    t0 = time.time()
    codes = _wait(pids, timeout=240)
    print(f"two nodes: {time.time() - t0:.1f} s")
    logs = [(tmp_path / f"node{n}.log").read_text() for n in (0, 1)]
    assert codes == [0, 0], f"exit codes {codes}\nnode 0:\n{logs[0][-3000:]}\nnode 1:\n{logs[1][-3000:]}"
    assert run_dirs(tmp_path) == [run_dir]
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["epochs_done"] == 1
    assert "GLOBAL_RANK: 1" not in logs[1] and "completed after 1 epochs" not in logs[1]  # node 1 stays quiet
    assert (run_dir / ".hydra" / "config.yaml").read_text().count("num_nodes: 2") == 1

    t0 = time.time()
    one = fit_cfg([*SMALL, f"data.batch_size={GLOBAL_BATCH}"], tmp_path / "one")
    print(f"one process: {time.time() - t0:.1f} s")
    two_state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    one_state = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    diffs = {k: (v - two_state["state_dict"][k]).abs().max().item()
             for k, v in one_state["state_dict"].items() if v.is_floating_point()}
    print(f"max |one - two nodes| {max(diffs.values()):.2e}")
    assert max(diffs.values()) < 2e-4, diffs
    assert summary["test_acc"] == pytest.approx(one["test_acc"], abs=1e-6)


def _refusal(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as err:
        check_config(compose_cfg(overrides))
    return str(err.value)


def test_lightning_trainer_arguments_pass_through_and_the_unsupported_ones_say_why():
    base = ["data=synthetic", "trainer.accelerator=cpu", "logger=none"]
    args = force_add_trainer_args(["trainer.num_nodes=2", "trainer.max_time={hours:1}", "trainer.profiler=simple",
                                   "trainer.max_epochs=3", "+trainer.detect_anomaly=true"], TRAINER_KEYS)
    assert args == ["++trainer.num_nodes=2", "++trainer.max_time={hours:1}", "++trainer.profiler=simple",
                    "trainer.max_epochs=3", "+trainer.detect_anomaly=true"]
    cfg = compose_cfg([*base, *args])
    check_config(cfg)
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.max_time == {"hours": 1}
    # One device on each of 2 nodes is 2 processes: layerwise's DDP, not Lightning's plain one or none.
    assert isinstance(build_strategy(cfg.trainer), LayerwiseDDPStrategy)
    assert "did you mean trainer.num_nodes?" in _refusal([*base, "++trainer.num_node=2"])
    assert "did you mean trainer.max_epochs?" in _refusal([*base, "++trainer.max_epoch=2"])
    assert "trainer.num_nodes must be an integer, got 'two'" in _refusal([*base, "++trainer.num_nodes=two"])
    assert "trainer.num_nodes=0 is out of range" in _refusal([*base, "++trainer.num_nodes=0"])
    message = _refusal([*base, "++trainer.accumulate_grad_batches=4"])
    assert message.startswith("trainer.accumulate_grad_batches is not supported: Lightning does not accumulate")
    assert "trainer.grad_clip" in _refusal([*base, "++trainer.gradient_clip_val=1.0"])
    for name in REFUSED:  # without composing each (0.3 s apiece)
        with pytest.raises(ConfigError, match=rf"^trainer\.{name} is not supported: [^\n]+$"):
            check_trainer_args({name: None}, TRAINER_KEYS)
    # The typed keys keep their own checks.
    assert "trainer.max_epochs=0 is out of range" in _refusal([*base, "trainer.max_epochs=0"])


def test_an_argument_the_installed_lightning_lacks_is_one_line(monkeypatch):
    """The snapshot is the pinned Lightning's; another installed version is checked when the Trainer is built."""
    import layerwise.config.trainer_args as trainer_args

    pinned = trainer_args.snapshot()
    monkeypatch.setattr(trainer_args, "snapshot", lambda: {**pinned, "parameters": {**pinned["parameters"],
                                                                                     "future_arg": ["int"]}})
    assert trainer_args.lightning_args({"num_nodes": 2}, TRAINER_KEYS) == {"num_nodes": 2}
    with pytest.raises(ConfigError, match="trainer.future_arg is not an argument of lightning.Trainer in the "
                                          "installed Lightning"):
        trainer_args.lightning_args({"future_arg": 1}, TRAINER_KEYS)


def test_the_trainer_args_snapshot_is_the_installed_lightning():
    """config/trainer_args.json lets the config checks know lightning.Trainer's arguments without importing it."""
    from layerwise.config.trainer_args import SNAPSHOT, build_snapshot, snapshot

    assert snapshot() == build_snapshot(), (f"{SNAPSHOT.name} is stale: run python -m "
                                            f"layerwise.config.trainer_args")


def test_config_checks_of_trainer_arguments_import_no_lightning():
    import subprocess

    code = ("import sys; from layerwise.config.groups import split_lightning_args;"
            "split_lightning_args({'trainer': {'num_nodes': 2, 'max_epochs': 1}});"
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tempfile.gettempdir())
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_the_slurm_launcher_asks_for_the_nodes_and_tasks_the_trainer_runs():
    """hydra/launcher=slurm: one Slurm task per training process (Lightning's SLURMEnvironment checks
    --ntasks-per-node against trainer.devices), nodes = trainer.num_nodes; what submitit receives."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    def params(*overrides: str) -> tuple:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
        launcher = instantiate(cfg.hydra.launcher).params
        return launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]

    assert params() == (1, 1, 1)
    assert params("trainer=ddp", "trainer.devices=4", *force_add_trainer_args(["trainer.num_nodes=2"],
                                                                               TRAINER_KEYS)) == (2, 4, 4)


def test_several_nodes_with_no_node_rank_say_so_instead_of_waiting_silently(monkeypatch):
    from loguru import logger
    from omegaconf import OmegaConf

    from layerwise.parallel.distributed import NODE_VARIABLES

    for name in NODE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="WARNING")
    try:
        trainer = OmegaConf.create({"devices": 1, "num_nodes": 2, "accelerator": "cpu", "strategy": "ddp"})
        build_strategy(trainer)
        monkeypatch.setenv("NODE_RANK", "1")
        build_strategy(trainer)
    finally:
        logger.remove(sink)
    assert len(lines) == 1 and "start the same command on every node with NODE_RANK=0..1" in lines[0]

"""Pipelined DGL (`trainer=pipeline`): the network's blocks split into K stages, one process each.

Local rules need no backward communication: stage k trains its blocks with their local losses on what stage
k-1 sends and passes its detached output on (`layerwise.pipeline_stage`). Processes are started with
torch.multiprocessing (spawn) and talk through torch.distributed point-to-point messages (gloo on CPU, NCCL
when every stage has its own GPU). After training this process assembles the stages' parameters into one
LayerwiseModule (the state_dict keys of a normal run), evaluates it with the rule's `evaluate`, and writes
`checkpoints/last.ckpt`, `metrics.csv` and `summary.json`.
"""
from __future__ import annotations

import csv
import itertools
import socket
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from loguru import logger
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from layerwise.checkpoint import AtomicCheckpointIO
from layerwise.errors import ConfigError
from layerwise.methods import build_rule
from layerwise.methods.base import evaluating
from layerwise.pipeline_stage import StagePlan, limit_batches, run_stage
from layerwise.summary import mean_after_first, write_json_atomic

#: Rules whose every block trains on a local signal (nothing flows backward between blocks), and whether the
#: local loss needs the batch's input image as well (a reconstruction target: ssl, infopro).
PIPELINE_RULES = {"dgl": False, "predsim": False, "ssl": True, "infopro": True}


def check_pipeline_rule(cfg: DictConfig):
    """The rule, if it can be pipelined; else one ConfigError naming the fix."""
    rule = build_rule(cfg.method)
    fix = "use method=dgl (or predsim, ssl, infopro), or trainer=default"
    if rule.name not in PIPELINE_RULES:
        raise ConfigError(f"trainer=pipeline needs a rule whose blocks learn from local losses only, but "
                          f"method={cfg.method.name} sends signals backward between blocks; {fix}")
    if getattr(rule, "weight", 0) > 0:
        raise ConfigError("trainer=pipeline cannot use method.direct_global (every batch needs the whole "
                          "network's output first); set method.direct_global=false or use trainer=default")
    return rule


def block_costs(module, example: torch.Tensor) -> list[int]:
    """Training FLOPs of each block's forward plus its early-exit head (the network head counts for the last)."""
    net, rule = module.net, module.rule
    costs, h = [], example
    with evaluating(net):
        for i, block in enumerate(net.blocks):
            with FlopCounterMode(display=False) as counter:
                h = block(h)
                rule.block_logits(i, h)
                if i == len(net.blocks) - 1:
                    net.head(h)
            costs.append(max(1, counter.get_total_flops()))
    return costs


def balanced_starts(costs: list[int], stages: int) -> list[int]:
    """Contiguous split of the blocks into `stages` parts that minimises the most expensive part."""
    n = len(costs)
    best, best_starts = None, None
    for cuts in itertools.combinations(range(1, n), stages - 1):
        starts = [0, *cuts, n]
        worst = max(sum(costs[a:b]) for a, b in zip(starts, starts[1:]))
        if best is None or worst < best:
            best, best_starts = worst, starts
    return best_starts


def stage_starts(pcfg, costs: list[int]) -> list[int]:
    n, k = len(costs), int(pcfg.stages)
    if not 1 <= k <= n:
        raise ConfigError(f"trainer.pipeline.stages={k} must be between 1 and the network's {n} blocks")
    if pcfg.get("split") is None:
        return balanced_starts(costs, k)
    sizes = [int(s) for s in pcfg.split]
    if len(sizes) != k or min(sizes) < 1 or sum(sizes) != n:
        raise ConfigError(f"trainer.pipeline.split={sizes} must be {k} positive block counts summing to the "
                          f"network's {n} blocks (e.g. trainer.pipeline.split=[{n - k + 1}{',1' * (k - 1)}]) or null")
    return [0, *itertools.accumulate(sizes)]


def _backend(cfg: DictConfig, stages: int) -> str:
    wanted = str(cfg.trainer.pipeline.get("backend", "auto"))
    if wanted not in ("auto", "gloo", "nccl"):
        raise ConfigError(f"trainer.pipeline.backend={wanted!r} is not known; choose auto, gloo or nccl")
    on_gpu = cfg.trainer.accelerator != "cpu" and torch.cuda.is_available()
    if wanted == "auto":
        # NCCL cannot put two ranks on one GPU; with fewer GPUs than stages, gloo moves activations via the host.
        return "nccl" if on_gpu and torch.cuda.device_count() >= stages else "gloo"
    if wanted == "nccl" and not (on_gpu and torch.cuda.device_count() >= stages):
        raise ConfigError(f"trainer.pipeline.backend=nccl needs one GPU per stage ({stages}); use backend=gloo")
    return wanted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(cfg: DictConfig, plan: StagePlan) -> None:
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    try:
        mp.spawn(run_stage, args=(cfg_dict, plan), nprocs=plan.stages, join=True)
    except mp.ProcessRaisedException as err:  # spawn has already terminated the other stages
        last = [line for line in str(err).strip().splitlines() if line.strip()][-1]
        raise RuntimeError(f"pipeline stage failed ({last.strip()}); its traceback is above") from err
    except mp.ProcessExitedException as err:
        raise RuntimeError(f"pipeline stage process died: {err}") from err


def train_pipeline(cfg: DictConfig, out_dir: Path, module=None, datamodule=None) -> dict:
    """Train `cfg` in stages; returns the assembled module, per-epoch metrics and throughput."""
    from layerwise.train import build_experiment

    check_pipeline_rule(cfg)
    if module is None:
        datamodule, module = build_experiment(cfg)
    pcfg = cfg.trainer.pipeline
    starts = stage_starts(pcfg, block_costs(module, datamodule.example_batch()))
    buffer = int(pcfg.get("buffer", 0))
    if buffer < 0:
        raise ConfigError(f"trainer.pipeline.buffer={buffer} must be >= 0 (0 = synchronous, as sequential DGL)")
    plan = StagePlan(starts=starts, port=_free_port(), backend=_backend(cfg, len(starts) - 1),
                     out_dir=str(out_dir), needs_input=PIPELINE_RULES[module.rule.name],
                     threads=int(pcfg.get("threads_per_stage", 1)), buffer=buffer,
                     timeout_s=float(pcfg.get("timeout_s", 300)), warmup_batches=int(pcfg.get("warmup_batches", 2)))
    logger.info(f"pipeline: {plan.stages} stages, blocks {[list(range(a, b)) for a, b in zip(starts, starts[1:])]}, "
                f"{plan.backend}, buffer {buffer}, {plan.threads} thread(s) per stage")
    t0 = time.perf_counter()
    _spawn(cfg, plan)
    parts = [torch.load(Path(out_dir) / f"stage{k}.pt", weights_only=True) for k in range(plan.stages)]
    state = module.state_dict()
    for part in parts:
        state.update(part["state"])
    module.load_state_dict(state)
    history = []
    for epoch in range(int(cfg.trainer.max_epochs)):
        row = {}
        for part in parts:
            row.update(part["history"][epoch])
        history.append(row)
    rates = [p["steady_imgs_per_sec"] for p in parts]
    return {"module": module, "datamodule": datamodule, "history": history, "plan": plan,
            "steady_imgs_per_sec": None if None in rates else min(rates), "wall_s": time.perf_counter() - t0,
            "replay_steps": sum(p["replay_steps"] for p in parts)}


@torch.no_grad()
def evaluate(module, loader, limit) -> dict:
    """Accuracy and loss of the assembled network (rule.evaluate) and of every reported block."""
    correct, loss, count = 0, 0.0, 0
    block_correct = {i: 0 for i in module.reported_blocks}
    with evaluating(module):
        for b, (x, y) in enumerate(loader):
            if b >= limit_batches(limit, len(loader)):
                break
            logits, exits = module.rule.evaluate(module.net, x)
            correct += int((logits.argmax(-1) == y).sum())
            loss += float(F.cross_entropy(logits, y)) * len(y)
            count += len(y)
            for i in block_correct:
                block_correct[i] += int((exits.get(i, logits).argmax(-1) == y).sum())
    return {"acc": correct / count, "loss": loss / count, "blocks": [block_correct[i] / count for i in block_correct]}


def _write_metrics(path: Path, history: list[dict]) -> None:
    keys = sorted({k for row in history for k in row if not k.startswith("_")} - {"epoch"})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", *keys])
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in ["epoch", *keys]})


def fit_pipeline(cfg: DictConfig, run_dir: Path) -> dict:
    """`train.fit` for trainer=pipeline: same outputs (summary.json, metrics.csv, checkpoints/last.ckpt)."""
    t0 = time.perf_counter()
    check_pipeline_rule(cfg)  # before any data is loaded
    if cfg.get("diagnostics"):
        raise ConfigError("trainer=pipeline runs no diagnostics (they need the whole network per batch); "
                          "drop diagnostics=... or use trainer=default")
    from layerwise.train import build_experiment, run_identity

    datamodule, module = build_experiment(cfg)
    identity = run_identity(cfg)
    logger.info(f"{cfg.name}: {module.rule.describe()} on {cfg.model.name} ({len(module.net.blocks)} blocks), "
                f"pipelined -> {run_dir}")
    with tempfile.TemporaryDirectory(prefix="pipeline_") as tmp:
        result = train_pipeline(cfg, Path(tmp), module, datamodule)
    history = result["history"]
    n_stages = result["plan"].stages
    for row in history:  # the pipeline runs at the pace of its slowest stage
        rates = [row.get(f"pipeline/stage{k}_imgs_per_sec", 0.0) for k in range(n_stages)]
        row["train/imgs_per_sec"] = min(rates)
    _write_metrics(run_dir / "metrics.csv", history)

    test = evaluate(module, datamodule.val_dataloader() if datamodule.val_set is None
                    else datamodule.val_dataloader()[0], cfg.trainer.limit_val_batches)
    epochs = int(cfg.trainer.max_epochs)
    # A Lightning-style checkpoint dict (state_dict and progress); it restores weights
    # (module.load_state_dict(load_checkpoint(path)["state_dict"])) but not optimizer states.
    AtomicCheckpointIO().save_checkpoint({"state_dict": module.state_dict(), "epoch": epochs - 1, "global_step": 0,
                                          "pytorch-lightning_version": L.__version__},
                                         run_dir / "checkpoints" / "last.ckpt")
    evaluated = [row for row in history if row.get("_evaluated")]
    test_accs = [row["test/acc"] for row in evaluated if "test/acc" in row] + [test["acc"]]
    data = {
        "status": "completed", **identity, "epochs_done": epochs,
        "test_acc": test["acc"], "best_test_acc": max(test_accs), "test_loss": test["loss"],
        "block_test_acc": test["blocks"],
        "imgs_per_sec": mean_after_first([row["train/imgs_per_sec"] for row in history if row["train/imgs_per_sec"]]),
        "steady_imgs_per_sec": result["steady_imgs_per_sec"],
        "peak_activation_mb": None,  # not measured per stage
        "wall_s": round(time.perf_counter() - t0, 2),
        "pipeline": {"stages": n_stages, "blocks": [list(range(a, b)) for a, b in
                                                    zip(result["plan"].starts, result["plan"].starts[1:])],
                     "backend": result["plan"].backend, "buffer": result["plan"].buffer,
                     "threads_per_stage": result["plan"].threads, "replay_steps": result["replay_steps"]},
    }
    if datamodule.val_set is not None:
        val = evaluate(module, datamodule.val_dataloader()[1], cfg.trainer.limit_val_batches)
        data.update({"val_acc": val["acc"], "best_val_acc": max([r["val/acc"] for r in evaluated if "val/acc" in r]
                                                                + [val["acc"]]),
                     "val_loss": val["loss"], "block_val_acc": val["blocks"]})
    write_json_atomic(run_dir / "summary.json", data)
    logger.info(f"{cfg.name}: completed after {epochs} epochs, test acc {test['acc']:.4f} "
                f"(best {data['best_test_acc']:.4f}), {data['imgs_per_sec'] or 0:.0f} img/s")
    return data

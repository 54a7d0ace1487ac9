"""Pipelined DGL (`trainer=pipeline`): the network's blocks split into K stages, one process each.

Local rules need no backward communication: stage k trains its blocks with their local losses on what stage
k-1 sends and passes its detached output on (`layerwise.parallel.pipeline_stage`). Processes are started with
torch.multiprocessing (spawn) and talk through torch.distributed point-to-point messages (gloo on CPU, NCCL
when every stage has its own GPU). This process logs each epoch's line as the stages report it; after
training it assembles the stages' parameters into one LayerwiseModule (the state_dict keys of a normal run),
evaluates it with the rule's `evaluate`, and writes `checkpoints/last.ckpt` (weights plus every stage's
training state, so it can be resumed), `metrics.csv` and `summary.json` (the keys of a default run's).

A stop signal (Preemption in train.run, or a stage's own handler) ends every stage before the same batch
(`pipeline_stage`); the checkpoint and an `interrupted` summary are written and `Interrupted` is raised, so
train.run reports it and exits with 128 + the signal, as for the default trainer.
"""
from __future__ import annotations

import csv
import itertools
import queue
import signal
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

from layerwise.core.checkpoint import AtomicCheckpointIO, CheckpointError, load_checkpoint
from layerwise.core.layout import ResumeTarget
from layerwise.core.preemption import Interrupted, Preemption
from layerwise.core.run_state import FORMAT, KEY, check_compatible, group_layout
from layerwise.errors import ConfigError
from layerwise.parallel.pipeline_stage import StagePlan, limit_batches, run_stage
from layerwise.rules import build_rule
from layerwise.rules.base import evaluating
from layerwise.runs.summary import mean_after_first, write_json_atomic

#: Rules whose every block trains on a local signal (nothing flows backward between blocks), and whether the
#: local loss needs the batch's input image as well (a reconstruction target: ssl, infopro). drtp's signal is the
#: label through a fixed B_i; auglocal's and mono_forward's each block's own aux network or projection: local too.
PIPELINE_RULES = {"dgl": False, "predsim": False, "ssl": True, "infopro": True, "drtp": False, "auglocal": False,
                  "mono_forward": False}


def check_pipeline_rule(cfg: DictConfig):
    """The rule, if it can be pipelined; else one ConfigError naming the fix."""
    rule = build_rule(cfg.method)
    fix = "use method=dgl (or predsim, ssl, infopro, drtp, auglocal, mono_forward), or trainer=default"
    if rule.pipeline_refusal:  # a rule that says itself why it cannot be pipelined
        raise ConfigError(rule.pipeline_refusal.replace("{fix}", fix))
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


def _drain(reports, on_report) -> None:
    while True:
        try:
            message = reports.get_nowait()
        except queue.Empty:
            return
        on_report(message)


def _run_stages(cfg: DictConfig, plan: StagePlan, stop: Preemption | None, on_report) -> None:
    """Start the stage processes and wait for them, passing on a stop request and their reports as they come."""
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    ctx = mp.get_context("spawn")
    stop_flag = ctx.RawValue("i", 0)  # the stop signal's number; set by any stage's handler or by this process
    reports = ctx.Queue()
    procs = mp.start_processes(run_stage, args=(cfg_dict, plan, stop_flag, reports), nprocs=plan.stages,
                               join=False, start_method="spawn")
    try:
        while True:
            if stop is not None and stop.received and not stop_flag.value:
                stop_flag.value = stop.received  # e.g. `kill <this pid>`: the stages did not get the signal
            _drain(reports, on_report)
            if procs.join(timeout=0.2):
                break
        _drain(reports, on_report)
    except mp.ProcessRaisedException as err:  # start_processes has already terminated the other stages
        if stop_flag.value:  # a second Ctrl-C ended a stage at once
            raise Interrupted(stop_flag.value) from err
        last = [line for line in str(err).strip().splitlines() if line.strip()][-1]
        raise RuntimeError(f"pipeline stage failed ({last.strip()}); its traceback is above") from err
    except mp.ProcessExitedException as err:
        if stop_flag.value:  # killed by the signal before it could install its handler
            raise Interrupted(stop_flag.value) from err
        raise RuntimeError(f"pipeline stage process died: {err}") from err
    except KeyboardInterrupt:  # a second Ctrl-C (Preemption): stop at once, without a checkpoint
        raise Interrupted(signal.SIGINT) from None
    finally:
        for proc in procs.processes:
            if proc.is_alive():
                proc.terminate()
                proc.join()


def merge_epoch(rows: list[dict]) -> dict:
    """One epoch's row from every stage's: its metrics, and train/imgs_per_sec = the epoch's training images
    over the time from stage 0 starting the epoch to the last stage finishing its last batch (fill and drain
    included, evaluation not: the default trainer's definition). time.monotonic is one clock for all processes
    of a machine (Linux CLOCK_MONOTONIC)."""
    row: dict = {}
    for part in rows:
        row.update(part)
    span = row.get("_t_end", 0.0) - row.get("_t_start", 0.0)
    row["train/imgs_per_sec"] = row.get("_samples", 0) / span if "_t_end" in row and span > 0 else 0.0
    return row


def steady_rate(history: list[dict]) -> float | None:
    """The last stage's training images per second once the pipeline is full: its batches after the first
    `warmup_batches` of each epoch, over the epochs after the first (as imgs_per_sec) where there are more."""
    epochs = [row for row in history if row.get("_steady_s")]
    epochs = epochs[1:] or epochs
    seconds = sum(row["_steady_s"] for row in epochs)
    return sum(row["_steady_n"] for row in epochs) / seconds if seconds > 0 else None


EPOCH_LINE = (("train/loss", "loss"), ("train/acc", "acc"), ("val/loss", "val loss"), ("val/acc", "val acc"),
              ("test/loss", "test loss"), ("test/acc", "test acc"))


def epoch_line(row: dict, max_epochs: int, blocks: list[int]) -> str:
    """The default trainer's per-epoch line (summary.EpochLine) for a merged pipeline row."""
    parts = [f"epoch {row['epoch'] + 1}/{max_epochs}"]
    parts += [f"{label} {row[key]:.4f}" for key, label in EPOCH_LINE if key in row]
    parts.append(f"img/s {row['train/imgs_per_sec']:.0f}")
    accs = [row.get(f"block{i}/test_acc") for i in blocks]
    if accs and None not in accs:
        parts.append("blocks " + " ".join(f"{a:.3f}" for a in accs))
    return "  ".join(parts)


class _Reports:
    """The stages' reports: a line once all are built, then one line per epoch (console and run.log)."""

    def __init__(self, stages: int, max_epochs: int, blocks: list[int]):
        self.stages, self.max_epochs, self.blocks = stages, max_epochs, blocks
        self.t0, self.ready = time.perf_counter(), 0
        self.epochs: dict[int, list[dict]] = {}

    def __call__(self, message) -> None:
        if message[0] == "ready":
            self.ready += 1
            if self.ready == self.stages:
                logger.info(f"pipeline: {self.stages} stages started in {time.perf_counter() - self.t0:.1f} s, "
                            "training")
            return
        _, rank, row = message
        rows = self.epochs.setdefault(row["epoch"], [])
        rows.append(row)
        if len(rows) == self.stages:
            logger.info(epoch_line(merge_epoch(rows), self.max_epochs, self.blocks))


def train_pipeline(cfg: DictConfig, out_dir: Path, module=None, datamodule=None, *, resume_from=None,
                   stop: Preemption | None = None, stop_at: tuple[int, int] | None = None) -> dict:
    """Train `cfg` in stages; returns the assembled module, per-epoch metrics and throughput, and `stopped` (the
    stop signal's number, 0 when training ran to the end) with the stages' training state for a checkpoint."""
    from layerwise.core.experiment import build_experiment

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
                     timeout_s=float(pcfg.get("timeout_s", 300)), warmup_batches=int(pcfg.get("warmup_batches", 2)),
                     resume_from=None if resume_from is None else str(resume_from), stop_at=stop_at)
    logger.info(f"pipeline: {plan.stages} stages, blocks {[list(range(a, b)) for a, b in zip(starts, starts[1:])]}, "
                f"{plan.backend}, buffer {buffer}, {plan.threads} thread(s) per stage")
    t0 = time.perf_counter()
    _run_stages(cfg, plan, stop, _Reports(plan.stages, int(cfg.trainer.max_epochs), list(module.reported_blocks)))
    parts = [torch.load(Path(out_dir) / f"stage{k}.pt", weights_only=True) for k in range(plan.stages)]
    state = module.state_dict()
    for part in parts:
        state.update(part["state"])
    module.load_state_dict(state)
    history = [merge_epoch([part["history"][epoch] for part in parts]) for epoch in range(len(parts[0]["history"]))]
    return {"module": module, "datamodule": datamodule, "history": history, "plan": plan,
            "steady_imgs_per_sec": steady_rate(history), "wall_s": time.perf_counter() - t0,
            "replay_steps": sum(p["replay_steps"] for p in parts), "stopped": int(parts[0]["stopped"]),
            "position": parts[0]["position"], "stages": [p["resume"] for p in parts]}


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


def _blocks(starts: list[int]) -> list[list[int]]:
    return [list(range(a, b)) for a, b in zip(starts, starts[1:])]


def _load_resume(target: ResumeTarget, cfg: DictConfig, module, datamodule, identity: dict) -> dict:
    """The checkpoint to continue from, checked against this run (one line if it does not fit); loads its
    weights into `module`."""
    path = target.checkpoint
    checkpoint = load_checkpoint(path, map_location="cpu")
    if KEY in checkpoint and "pipeline" not in checkpoint:
        raise CheckpointError(f"{path} was written by trainer=default, not trainer=pipeline; resume it without "
                              "trainer=pipeline, or start a new pipeline run without resume=")
    check_compatible(checkpoint, path, module.state_dict(), group_layout(module.groups, module._group_params),
                     identity)
    theirs, ours = checkpoint["pipeline"]["starts"], stage_starts(cfg.trainer.pipeline,
                                                                  block_costs(module, datamodule.example_batch()))
    if list(theirs) != ours:
        sizes = ",".join(str(b - a) for a, b in zip(theirs, theirs[1:]))
        raise ConfigError(f"{path} was written by a pipeline with stages {_blocks(theirs)}, this run splits the "
                          f"blocks as {_blocks(ours)}; resume with trainer.pipeline.stages={len(theirs) - 1} "
                          f"trainer.pipeline.split=[{sizes}]")
    position = checkpoint[KEY]["position"]
    epochs = int(cfg.trainer.max_epochs)
    if position["epoch"] >= epochs:
        raise ConfigError(f"{path} has already trained {position['epoch']} epochs (trainer.max_epochs={epochs}); "
                          f"raise trainer.max_epochs above {position['epoch']} to train longer")
    module.load_state_dict(checkpoint["state_dict"])
    logger.info(f"resuming {path} at epoch {position['epoch'] + 1}, after batch {position['batches_done']}")
    return checkpoint


def _last_evaluated(history: list[dict], split: str, blocks: list[int]) -> dict:
    """The latest per-epoch evaluation of `split` (a stopped run's test_acc, as the default trainer reports)."""
    rows = [row for row in history if row.get("_evaluated") and f"{split}/acc" in row]
    row = rows[-1] if rows else {}
    return {"acc": row.get(f"{split}/acc"), "loss": row.get(f"{split}/loss"),
            "blocks": [row.get(f"block{i}/{split}_acc") for i in blocks]}


def _best(history: list[dict], key: str, final: float | None) -> float | None:
    values = [row[key] for row in history if row.get("_evaluated") and key in row] + ([final] if final is not None
                                                                                       else [])
    return max(values) if values else None


def fit_pipeline(cfg: DictConfig, run_dir: Path, resume: ResumeTarget | None = None, stop: Preemption | None = None,
                 *, stop_at: tuple[int, int] | None = None, accept=None) -> dict:
    """`train.fit` for trainer=pipeline: the outputs of a default run (summary.json with the same keys,
    metrics.csv, checkpoints/last.ckpt), resumable. On a stop signal (`stop`, or `stop_at` = (epoch, batch) in
    tests) every stage stops before the same batch, the checkpoint and an `interrupted` summary are written and
    Interrupted is raised (train.run exits with 128 + the signal's number). `accept()`, if given, is called once
    a resumed checkpoint is checked: nothing is written into `run_dir` before."""
    t0 = time.perf_counter()
    check_pipeline_rule(cfg)  # before any data is loaded
    if cfg.get("diagnostics"):
        raise ConfigError("trainer=pipeline runs no diagnostics (they need the whole network per batch); "
                          "drop diagnostics=... or use trainer=default")
    from layerwise.core.experiment import build_experiment, config_hash, run_identity

    datamodule, module = build_experiment(cfg)
    identity = run_identity(cfg)
    previous = _load_resume(resume, cfg, module, datamodule, identity) if resume else None
    if accept is not None:
        accept()
    logger.info(f"{cfg.name}: {module.rule.describe()} on {cfg.model.name} ({len(module.net.blocks)} blocks), "
                f"pipelined -> {run_dir}")
    try:
        with tempfile.TemporaryDirectory(prefix="pipeline_") as tmp:
            result = train_pipeline(cfg, Path(tmp), module, datamodule, resume_from=resume and resume.checkpoint,
                                    stop=stop, stop_at=stop_at)
    except Interrupted:  # stopped at once (a second Ctrl-C): no new checkpoint; last.ckpt, if any, is older
        if not (run_dir / "summary.json").is_file():
            write_json_atomic(run_dir / "summary.json", {
                "status": "interrupted", **identity, "config_hash": config_hash(cfg),
                "epochs_done": int(previous[KEY]["position"]["epoch"]) if previous else 0,
                **dict.fromkeys(("test_acc", "best_test_acc", "test_loss", "imgs_per_sec", "steady_imgs_per_sec",
                                 "peak_activation_mb", "skipped_batches")),
                "block_test_acc": [], "wall_s": round(time.perf_counter() - t0, 2)})
        raise
    history, plan, stopped = result["history"], result["plan"], result["stopped"]
    _write_metrics(run_dir / "metrics.csv", history)

    blocks = list(module.reported_blocks)
    has_val = datamodule.val_set is not None
    if stopped:
        test, val = _last_evaluated(history, "test", blocks), _last_evaluated(history, "val", blocks)
        epochs_done = int(result["position"]["epoch"])
    else:  # the assembled network, evaluated as the rule evaluates it
        loaders = datamodule.val_dataloader()
        test = evaluate(module, loaders if not has_val else loaders[0], cfg.trainer.limit_val_batches)
        val = evaluate(module, loaders[1], cfg.trainer.limit_val_batches) if has_val else None
        epochs_done = int(cfg.trainer.max_epochs)
    segment_wall_s = round(time.perf_counter() - t0, 2)
    earlier = previous["pipeline"] if previous else {}
    wall_s, segments = round(float(earlier.get("wall_s", 0.0)) + segment_wall_s, 2), int(earlier.get("segments", 0)) + 1
    if stop is not None:  # a second Ctrl-C now would cut the checkpoint write short: it waits (Preemption)
        stop.stopping = True
    AtomicCheckpointIO().save_checkpoint({
        # Lightning's layout (state_dict, epoch) with layerwise's run state, plus every stage's training state;
        # module.load_state_dict(load_checkpoint(path)["state_dict"]) restores the weights.
        "state_dict": module.state_dict(), "epoch": int(result["position"]["epoch"]), "global_step": 0,
        "pytorch-lightning_version": L.__version__,
        KEY: {"format": FORMAT, "identity": identity, "groups": group_layout(module.groups, module._group_params),
              "position": {k: int(v) for k, v in result["position"].items()}, "rng": None, "wandb_id": None},
        "pipeline": {"starts": list(plan.starts), "buffer": plan.buffer, "stages": result["stages"],
                     "wall_s": wall_s, "segments": segments},
    }, run_dir / "checkpoints" / "last.ckpt")
    rates = [row["train/imgs_per_sec"] for row in history if row["train/imgs_per_sec"]]
    data = {
        "status": "interrupted" if stopped else "completed", **identity, "config_hash": config_hash(cfg),
        "epochs_done": epochs_done,
        "test_acc": test["acc"], "best_test_acc": _best(history, "test/acc", None if stopped else test["acc"]),
        "test_loss": test["loss"], "block_test_acc": test["blocks"],
        **({"val_acc": val["acc"], "best_val_acc": _best(history, "val/acc", None if stopped else val["acc"]),
            "val_loss": val["loss"], "block_val_acc": val["blocks"]} if has_val else {}),
        # As the default trainer: each epoch's training images / (its first batch taken .. last batch done,
        # here stage 0's start to the last stage's end), averaged over the epochs after the first.
        "imgs_per_sec": mean_after_first(rates),
        # The last stage's rate once the pipeline is full (after warmup_batches each epoch), without fill,
        # drain and evaluation: at least imgs_per_sec, up to the slowest stage's own speed.
        "steady_imgs_per_sec": result["steady_imgs_per_sec"],
        "peak_activation_mb": None,  # not measured per stage
        "wall_s": wall_s,  # the whole run's (all segments, as a default run's summary)
        "segment_wall_s": segment_wall_s, "segments": segments,  # this process's part, and how many there were
        "selected_on": None,  # no best.ckpt under trainer=pipeline
        "skipped_batches": None,  # trainer.nonfinite is not applied under trainer=pipeline
        "pipeline": {"stages": plan.stages, "blocks": _blocks(plan.starts), "backend": plan.backend,
                     "buffer": plan.buffer, "threads_per_stage": plan.threads, "replay_steps": result["replay_steps"]},
    }
    write_json_atomic(run_dir / "summary.json", data)
    if stopped:
        if stop is not None:  # train.run reports it (signal, resume command) and exits with 128 + the signal
            stop.received, stop.saved = stop.received or stopped, True
        raise Interrupted(stopped)
    logger.info(f"{cfg.name}: completed after {epochs_done} epochs, test acc {test['acc']:.4f} "
                f"(best {data['best_test_acc']:.4f}), {data['imgs_per_sec'] or 0:.0f} img/s")
    return data

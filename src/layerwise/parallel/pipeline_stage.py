"""One stage of pipelined DGL: a process that trains a contiguous range of blocks with their local losses.

Stage k receives (h, y[, x]) from stage k-1 (stage 0 reads the training data), trains its blocks exactly as
`batch.run_batch` would (forward on the rule's view of the input, local signal, backward, step the groups that
step after that block), and sends its detached output on. Nothing flows backward between stages.

Wire protocol (point-to-point, stage k -> k+1): a header [kind, n] (int64), then for data kinds the tensors
h (n, *shape), y (n,) and, for rules whose local loss needs the input image (ssl, infopro), x (n, *image).
kind: TRAIN / EVAL batch, END of a phase (one train epoch or one evaluation split), DONE (last message),
STOP (a stop signal: the stage passes it on, saves its training state and ends).

Stopping (SIGTERM, SIGINT, SIGUSR1): stage 0 alone decides where, before a training batch, when a stop was
requested (its own handler, a later stage's, or the parent's, all through one shared flag). It sends STOP
instead of that batch; the messages are ordered, so every stage has then trained exactly the same batches. Each
stage saves its part of the training state (optimizers, schedulers, RNG, replay buffer, the epoch's partial
metrics); the parent assembles them into one resumable checkpoint. A resumed stage loads its part back and
stage 0 restarts the epoch after the batches already done (`ImageDataModule.resume_at`).

buffer = 0: every stage blocks on its input, so each stage sees each batch once, in the data order, and the
updates are those of sequential DGL, bit for bit. buffer = M > 0 (asynchronous DGL with a replay buffer): a
receiver thread queues up to M batches from stage k-1 (stage k-1 blocks only when M are waiting), and the
stage remembers the last M batches it trained on; whenever its queue is empty during training it takes a
*replay* step on one remembered batch drawn uniformly at random instead of waiting. Replay steps update the
stage but send nothing on, so each later stage still sees every sample once per epoch.
"""
from __future__ import annotations

import os
import queue
import random
import signal
import sys
import threading
import time
import traceback
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from layerwise.core.checkpoint import load_checkpoint
from layerwise.core.optim import build_optimizer, build_scheduler
from layerwise.core.preemption import SIGNALS
from layerwise.core.run_state import KEY, restore_rng, rng_state
from layerwise.rules.base import Signal, output_shapes

TRAIN, EVAL, END, DONE, STOP = 0, 1, 2, 3, 4
EVAL_SPLITS = ("test", "val")  # the order of the data module's evaluation loaders


@dataclass
class StagePlan:
    """Which blocks each stage owns ([starts[k], starts[k+1]) ), how processes meet, where results go."""

    starts: list[int]
    port: int
    backend: str
    out_dir: str
    needs_input: bool
    threads: int = 1
    buffer: int = 0
    timeout_s: float = 300.0
    warmup_batches: int = 2
    resume_from: str | None = None  # a pipeline checkpoint (checkpoints/last.ckpt) to continue from
    stop_at: tuple[int, int] | None = None  # tests: stop as if signalled before this (epoch, batch)

    @property
    def stages(self) -> int:
        return len(self.starts) - 1


def limit_batches(limit, n: int) -> int:
    """Lightning's limit_*_batches: a fraction of the loader (at least one batch) or a batch count."""
    if limit is None or (isinstance(limit, float) and limit == 1.0):
        return n
    if isinstance(limit, float) and limit < 1.0:
        return max(1, int(n * limit))
    return min(n, int(limit))


@dataclass
class EpochMeter:
    """Sample-weighted sums of losses and correct counts; tensors until read, so no sync per batch."""

    sums: dict = field(default_factory=lambda: defaultdict(float))
    counts: dict = field(default_factory=lambda: defaultdict(int))

    def add(self, name: str, value: torch.Tensor, n: int) -> None:
        self.sums[name] = self.sums[name] + value.detach() * n
        self.counts[name] += n

    def add_acc(self, name: str, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.sums[name] = self.sums[name] + (logits.detach().argmax(-1) == y).sum()
        self.counts[name] += len(y)

    def read(self) -> dict[str, float]:
        return {k: float(v) / self.counts[k] for k, v in self.sums.items() if self.counts[k]}

    def state(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    @classmethod
    def restored(cls, state: dict | None) -> "EpochMeter":
        meter = cls()
        if state:
            meter.sums.update(state["sums"])
            meter.counts.update(state["counts"])
        return meter


class Link:
    """Point-to-point messages between neighbouring stages; CUDA tensors go through host memory under gloo."""

    def __init__(self, plan: StagePlan, rank: int, device: torch.device, in_shape, image_shape):
        self.rank, self.device, self.plan = rank, device, plan
        self.staged = plan.backend == "gloo" and device.type == "cuda"
        self.wire = torch.device("cpu") if self.staged else device
        self.in_shape, self.image_shape = in_shape, image_shape

    def send(self, kind: int, h=None, y=None, x=None) -> None:
        n = 0 if y is None else len(y)
        dist.send(torch.tensor([kind, n], dtype=torch.int64, device=self.wire), self.rank + 1)
        if kind in (TRAIN, EVAL):
            tensors = [h, y] + ([x] if kind == TRAIN and self.plan.needs_input else [])
            for t in tensors:
                dist.send(t.detach().contiguous().to(self.wire), self.rank + 1)

    def recv(self) -> tuple[int, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        header = torch.empty(2, dtype=torch.int64, device=self.wire)
        dist.recv(header, self.rank - 1)
        kind, n = (int(v) for v in header.tolist())
        if kind not in (TRAIN, EVAL):
            return kind, None, None, None
        h = torch.empty((n, *self.in_shape), dtype=torch.float32, device=self.wire)
        y = torch.empty(n, dtype=torch.int64, device=self.wire)
        dist.recv(h, self.rank - 1)
        dist.recv(y, self.rank - 1)
        x = None
        if kind == TRAIN and self.plan.needs_input:
            x = torch.empty((n, *self.image_shape), dtype=torch.float32, device=self.wire)
            dist.recv(x, self.rank - 1)
        move = (lambda t: t.to(self.device, non_blocking=True)) if self.staged else (lambda t: t)
        return kind, move(h), move(y), None if x is None else move(x)


class Inbox:
    """Messages from the previous stage: read when asked (buffer 0), or queued by a thread (buffer M > 0)."""

    def __init__(self, link: Link, buffer: int):
        self.link = link
        self.queue: queue.Queue | None = None
        self.error: BaseException | None = None
        if buffer > 0:
            self.queue = queue.Queue(maxsize=buffer)
            threading.Thread(target=self._pump, daemon=True, name="pipeline-recv").start()

    def _pump(self) -> None:
        try:
            while True:
                message = self.link.recv()
                self.queue.put(message)
                if message[0] in (DONE, STOP):
                    return
        except BaseException as err:  # noqa: BLE001 - surfaced by get(); the process group timeout ends the others
            self.error = err
            self.queue.put((DONE, None, None, None))

    def get(self, block: bool = True):
        if self.queue is None:
            return self.link.recv()
        try:
            message = self.queue.get(block=block, timeout=self.link.plan.timeout_s if block else None)
        except queue.Empty:
            if block:
                raise TimeoutError(
                    f"stage {self.link.rank} waited {self.link.plan.timeout_s:.0f} s for its input") from None
            return None
        if self.error is not None:
            raise RuntimeError(f"stage {self.link.rank}: receiving from stage {self.link.rank - 1} failed: "
                               f"{self.error}") from self.error
        return message


class Stage:
    """Blocks [first, last) of the network (and the head on the last stage) with their groups' optimizers."""

    def __init__(self, module, plan: StagePlan, rank: int, device: torch.device, optim_cfg, max_epochs: int,
                 grad_clip):
        self.module, self.net, self.rule = module, module.net, module.rule
        self.plan, self.rank = plan, rank
        self.first, self.last = plan.starts[rank], plan.starts[rank + 1]
        self.n = len(self.net.blocks)
        self.is_last = rank == plan.stages - 1
        self.grad_clip = grad_clip
        mine = set(range(self.first, self.last)) | ({self.n} if self.is_last else set())
        self.groups = [g for g in module.groups if g.step_after in mine]
        self.optimizers = [build_optimizer(g.parameters(), optim_cfg, g.lr_scale) for g in self.groups]
        self.group_schedulers = [build_scheduler(o, optim_cfg, max_epochs) for o in self.optimizers]
        self.schedulers = [s for s in self.group_schedulers if s is not None]
        self.steps_after: dict[int, list[int]] = defaultdict(list)
        for k, g in enumerate(self.groups):
            self.steps_after[g.step_after].append(k)
        self.exit_blocks = list(module.exit_blocks)
        self.meter = EpochMeter()

    def optim_state(self) -> dict:
        """Each of this stage's groups' optimizer and scheduler state, by group name."""
        return {g.name: {"optimizer": opt.state_dict(), "scheduler": None if sched is None else sched.state_dict()}
                for g, opt, sched in zip(self.groups, self.optimizers, self.group_schedulers)}

    def load_optim_state(self, saved: dict) -> None:
        for g, opt, sched in zip(self.groups, self.optimizers, self.group_schedulers):
            opt.load_state_dict(saved[g.name]["optimizer"])
            if sched is not None and saved[g.name]["scheduler"] is not None:
                sched.load_state_dict(saved[g.name]["scheduler"])

    # -------------------------------------------------------------- training (one batch, as run_batch)
    def _backward(self, signal: Signal | None, out: torch.Tensor, y: torch.Tensor, prefix: str) -> None:
        if signal is None:
            return
        objective = signal.surrogate(out)
        if objective is not None:
            objective.backward()
        if signal.loss is not None:
            self.meter.add(f"{prefix}loss", signal.loss, len(y))
        for name, value in signal.metrics.items():
            self.meter.add(f"{prefix}{name}", value, len(y))
        if signal.logits is not None:
            self.meter.add_acc(f"{prefix}acc", signal.logits, y)

    def _step(self, after: int) -> None:
        for k in self.steps_after.get(after, ()):
            opt = self.optimizers[k]
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(list(self.groups[k].parameters()), float(self.grad_clip))
            opt.step()
            opt.zero_grad(set_to_none=True)

    def train_batch(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        if x is not None:
            self.rule.begin_batch(self.net, x, y)  # accepted rules only keep the input (reconstruction target)
        for i in range(self.first, self.last):
            h = self.net.blocks[i](self.rule.block_input(i, h))
            self._backward(self.rule.block_signal(i, h, y), h, y, f"block{i}/train_")
            self._step(i)
        if self.is_last:
            logits = self.net.head(self.rule.block_input(self.n, h))
            self._backward(self.rule.head_signal(logits, y), logits, y, "train/")
            self._step(self.n)
        return h.detach()

    # -------------------------------------------------------------- evaluation (as rule.evaluate, per stage)
    @torch.no_grad()
    def eval_batch(self, h: torch.Tensor, y: torch.Tensor, split: str) -> torch.Tensor:
        for i in range(self.first, self.last):
            h = self.net.blocks[i](h)
            logits = self.rule.block_logits(i, h)
            if logits is not None:
                self.meter.add_acc(f"block{i}/{split}_acc", logits, y)
        if self.is_last:
            logits = self.net.head(h)
            self.meter.add(f"{split}/loss", F.cross_entropy(logits, y), len(y))
            self.meter.add_acc(f"{split}/acc", logits, y)
            if self.exit_blocks and self.n - 1 not in self.exit_blocks:  # as LayerwiseModule.reported_blocks
                self.meter.add_acc(f"block{self.n - 1}/{split}_acc", logits, y)
        return h


def _device(cfg: DictConfig, rank: int, backend: str) -> torch.device:
    accel = str(cfg.trainer.accelerator)
    if accel == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", rank % torch.cuda.device_count() if backend == "nccl" else 0)


def owned_state(module, stage: Stage) -> dict[str, torch.Tensor]:
    """The entries of module.state_dict() this stage trained: its blocks, its groups' modules, the head."""
    modules = [stage.net.blocks[i] for i in range(stage.first, stage.last)]
    modules += [m for group in stage.groups for m in group.modules]
    owned = {id(t) for m in modules for t in m.state_dict(keep_vars=True).values()}
    return {k: v.detach().cpu() for k, v in module.state_dict(keep_vars=True).items() if id(v) in owned}


def _stop_handlers(stop_flag) -> None:
    """A signal only asks for a stop (stage 0 picks the batch); a second Ctrl-C stops this process at once."""
    received: list[int] = []

    def handle(signum, frame):
        if received:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        received.append(signum)
        if not stop_flag.value:  # a plain shared int: safe to write from a signal handler
            stop_flag.value = signum

    for sig in SIGNALS:
        signal.signal(sig, handle)


def run_stage(rank: int, cfg_dict: dict, plan: StagePlan, stop_flag, reports) -> None:
    """Process entry point (torch.multiprocessing): build the experiment, train this stage, save its part.

    `stop_flag`: a shared int, the number of the signal that asked for a stop (0: none). `reports`: a queue to
    the parent ("ready", rank) once built and ("epoch", rank, row) after each epoch, for its per-epoch lines."""
    from loguru import logger

    _stop_handlers(stop_flag)
    logger.remove()  # the parent logs the run; a stage speaks only when something is wrong
    logger.add(lambda m: print(m, end="", flush=True), level="WARNING")
    torch.set_num_threads(plan.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(plan.threads))
    cfg = OmegaConf.create(cfg_dict)
    dist.init_process_group(plan.backend, init_method=f"tcp://127.0.0.1:{plan.port}", rank=rank,
                            world_size=plan.stages, timeout=timedelta(seconds=plan.timeout_s))
    try:
        _train_stage(rank, cfg, plan, stop_flag, reports)
    except KeyboardInterrupt:  # a second Ctrl-C: the parent reports the stop
        _exit_now(reports, 128 + signal.SIGINT)
    except BaseException:
        # spawn reports whichever stage it notices first, often a neighbour that lost its connection: each
        # stage prints its own error, so the cause is in the output too.
        print(f"pipeline stage {rank} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        raise
    finally:
        dist.destroy_process_group()
    _exit_now(reports, 0)


def _exit_now(reports, code: int) -> None:
    """End the process without interpreter finalization: the stage's part is on disk, and tearing down torch and
    every imported module took seconds (20 s on a loaded machine), which a stop signal's grace period (Slurm's
    KillWait, 30 s by default) cannot spare. The reports queue and the console are flushed first."""
    reports.close()
    reports.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _resumed_part(plan: StagePlan, rank: int, module, stage: Stage) -> tuple[dict | None, tuple[int, int]]:
    """This stage's saved state (weights loaded, optimizers and schedulers restored) and where training
    continues, (epoch, batches done); (None, (0, 0)) for a fresh run."""
    if not plan.resume_from:
        return None, (0, 0)
    checkpoint = load_checkpoint(plan.resume_from, map_location="cpu")
    module.load_state_dict(checkpoint["state_dict"])
    part = checkpoint["pipeline"]["stages"][rank]
    stage.load_optim_state(part["optim"])
    position = checkpoint[KEY]["position"]
    return part, (int(position["epoch"]), int(position["batches_done"]))


def _steady_rate(ends: list[tuple[float, int]], warmup: int) -> tuple[float, int]:
    """(seconds, images) of one epoch's batches after the first `warmup` ones: the pipeline is full then."""
    steady = ends[warmup:]
    if len(steady) < 2:
        return 0.0, 0
    return steady[-1][0] - steady[0][0], sum(n for _, n in steady[1:])


def _train_stage(rank: int, cfg: DictConfig, plan: StagePlan, stop_flag, reports) -> None:
    from layerwise.core.experiment import build_experiment

    # Every stage builds the whole experiment from the same seed, so each module starts exactly as in a
    # sequential run; each then keeps training only its own part.
    datamodule, module = build_experiment(cfg)
    example = datamodule.example_batch()
    shapes = output_shapes(module.net, example)
    device = _device(cfg, rank, plan.backend)
    module.to(device)
    module.train()
    stage = Stage(module, plan, rank, device, cfg.optimizer, int(cfg.trainer.max_epochs), cfg.trainer.grad_clip)
    saved, (start_epoch, first_batch) = _resumed_part(plan, rank, module, stage)
    in_shape = tuple(example.shape[1:]) if stage.first == 0 else tuple(shapes[stage.first - 1])
    link = Link(plan, rank, device, in_shape, tuple(example.shape[1:]))
    inbox = Inbox(link, plan.buffer) if rank > 0 else None
    send = link.send if not stage.is_last else (lambda *a, **k: None)
    memory: deque = deque(maxlen=max(plan.buffer, 1))
    rng = random.Random(int(cfg.seed) + rank)
    t = cfg.trainer
    history: list[dict] = []
    replays_total = 0
    if saved is not None:
        history, replays_total = list(saved["history"]), int(saved["replay_steps"])
        memory.extend(tuple(None if v is None else v.to(device) for v in item) for item in saved["memory"])
        version, internal, gauss = saved["replay_rng"]
        rng.setstate((version, tuple(internal), gauss))
        restore_rng(saved["rng"])  # last, so nothing above draws from the restored streams
    n_splits = 2 if getattr(datamodule, "val_set", None) is not None else 1
    reports.put(("ready", rank))

    def save_part(position: tuple[int, int], meter: EpochMeter | None, replays: int, stopped: int) -> None:
        torch.save({"state": owned_state(module, stage), "history": history, "replay_steps": replays_total,
                    "blocks": [stage.first, stage.last], "stopped": stopped,
                    "position": {"epoch": position[0], "batches_done": position[1]},
                    # the training state a resume needs (checkpoint["pipeline"]["stages"][rank])
                    "resume": {"optim": stage.optim_state(), "rng": rng_state(), "history": history,
                               "replay_rng": [rng.getstate()[0], list(rng.getstate()[1]), rng.getstate()[2]],
                               "memory": [tuple(None if v is None else v.cpu() for v in item) for item in memory],
                               "meter": None if meter is None else meter.state(), "epoch_replays": replays,
                               "replay_steps": replays_total}},
                   Path(plan.out_dir) / f"stage{rank}.pt")

    for epoch in range(start_epoch, int(t.max_epochs)):
        resumed_epoch = saved is not None and epoch == start_epoch
        module.train()
        stage.meter = EpochMeter.restored(saved["meter"] if resumed_epoch else None)
        replays = int(saved["epoch_replays"]) if resumed_epoch and saved.get("meter") else 0
        samples, t0, t_start = 0, None, time.monotonic()
        batch_ends: list[tuple[float, int]] = []
        if rank == 0:
            if resumed_epoch:
                datamodule.resume_at(epoch, first_batch)  # the batches already trained are skipped by index
            loader = datamodule.train_dataloader()
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):  # as Lightning does: the epoch picks the order (sampling.py)
                sampler.set_epoch(epoch)
            limit = limit_batches(t.limit_train_batches, len(loader))
            t_start = time.monotonic()
            for b, (x, y) in enumerate(loader, start=first_batch if resumed_epoch else 0):
                if b >= limit:
                    break
                if stop_flag.value or plan.stop_at == (epoch, b):
                    send(STOP)
                    save_part((epoch, b), stage.meter, replays, stop_flag.value or int(signal.SIGTERM))
                    return
                x, y = x.to(device), y.to(device)
                t0 = t0 or time.monotonic()
                h = stage.train_batch(x, y, x if plan.needs_input else None)
                send(TRAIN, h, y, x)
                samples += len(y)
                batch_ends.append((time.monotonic(), len(y)))
            send(END)
        else:
            while True:
                message = inbox.get(block=not (plan.buffer and memory))
                if message is None:  # asynchronous variant: no fresh input, train on a remembered batch
                    stage.train_batch(*rng.choice(memory))
                    replays += 1
                    continue
                kind, h, y, x = message
                if kind == STOP:
                    send(STOP)
                    save_part((epoch, -1), stage.meter, replays, 1)
                    return
                if kind == END:
                    send(END)
                    break
                if kind != TRAIN:
                    raise RuntimeError(f"stage {rank}: expected a training batch, got message kind {kind}")
                t0 = t0 or time.monotonic()
                out = stage.train_batch(h, y, x)
                if plan.buffer:
                    memory.append((h, y, x))
                send(TRAIN, out, y, x)
                samples += len(y)
                batch_ends.append((time.monotonic(), len(y)))
        elapsed = batch_ends[-1][0] - t0 if batch_ends else 0.0  # this stage: first batch taken to last done
        timing = {}
        if rank == 0:
            timing["_t_start"] = t_start
        if stage.is_last and batch_ends:
            seconds, images = _steady_rate(batch_ends, plan.warmup_batches)
            timing.update({"_t_end": batch_ends[-1][0], "_samples": samples, "_steady_s": seconds,
                           "_steady_n": images})
        train_metrics = stage.meter.read()
        replays_total += replays
        # Evaluation on the test set (and the validation split) when Lightning would run it.
        module.eval()
        stage.meter = EpochMeter()
        evaluated = (epoch + 1) % int(t.check_val_every_n_epoch) == 0
        if evaluated:
            loaders = datamodule.val_dataloader() if rank == 0 else None
            loaders = loaders if isinstance(loaders, list) else [loaders]
            for split_idx in range(n_splits):
                if rank == 0:
                    loader = loaders[split_idx]
                    limit = limit_batches(t.limit_val_batches, len(loader))
                    for b, (x, y) in enumerate(loader):
                        if b >= limit:
                            break
                        x, y = x.to(device), y.to(device)
                        send(EVAL, stage.eval_batch(x, y, EVAL_SPLITS[split_idx]), y)
                    send(END)
                else:
                    while True:
                        kind, h, y, _ = inbox.get()
                        if kind == END:
                            send(END)
                            break
                        send(EVAL, stage.eval_batch(h, y, EVAL_SPLITS[split_idx]), y)
        eval_metrics = stage.meter.read()
        lr = stage.optimizers[0].param_groups[0]["lr"] if stage.optimizers else None
        for sched in stage.schedulers:
            sched.step()
        row = {"epoch": epoch, **train_metrics, **eval_metrics,
               f"pipeline/stage{rank}_imgs_per_sec": samples / elapsed if elapsed > 0 else 0.0,
               f"pipeline/stage{rank}_replay_steps": replays, **({"train/lr": lr} if lr is not None else {}),
               "_evaluated": evaluated, **timing}
        history.append(row)
        reports.put(("epoch", rank, row))
    if rank > 0:
        kind = inbox.get()[0]
        if kind != DONE:
            raise RuntimeError(f"stage {rank}: expected the end of training, got message kind {kind}")
    send(DONE)
    save_part((int(t.max_epochs), 0), None, 0, 0)


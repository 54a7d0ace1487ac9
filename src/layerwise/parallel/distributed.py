"""Data-parallel training (Lightning DDP, one process per device) for every learning rule.

DDP's reducer assumes one backward per forward per iteration: it is armed before a backward, waits until every
parameter has its gradient, then all-reduces bucket by bucket. Layerwise rules run several backwards per batch
(one per block, late synthetic-gradient signals, DFA's block backwards after the head) and step each block's
optimizer right after its own backward, so that assumption fails:
- with `find_unused_parameters=False` (Lightning's `ddp`), the second backward of a batch finds the first one's
  reduction unfinished and the run stops ("parameters that were not used in producing the loss");
- `find_unused_parameters=True` gives the right averages (every backward re-arms the reducer, which then
  all-reduces EVERY bucket of the model, unused parameters included) but at n_backwards times the traffic:
  measured per batch on 2 processes (3-block MLP), 7x (dgl), 9x (dfa), 11x (dni) the parameter count, plus an
  autograd-graph search per backward, against 1x here.

So `LayerwiseDDPStrategy` keeps DDP's wrapper (rank-0 broadcast of parameters at setup, rank-0 buffers before
each training forward, as plain DDP does) but runs every training step under `no_sync()`, which leaves the
reducer idle; `sync_step_point` then averages the gradients of exactly the groups about to step, in ONE
coalesced all-reduce per dtype, right before they step. Every rule works whatever its number of backwards,
and a group steps with the average over processes of the gradient it would have had: with a global batch
split evenly over processes, the same update as one process on the whole batch (up to float summation order).
The same all-reduce carries the stage losses the non-finite guard checks at that point, so a NaN on one rank
makes every rank stop (or skip) at the same step instead of leaving the others waiting in the next collective.

Only process 0 talks: as soon as a process knows its rank, any other process's console shows its own errors
only (`layerwise.runlog.setup_console`); a process Lightning starts by re-running the command knows it from the
environment before it logs anything.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from loguru import logger
from torch.nn.parallel import DistributedDataParallel

from layerwise.errors import ConfigError
from layerwise.parallel import START_METHODS
from layerwise.runlog import setup_console

#: Epoch values that are process 0's own measurement by design (README, "What is synced"; summary.json reads the
#: same values from process 0). Lightning recommends sync_dist=True for every epoch-level value under DDP, but
#: averaging these would report a blend of processes' throughput and memory as process 0's, so its warning does
#: not apply to them. (train/lr and train/skipped_batches, equal on every process, are logged with sync_dist.)
PROCESS_ZERO_METRICS = ("train/imgs_per_sec", "train/peak_activation_mb")


class LayerwiseDDPStrategy(DDPStrategy):
    """DDP whose reducer never runs: layerwise averages each group's gradients itself (`sync_step_point`)."""

    strategy_name = "layerwise_ddp"

    def set_world_ranks(self) -> None:
        super().set_world_ranks()
        # Before Lightning's first per-process line ("Initializing distributed: GLOBAL_RANK: 1"): processes
        # started by torch.multiprocessing (ddp_spawn/ddp_fork) learn their rank only here (and a spawned
        # process 0 has no console of its own yet).
        setup_console(rank=self.global_rank)
        for name in PROCESS_ZERO_METRICS:
            warnings.filterwarnings("ignore", message=rf".*self\.log\('{name}', \.\.\., sync_dist=True\)")

    def training_step(self, *args: Any, **kwargs: Any):
        model = self.model
        if not isinstance(model, DistributedDataParallel):
            return super().training_step(*args, **kwargs)
        # Plain DDP broadcasts rank 0's buffers (BatchNorm running stats) before every training forward; it
        # decides that from this flag, which a no_sync step leaves False. Keep that behaviour.
        model.require_forward_param_sync = True
        with model.no_sync():
            return super().training_step(*args, **kwargs)


def _device_count(trainer_cfg) -> int:
    """How many devices `trainer.devices` asks for (-1/"auto": every visible GPU when a GPU may be used)."""
    devices = trainer_cfg.devices
    if isinstance(devices, str) and devices not in ("auto", "-1"):
        parts = [p for p in devices.split(",") if p.strip()]
        return len(parts) if "," in devices else int(devices)
    if devices in ("auto", -1, "-1"):
        gpu = trainer_cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        return torch.cuda.device_count() if gpu else 1
    if isinstance(devices, int):
        return devices
    return len(list(devices))


def build_strategy(trainer_cfg) -> str | LayerwiseDDPStrategy:
    """The Trainer's `strategy` for `trainer.strategy`: `auto` on one device, layerwise's DDP on several."""
    name = str(trainer_cfg.get("strategy", "auto"))
    if name == "auto":
        # Lightning's own choice for several devices is plain DDP, which fails on the second backward.
        return "auto" if _device_count(trainer_cfg) == 1 else LayerwiseDDPStrategy(start_method="popen")
    if name not in START_METHODS:
        raise ConfigError(f"trainer.strategy={name} is not supported: layerwise runs one backward per block, "
                          f"which needs its own gradient averaging; use trainer.strategy="
                          f"{' | '.join(['auto', *START_METHODS])} (e.g. trainer=ddp trainer.devices=4)")
    return LayerwiseDDPStrategy(start_method=START_METHODS[name])


def use_sync_batchnorm(trainer_cfg) -> bool:
    """`trainer.sync_batchnorm` where torch can do it: SyncBatchNorm has no CPU kernel, so on CPU it is off (with a
    warning) and each process normalizes its own batch."""
    if not trainer_cfg.get("sync_batchnorm", False) or _device_count(trainer_cfg) == 1:
        return False
    if trainer_cfg.accelerator in ("gpu", "cuda") or (trainer_cfg.accelerator == "auto" and torch.cuda.is_available()):
        return True
    logger.warning("trainer.sync_batchnorm=true has no effect on CPU (torch has no CPU SyncBatchNorm): each process "
                   "normalizes its own batch; set trainer.sync_batchnorm=false to silence this")
    return False

"""The one LightningModule: runs blocks in order and trains each with the signal its rule gives.

It never names a rule: `batch.run_batch` runs the blocks in order, and this module supplies the backward
(with logging) and the optimizer steps of groups that are complete. Local rules detach block inputs, so each
block's graph is freed by its own backward before the next block runs.

Manual optimization facts handled here: with K optimizers Lightning's `global_step` advances K per
batch, so nothing here is step-based (epochs drive schedulers and checkpoints); `self.optimizers()`
returns a bare optimizer when there is one; clipping is ours via `self.clip_gradients`.
Non-finite losses and gradients are caught before a group steps (`layerwise.core.guard`, `trainer.nonfinite`).
"""
from __future__ import annotations

import time
from collections import defaultdict

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from layerwise.core.acceleration import (
    BatchGradScaler,
    compile_in_place,
    compile_mode,
    has_grads,
    install_batch_scaler,
    to_channels_last,
)
from layerwise.core.batch import run_batch
from layerwise.core.grad_sync import sync_step_point
from layerwise.core.guard import NonFiniteGuard, stage_name
from layerwise.core.memory import ActivationMeter
from layerwise.core.optim import build_optimizer, build_scheduler
from layerwise.core.run_state import FORMAT, KEY, group_layout, restore_rng, rng_state
from layerwise.models import Network
from layerwise.rules.base import LearningRule, Signal, evaluating


def _as_list(items) -> list:
    """Lightning returns a bare object for one optimizer/scheduler and None for no scheduler."""
    if items is None:
        return []
    return items if isinstance(items, list) else [items]


# Evaluation dataloaders in the order the data module returns them: the test set, then the validation split.
EVAL_SPLITS = ("test", "val")


def _accuracy(num_classes: int) -> MulticlassAccuracy:
    # validate_args=False: the labels were checked once when the data loaded (torchmetrics' per-update check
    # runs torch.unique on them, a sort and a sync in every training and evaluation step).
    return MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)


class EpochMeans:
    """Batch-size-weighted means of scalar tensors over an epoch, kept on their device (no sync per batch).

    A step only remembers its values (one op each would already cost more than a small block's step on CPU);
    they are weighted and summed together every FOLD values and at the epoch's end."""

    FOLD = 256

    def __init__(self):
        self._waiting: dict[str, list[tuple[torch.Tensor, int]]] = {}  # (value, batch size) not yet summed
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor, n: int) -> None:
        waiting = self._waiting.setdefault(name, [])
        waiting.append((value.detach(), n))
        self._counts[name] = self._counts.get(name, 0) + n
        if len(waiting) >= self.FOLD:
            self._fold(name)

    def _fold(self, name: str) -> None:
        values, sizes = zip(*self._waiting.pop(name))
        weights = torch.tensor(sizes, dtype=torch.float32).to(values[0].device, non_blocking=True)
        total = (torch.stack(values).float() * weights).sum()
        self._sums[name] = total if name not in self._sums else self._sums[name] + total

    def pending(self) -> bool:
        return bool(self._counts)

    def pop(self) -> list[tuple[str, torch.Tensor]]:
        for name in list(self._waiting):
            self._fold(name)
        means = [(name, self._sums[name] / self._counts[name]) for name in self._counts]
        self._waiting, self._sums, self._counts = {}, {}, {}
        return means


class LayerwiseModule(L.LightningModule):
    def __init__(self, net: Network, rule: LearningRule, optim_cfg, num_classes: int, example: torch.Tensor,
                 max_epochs: int = 1, grad_clip: float | None = None, memory_batches: int = 2,
                 nonfinite: str = "stop", channels_last: bool = False, compile=False,
                 compile_backend: str = "inductor"):
        super().__init__()
        self.automatic_optimization = False
        self.net, self.rule = net, rule
        self.optim_cfg, self.max_epochs, self.grad_clip = optim_cfg, max_epochs, grad_clip
        self.memory_batches = memory_batches
        self.guard = NonFiniteGuard(nonfinite)
        self.groups = rule.train_groups(net)
        self._group_params = [list(group.parameters()) for group in self.groups]
        self._groups_after: dict[int, list[int]] = defaultdict(list)
        for k, group in enumerate(self.groups):
            self._groups_after[group.step_after].append(k)

        n = len(net.blocks)
        with evaluating(net):
            _, exits = rule.evaluate(net, example)
        # Blocks with an early-exit head report its accuracy; the last block of such a rule reports the
        # network head's, since that is the classifier it is trained with.
        self.exit_blocks = sorted(exits)
        self.reported_blocks = self.exit_blocks + ([n - 1] if self.exit_blocks and n - 1 not in exits else [])
        # Fast paths (layerwise.core.acceleration), applied after the probe pass so it runs uncompiled.
        self.channels_last = channels_last
        if channels_last:
            net.to(memory_format=torch.channels_last)
            rule.to(memory_format=torch.channels_last)
        self.compile_mode = compile_mode(compile)
        if self.compile_mode:
            compile_in_place(net, rule, self.compile_mode, compile_backend)
        self._scaler: BatchGradScaler | None = None
        self.test_acc = _accuracy(num_classes)
        self.block_test_acc = nn.ModuleDict({str(i): _accuracy(num_classes) for i in self.reported_blocks})
        # The validation split's own metric objects (used only when data.val_fraction > 0; their states are
        # not saved in checkpoints, so checkpoints are the same with and without the split).
        self.val_acc = _accuracy(num_classes)
        self.block_val_acc = nn.ModuleDict({str(i): _accuracy(num_classes) for i in self.reported_blocks})
        self.meter = ActivationMeter()
        self.run_identity: dict = {}  # method/model/data/seed, stored in checkpoints and checked on resume
        self._rng_to_restore: dict | None = None
        self._epoch_means = EpochMeans()
        self._eval_means = {split: EpochMeans() for split in EVAL_SPLITS}
        self._samples = 0
        self._t_first = self._t_last = 0.0

    # ----------------------------------------------------------------- optimizers
    def configure_optimizers(self):
        optimizers, schedulers = [], []
        for group in self.groups:
            opt = build_optimizer(group.parameters(), self.optim_cfg, group.lr_scale)
            optimizers.append(opt)
            sched = build_scheduler(opt, self.optim_cfg, self.max_epochs)
            if sched is not None:
                schedulers.append(sched)
        return optimizers, schedulers

    def _optimizer_list(self) -> list:
        return _as_list(self.optimizers())

    def _step_groups(self, after: int, optimizers: list) -> None:
        ks = self._groups_after.get(after, ())
        skip: set[int] = set()
        if ks or after == len(self.net.blocks):  # the head's stage flushes losses no group stepped after
            sync_step_point(self.trainer.world_size, [self._group_params[k] for k in ks], self.guard)  # DDP
            skip = self.guard.check([(self.groups[k].name, self._group_params[k]) for k in ks])
        for pos, k in enumerate(ks):
            opt = optimizers[k]
            if pos in skip:  # trainer.nonfinite=skip: drop this batch's gradients for the group
                opt.zero_grad(set_to_none=True)
                continue
            if self._scaler is not None and not has_grads(self._group_params[k]):
                continue  # nothing to step; GradScaler.step would assert on an optimizer without gradients
            opt.step()  # clipping: on_before_optimizer_step
            opt.zero_grad(set_to_none=True)
        if self._scaler is not None and after == len(self.net.blocks):  # the batch's last step point
            self._scaler.end_batch()

    def on_before_optimizer_step(self, optimizer) -> None:
        # Lightning calls this inside opt.step(), after 16-mixed's unscale_: clipping sees the true gradients.
        if self.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    # ----------------------------------------------------------------- training
    def _backward_signal(self, signal: Signal | None, out: torch.Tensor | None, y: torch.Tensor, prefix: str,
                         stage: int | None = None) -> None:
        if signal is None:
            return
        objective = signal.surrogate(out)
        if objective is not None:
            self.manual_backward(objective)
        where = stage_name(stage, len(self.net.blocks), prefix)
        self.guard.watch_loss(where, signal.loss)  # checked, without a sync, at the next step point
        if objective is not None and objective is not signal.loss:
            self.guard.watch_loss(where, objective)
        if signal.loss is not None:
            self._epoch_means.add(f"{prefix}loss", signal.loss, len(y))
        for name, value in signal.metrics.items():
            self._epoch_means.add(f"{prefix}{name}", value, len(y))
        if signal.logits is not None and stage is not None:
            # The batch's share of correct predictions, averaged over the epoch like the loss: the same number as
            # torchmetrics' micro accuracy (correct / seen) at a fifth of the cost of its update in every step.
            correct = (signal.logits.detach().argmax(-1) == y).float().mean()
            self._epoch_means.add(f"{prefix}acc", correct, len(y))

    def _log_epoch_values(self) -> None:
        """The epoch's training losses and accuracies, logged once: calling `self.log` per stage and batch cost
        more than the training step of a small block (Lightning's result collection, measured ~1 ms a call)."""
        for name, mean in self._epoch_means.pop():
            self.log(name, mean, on_step=False, on_epoch=True, sync_dist=True)  # DDP: mean over processes

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = to_channels_last(x) if self.channels_last else x
        optimizers = self._optimizer_list()
        self.guard.begin_batch(batch_idx)
        if self._scaler is not None:  # constant within the batch (BatchGradScaler updates at its end)
            self.rule.grad_scale = self._scaler.get_scale()

        def backward(signal: Signal | None, out, prefix: str, stage: int | None) -> None:
            self._backward_signal(signal, out, y, prefix, stage)

        with self.meter.track(x.device, enabled=batch_idx < self.memory_batches):
            run_batch(self.net, self.rule, x, y, backward, lambda i: self._step_groups(i, optimizers))
        self._samples += len(y)
        if batch_idx + 1 >= self.trainer.num_training_batches:  # before the callbacks' epoch-end hooks read them
            self._log_epoch_values()

    def on_train_start(self) -> None:
        # One scale update per batch, not per optimizer step (see layerwise.core.acceleration).
        self._scaler = install_batch_scaler(self.trainer.precision_plugin)
        # A resumed run re-enters its epoch without on_train_epoch_start: the rule learns the epoch here too.
        self.rule.begin_epoch(self.current_epoch, self.max_epochs)
        # With a gradient scaler (16-mixed) an inf gradient is routine: the scaler skips that step itself.
        self.guard.check_grads = self._scaler is None

    def on_train_epoch_start(self) -> None:
        self._catch_up_schedulers(self.current_epoch)
        self.rule.begin_epoch(self.current_epoch, self.max_epochs)
        self.guard.begin_epoch(self.current_epoch)
        self._samples = 0
        self._t_first = self._t_last = time.perf_counter()
        self.meter.reset()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._t_last = time.perf_counter()

    @property
    def imgs_per_sec(self) -> float:
        elapsed = self._t_last - self._t_first
        return self._samples / elapsed if elapsed > 0 else 0.0

    def on_train_epoch_end(self) -> None:
        self._log_epoch_values()  # normally done in the last batch; here when its length was unknown
        self.log_dict({  # process 0's own under DDP (layerwise.parallel.distributed.PROCESS_ZERO_METRICS)
            "train/imgs_per_sec": self.imgs_per_sec,
            "train/peak_activation_mb": self.meter.peak_mb,
        })
        self.log_dict({  # the lr this epoch trained with, before the schedulers step; equal on every process
            "train/lr": self._optimizer_list()[0].param_groups[0]["lr"],
            "train/skipped_batches": float(self.guard.skipped_epoch),
        }, sync_dist=True)
        self.guard.end_epoch()
        self._catch_up_schedulers(self.current_epoch + 1)

    def _catch_up_schedulers(self, epochs_done: int) -> None:
        """Step each scheduler until it has seen `epochs_done` epochs: once per epoch end, and on a resume from
        a checkpoint written before the epoch-end hook ran (validation end), the step that run missed."""
        for sched in _as_list(self.lr_schedulers()):
            while sched.last_epoch < epochs_done:
                sched.step()

    # ----------------------------------------------------------------- checkpoints (layerwise.core.run_state)
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        wandb_ids = [lg.version for lg in self.trainer.loggers if isinstance(lg, WandbLogger)]
        checkpoint[KEY] = {
            "format": FORMAT,
            "identity": dict(self.run_identity),
            "groups": group_layout(self.groups, self._group_params),
            "position": {"epoch": int(self.current_epoch),
                         "batches_done": int(self.trainer.fit_loop.epoch_loop.batch_progress.current.completed)},
            "rng": rng_state(),
            "wandb_id": wandb_ids[0] if wandb_ids else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get(KEY, {}).get("rng")

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Restored here, not at load time: between loading and the first batch Lightning and the data loader
        # still run code that an uninterrupted run ran before the checkpoint was written.
        if self._rng_to_restore is not None:
            restore_rng(self._rng_to_restore)
            self._rng_to_restore = None

    # ----------------------------------------------------------------- evaluation
    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        """Dataloader 0 is the test set (every epoch, as in the thesis); dataloader 1, when the data module has
        a validation split (data.val_fraction > 0), is that split: `val/loss`, `val/acc`, `block{i}/val_acc`."""
        x, y = batch
        x = to_channels_last(x) if self.channels_last else x
        split = EVAL_SPLITS[dataloader_idx]
        acc, block_acc = self._eval_metrics(split)
        logits, exits = self.rule.evaluate(self.net, x)
        self._eval_means[split].add(f"{split}/loss", F.cross_entropy(logits, y), len(y))
        acc.update(logits, y)
        for i in self.reported_blocks:
            block_acc[str(i)].update(exits.get(i, logits), y)
        if batch_idx + 1 >= self._eval_batches(dataloader_idx):  # before the callbacks' epoch-end hooks read them
            self._log_eval_values(split)

    def _eval_metrics(self, split: str) -> tuple[MulticlassAccuracy, nn.ModuleDict]:
        """The split's accuracy and per-block accuracies (the test set's, or the validation split's own)."""
        return (self.test_acc, self.block_test_acc) if split == "test" else (self.val_acc, self.block_val_acc)

    def _eval_batches(self, dataloader_idx: int) -> float:
        trainer = self.trainer
        counts = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        return counts[dataloader_idx] if isinstance(counts, list) else counts

    def _log_eval_values(self, split: str) -> None:
        """One split's loss and accuracies, logged once per evaluation (as in training, a `self.log` per batch cost
        about as much as a small network's evaluation step)."""
        acc, block_acc = self._eval_metrics(split)
        log = dict(on_epoch=True, add_dataloader_idx=False)  # no "/dataloader_idx_N" suffix on the names
        for name, mean in self._eval_means[split].pop():
            self.log(name, mean, batch_size=1, sync_dist=True, **log)  # DDP: mean over processes
        if acc.update_count:
            self.log(f"{split}/acc", acc, **log)
            for i in self.reported_blocks:
                self.log(f"block{i}/{split}_acc", block_acc[str(i)], **log)

    def on_validation_epoch_end(self) -> None:
        for split in EVAL_SPLITS:  # normally done at each loader's last batch; here when its length was unknown
            if self._eval_means[split].pending():
                self._log_eval_values(split)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rule.evaluate(self.net, x)[0]

"""summary.json: one file per run, written atomically at the end and when a run stops early."""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from loguru import logger

from layerwise.core.guard import DivergedError
from layerwise.core.preemption import Interrupted
from layerwise.runs.resume import write_json_atomic  # noqa: F401  (re-exported: summary.json's writer, torch-free)


def _value(metrics: dict, key: str):
    v = metrics.get(key)
    return float(v) if isinstance(v, (torch.Tensor, float, int)) else None


def _best(best: float | None, acc: float | None) -> float | None:
    return best if acc is None else (acc if best is None else max(best, acc))


def mean_after_first(values: list[float]) -> float | None:
    """Epoch throughputs averaged without the first epoch (allocator warm-up, lazy init) where there is a rest."""
    rest = values[1:] or values
    return sum(rest) / len(rest) if rest else None


def _has_val_split(trainer) -> bool:
    return getattr(getattr(trainer, "datamodule", None), "val_set", None) is not None


class SummaryCallback(L.Callback):
    """Tracks best test (and validation) accuracy per epoch and writes `summary.json` with the run's status.

    With a validation split (data.val_fraction > 0) the summary also has `val_acc`, `best_val_acc`, `val_loss`
    and `block_val_acc`. `extras`: callbacks with a `summary() -> dict` (the diagnostics), merged in at the end.

    Everything that accumulates over a run (best accuracies, per-epoch throughputs, peak memory, wall time,
    skipped batches) is part of the checkpoint (`state_dict`), so a resumed run's summary covers the whole run:
    `wall_s` is the whole run's training time (all segments), `segment_wall_s` this process's part.
    """

    def __init__(self, path: Path, identity: dict, extras=()):
        self.path, self.identity, self.extras = path, identity, list(extras)
        self.t0 = time.perf_counter()
        self.best_test_acc: float | None = None
        self.best_val_acc: float | None = None
        self.imgs_per_sec: list[float] = []
        self.peak_activation_mb = 0.0
        self.earlier_wall_s = 0.0  # the segments before a resume
        self.earlier_skipped = 0
        self.segments = 1
        self.data: dict = {}

    def _skipped(self, pl_module) -> int | None:
        guard = getattr(pl_module, "guard", None)
        return None if guard is None else self.earlier_skipped + int(guard.skipped_total)

    def state_dict(self) -> dict:
        module = getattr(self, "_module", None)
        return {"best_test_acc": self.best_test_acc, "best_val_acc": self.best_val_acc,
                "imgs_per_sec": list(self.imgs_per_sec), "peak_activation_mb": self.peak_activation_mb,
                "wall_s": self.earlier_wall_s + time.perf_counter() - self.t0, "segments": self.segments,
                "skipped_batches": (self._skipped(module) if module is not None else None) or self.earlier_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.best_test_acc, self.best_val_acc = state.get("best_test_acc"), state.get("best_val_acc")
        self.imgs_per_sec = list(state.get("imgs_per_sec", []))
        self.peak_activation_mb = float(state.get("peak_activation_mb", 0.0))
        self.earlier_wall_s = float(state.get("wall_s", 0.0))
        self.earlier_skipped = int(state.get("skipped_batches") or 0)
        self.segments = int(state.get("segments", 1)) + 1

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._module = pl_module  # state_dict() reads the guard's count

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.best_test_acc = _best(self.best_test_acc, _value(trainer.callback_metrics, "test/acc"))
        self.best_val_acc = _best(self.best_val_acc, _value(trainer.callback_metrics, "val/acc"))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.imgs_per_sec.append(pl_module.imgs_per_sec)
        self.peak_activation_mb = max(self.peak_activation_mb, pl_module.meter.peak_mb)

    def write(self, trainer, pl_module, status: str, extra: dict | None = None) -> dict:
        m = trainer.callback_metrics
        blocks = getattr(pl_module, "reported_blocks", [])
        self.data = {
            "status": status,
            **self.identity,
            "epochs_done": int(trainer.current_epoch),
            "test_acc": _value(m, "test/acc"),
            "best_test_acc": self.best_test_acc,
            "test_loss": _value(m, "test/loss"),
            "block_test_acc": [_value(m, f"block{i}/test_acc") for i in blocks],
            **({"val_acc": _value(m, "val/acc"), "best_val_acc": self.best_val_acc, "val_loss": _value(m, "val/loss"),
                "block_val_acc": [_value(m, f"block{i}/val_acc") for i in blocks]}
               if _has_val_split(trainer) or "val/acc" in m else {}),
            "imgs_per_sec": mean_after_first(self.imgs_per_sec),
            "peak_activation_mb": round(self.peak_activation_mb, 3),
            "wall_s": round(self.earlier_wall_s + time.perf_counter() - self.t0, 2),  # all segments of the run
            "segment_wall_s": round(time.perf_counter() - self.t0, 2),  # this process (since its resume)
            "segments": self.segments,
        }
        skipped = self._skipped(pl_module)
        if skipped is not None:  # batches skipped for a non-finite loss/gradient (trainer.nonfinite=skip)
            self.data["skipped_batches"] = skipped
        self.data.update(extra or {})
        for extra in self.extras:
            self.data.update(extra.summary())
        if trainer.is_global_zero:  # under DDP every process computes it; one writes it
            write_json_atomic(self.path, self.data)
        return self.data

    def on_fit_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module, "interrupted" if trainer.interrupted else "completed")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, DivergedError):  # a non-finite loss/gradient with trainer.nonfinite=stop
            self.write(trainer, pl_module, "diverged", {"error": str(exception), "diverged_at": exception.where})
            return
        stopped = isinstance(exception, (KeyboardInterrupt, Interrupted, SIGTERMException))
        self.write(trainer, pl_module, "interrupted" if stopped else "failed")


class EpochLine(L.Callback):
    """One log line per epoch: on the console when there is no progress bar, always in run.log."""

    def __init__(self, console: bool):
        self.level = "INFO" if console else "DEBUG"

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for key, label in (("train/loss", "loss"), ("train/acc", "acc"), ("val/loss", "val loss"),
                           ("val/acc", "val acc"), ("test/loss", "test loss"), ("test/acc", "test acc")):
            value = _value(m, key)
            if value is not None:
                parts.append(f"{label} {value:.4f}")
        # Callbacks run before the module's own epoch-end hook, so read throughput from the module.
        parts.append(f"img/s {pl_module.imgs_per_sec:.0f}")
        blocks = [_value(m, f"block{i}/test_acc") for i in getattr(pl_module, "reported_blocks", [])]
        if blocks and None not in blocks:
            parts.append("blocks " + " ".join(f"{b:.3f}" for b in blocks))
        logger.log(self.level, "  ".join(parts))

"""Stopping cleanly on SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 (Slurm's `--signal=USR1@<s>` before the time limit).

The handler only records the signal. Before the next training batch starts, `Preemption` raises `Interrupted`;
Lightning then calls every callback's `on_exception`, where this one writes `checkpoints/last.ckpt` (atomically,
with the epoch position and RNG states, see `run_state`) and summary.json says `"status": "interrupted"`. The
process exits with 128 + the signal number (130 for Ctrl-C, 138 for SIGUSR1, 143 for SIGTERM), like a shell.
A second Ctrl-C stops at once, mid-batch: the same path (summary `interrupted`, exit 130), but no new checkpoint,
since a half-trained batch cannot be resumed exactly; `checkpoints/last.ckpt` stays the last epoch's. While the
first Ctrl-C's checkpoint is being written, a second one waits for it (an interrupted write would lose it).

Under submitit (hydra/launcher=submitit_slurm) submitit has its own requeue handler on its preemption signal
(SIGUSR2 by default). That signal is caught here too, and after the checkpoint is written submitit's handler runs,
which requeues the job; a requeued job lands in the same run directory and continues from the checkpoint
(`resume.interrupted_run`).
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from loguru import logger

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Interrupted(BaseException):
    """Raised between batches after a stop signal (a BaseException, so no `except Exception` swallows it)."""

    def __init__(self, signum: int, at_once: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.at_once = signum, at_once

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _submitit_handler(signum: int):
    handler = signal.getsignal(signum)
    owner = getattr(handler, "__self__", None)
    return handler if type(owner).__module__.startswith("submitit") else None


class Preemption(L.Callback):
    """Installs the handlers for its lifetime (`with Preemption(...)`), and turns a signal into a checkpoint."""

    def __init__(self, checkpoint_path: Path):
        self.checkpoint_path = checkpoint_path
        self.received: int | None = None
        self.saved = False
        self.stopping = False  # Interrupted raised: the checkpoint is being written
        self._previous: dict[int, object] = {}
        self._requeue = None

    # ----------------------------------------------------------------- handlers
    def __enter__(self) -> "Preemption":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread (e.g. not in a joblib thread)
        signals = list(SIGNALS)
        for sig in (signal.SIGUSR2, signal.SIGUSR1):
            requeue = _submitit_handler(sig)
            if requeue is not None:
                self._requeue = requeue
                if sig not in signals:
                    signals.append(sig)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        for sig, previous in self._previous.items():
            # Stopped by a signal, the process leaves with the stop's exit code: a later Ctrl-C (the second of two
            # sent quickly, when the first stop finished first) has nothing left to stop, and Python's default
            # handler would print a KeyboardInterrupt traceback from whatever exit code is running.
            signal.signal(sig, signal.SIG_IGN if sig == signal.SIGINT and isinstance(error, Interrupted) else previous)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            if signum != signal.SIGINT:
                return
            if self.stopping:
                logger.warning("still writing the checkpoint; stopping as soon as it is written")
                return
            # A second Ctrl-C stops now. Interrupted, not KeyboardInterrupt: Lightning turns the latter into exit 1.
            self.stopping = True
            raise Interrupted(signum, at_once=True)
        self.received = signum
        logger.warning(f"received {signal.Signals(signum).name}: saving a checkpoint before the next batch, "
                       "then stopping (Ctrl-C again to stop at once)")

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning installs its SIGTERM handler once fit has started; one path decides, ours, so put it back.
        for sig in self._previous:
            signal.signal(sig, self._handle)

    def requeue(self) -> None:
        """Hand over to submitit's handler, which requeues the job and exits (under submitit only)."""
        if self._requeue is not None and self.received is not None:
            self._requeue(self.received, None)

    # ----------------------------------------------------------------- the stop
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:  # DDP: every process stops at the same batch, or the others wait forever
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self.stopping = True
            raise Interrupted(self.received or signal.SIGTERM)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):  # Lightning's own SIGTERM stop (e.g. from another rank)
            self.received = self.received or signal.SIGTERM
        if not isinstance(exception, (Interrupted, SIGTERMException)) or getattr(exception, "at_once", False):
            return
        trainer.save_checkpoint(self.checkpoint_path, weights_only=False)  # the full training state
        self.saved = True

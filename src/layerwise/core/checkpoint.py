"""Loading checkpoints safely: tensors and plain metadata only (`torch.load(..., weights_only=True)`).

A checkpoint is a pickle, and unpickling an untrusted one runs arbitrary code. Every checkpoint layerwise
reads goes through `load_checkpoint`, which lets torch's restricted unpickler accept only tensors, containers
and primitive values. Lightning checkpoints written by layerwise (`checkpoints/last.ckpt`, `best.ckpt`) hold
exactly that: the model is built from the config, so no hyperparameters or config objects are saved in them.
For `Trainer.fit(ckpt_path=...)` pass `weights_only=True` as well.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from layerwise.core.layout import run_dir_of
from layerwise.errors import LayerwiseError


class CheckpointError(LayerwiseError):
    """A checkpoint that is not a weights-only checkpoint or cannot be read."""


def load_checkpoint(path: str | Path, map_location=None) -> dict:
    """The checkpoint at `path`, loaded with `weights_only=True`; CheckpointError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only=True refuses any global outside torch's allowlist with "Unsupported global: GLOBAL x.y";
        # other UnpicklingErrors ("invalid load key") mean the bytes are not a checkpoint at all.
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None and "Unsupported global" not in str(err) and "Unsupported class" not in str(err):
            reason = str(err).split("WeightsUnpickler error:")[-1]
            raise CheckpointError(f"{path} is not a readable weights-only checkpoint (truncated, corrupt, or not "
                                  f"a torch checkpoint?): {_short(type(err)(reason))}") from err
        what = f" (it needs {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} holds objects other than tensors{what}; layerwise loads weights only (torch.load "
            "weights_only=True), because unpickling other objects can run arbitrary code. Use a checkpoint "
            "written by layerwise, or, only if you trust its source, load it yourself and save just its "
            "state_dict with torch.save") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                              f"{_short(err)}") from err


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:160] + '...' if len(text) > 160 else text}"


class CheckpointWriteError(LayerwiseError):
    """A checkpoint that could not be written (disk full, no permission, quota)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory and renames it over the old one, so a
    crash or a full disk never leaves a half-written checkpoint: the previous one stays intact. A failed write
    becomes one CheckpointWriteError line instead of a traceback."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()  # serialised first: torch's zip writer reports a failed write as a bare RuntimeError
            torch.save(checkpoint, buffer)
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:  # a full disk, or a second Ctrl-C mid-write: no temp file stays behind
            tmp.unlink(missing_ok=True)
            if not isinstance(err, OSError):
                raise
            reason = err.strerror or type(err).__name__
            raise CheckpointWriteError(
                f"could not write checkpoint {path}: {reason}; earlier checkpoints are intact. Free disk space "
                "(or check permissions/quota) or set paths.output_root to another disk, then continue with "
                f"resume={run_dir_of(path)}") from err


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that its best score survives a resume in the same run directory reached
    by another spelling (a symlinked `experiments/`, a relative path): Lightning compares the saved directory as a
    string and otherwise starts the best score afresh, so best.ckpt would be overwritten by a worse epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._state_key = super().state_key  # its settings are fixed from here on

    @property
    def state_key(self) -> str:
        # Lightning names every hook call of every step after it: built once, not a repr of five settings each time.
        return self._state_key

    def _generate_state_key(self, **kwargs) -> str:
        return f"ModelCheckpoint{kwargs!r}"  # the key plain ModelCheckpoint uses: earlier checkpoints still match

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and os.path.realpath(saved) == os.path.realpath(self.dirpath):
            state_dict = {**state_dict, "dirpath": self.dirpath}
        super().load_state_dict(state_dict)

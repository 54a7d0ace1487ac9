"""What a checkpoint holds beyond Lightning's own state, so that a resumed run continues bit for bit.

Lightning saves the modules (network, rule modules with their buffers: feedback matrices, synthesizers, aux
heads), every optimizer and scheduler, and its loop counters. `checkpoint["layerwise"]` adds:
- `groups`: each optimizer's group name and parameter shapes, checked on load (optimizer states are matched
  by position, so a different split would otherwise load silently into the wrong parameters);
- `position`: epoch and batches completed in it, so the data module restarts the epoch at that batch;
- `rng`: the torch (CPU and CUDA), numpy and Python RNG states, restored right before the next batch trains;
- `identity` (method, model, data, seed) and the wandb run id, so the same wandb run continues.
Everything is tensors or plain values, so it loads with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from layerwise.core.checkpoint import CheckpointError
from layerwise.core.layout import run_dir_of

KEY = "layerwise"
FORMAT = 1


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy's state as plain values: a numpy array would need an allowlist entry for weights_only loading
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
        "python": _to_lists(random.getstate()),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_to_tuples(state["python"]))


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def group_layout(groups, group_params) -> list[dict]:
    return [{"name": g.name, "shapes": [list(p.shape) for p in params]} for g, params in zip(groups, group_params)]


def check_compatible(checkpoint: dict, path: Path, state_dict: dict, layout: list[dict], identity: dict) -> None:
    """CheckpointError (one line) unless `checkpoint` was written by a run of this network, rule and split."""
    meta = checkpoint.get(KEY)
    fix = (f"resume with the config that wrote it (see {_config_of(path)}), or start a new run without resume=")
    if not isinstance(meta, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a layerwise training checkpoint (no run state in it); {fix}")
    theirs = meta.get("identity", {})
    differs = [f"{k}={theirs.get(k)} (this run: {identity[k]})" for k in ("method", "model", "data")
               if theirs.get(k) != identity[k]]
    ours_shapes = {k: list(v.shape) for k, v in state_dict.items()}
    their_shapes = {k: list(v.shape) for k, v in checkpoint["state_dict"].items()}
    mismatched = sorted(k for k in ours_shapes.keys() | their_shapes.keys()
                        if ours_shapes.get(k) != their_shapes.get(k))
    if differs or mismatched:
        what = "; ".join(differs) if differs else (
            f"{len(mismatched)} tensors differ, e.g. {mismatched[0]}: checkpoint "
            f"{their_shapes.get(mismatched[0], 'absent')} vs this run {ours_shapes.get(mismatched[0], 'absent')}")
        raise CheckpointError(f"{path} was written by another network or rule ({what}); {fix}")
    their_layout = meta.get("groups")
    if their_layout != layout:
        names = [g["name"] for g in their_layout or []]
        raise CheckpointError(f"{path} has optimizers for blocks {names}, this run has {[g['name'] for g in layout]} "
                              f"(another block split); {fix}")


def _config_of(checkpoint: Path) -> Path:
    return run_dir_of(checkpoint) / ".hydra" / "config.yaml"

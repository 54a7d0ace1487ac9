"""Where a run's files are and which run they hold, known without torch (the entry point's checks use it before
anything heavy loads)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class ResumeTarget:
    run_dir: Path
    checkpoint: Path


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (`<run>/checkpoints/x.ckpt`), else the file's own directory."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


#: Root keys that say where a run writes, whether it resumes, or where its code may come from: not what it trains.
NOT_TRAINED = ("resume", "paths", "debug", "overwrite", "allowed_targets")
#: Keys added after runs were made, left out of the hash while unset: an interrupted run (or a sweep's completed
#: job) from before they existed keeps its hash, so it is still continued (kept) rather than refused (retrained).
UNSET_IS_ABSENT = (("callbacks",), ("logger", "extra"))


def config_hash(cfg: DictConfig) -> str:
    """A fingerprint of what a run trains (not where it writes or whether it resumes), kept in summary.json."""
    job = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NOT_TRAINED}
    for *parents, key in UNSET_IS_ABSENT:
        node = job
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(key) in (None, {}, []):
            node.pop(key, None)
    return hashlib.sha1(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()[:16]

"""Where a run's files are, known without torch (the entry point's checks use it before anything heavy loads)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ResumeTarget:
    run_dir: Path
    checkpoint: Path


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (`<run>/checkpoints/x.ckpt`), else the file's own directory."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent

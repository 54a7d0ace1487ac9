"""What Hydra (and the launcher) say about the job being run (False/None outside a Hydra app, e.g. in tests)."""
from __future__ import annotations

import os

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def process_rank() -> int:
    """This process's rank when Lightning (or Slurm) started several processes for one run, else 0. Read from the
    environment the way Lightning's rank_zero_only does, without importing it."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 0

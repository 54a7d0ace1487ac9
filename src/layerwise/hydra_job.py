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
    env = os.environ
    node = env.get("NODE_RANK") or env.get("GROUP_RANK")
    if not env.get("RANK") and env.get("LOCAL_RANK") and node:
        # Several nodes started by hand or by a launcher that sets no RANK (torchrun-style NODE_RANK + LOCAL_RANK):
        # LOCAL_RANK=0 on node 1 is not process 0. LOCAL_WORLD_SIZE, when set, makes it the global rank.
        return int(node) * int(env.get("LOCAL_WORLD_SIZE") or 1) + int(env["LOCAL_RANK"])
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if env.get(key):
            return int(env[key])
    return 0

"""What Hydra says about the job being run (False/None outside a Hydra app, e.g. in tests calling fit())."""
from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN

"""How many training processes a trainer config asks for, readable without importing torch or Lightning (the
config checks use it before anything heavy is imported)."""
from __future__ import annotations

#: trainer.strategy values and the process start method each means (Lightning's names).
START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


def devices_per_node(trainer_cfg) -> int | None:
    """Processes per node that `trainer.devices` asks for; None for `auto` / -1 on an accelerator that may be a
    GPU, whose count only torch can tell."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, str) and devices not in ("auto", "-1"):
        parts = [p for p in devices.split(",") if p.strip()]
        return len(parts) if "," in devices else int(devices)
    if devices in ("auto", -1, "-1"):
        return None if trainer_cfg.get("accelerator", "auto") in ("auto", "gpu", "cuda") else 1
    if isinstance(devices, int):
        return devices
    return len(list(devices))


def process_count(trainer_cfg, visible_gpus=None) -> int:
    """Processes of one run: devices per node x trainer.num_nodes. `visible_gpus()` answers for devices=auto
    (default: torch.cuda, imported only then)."""
    per_node = devices_per_node(trainer_cfg)
    if per_node is None:
        if visible_gpus is None:
            import torch

            def visible_gpus() -> int:
                return torch.cuda.device_count() if torch.cuda.is_available() else 0
        per_node = visible_gpus() or 1
    return per_node * int(trainer_cfg.get("num_nodes", 1) or 1)

"""Optimizers and LR schedulers from the `optimizer` config group (one pair per train group)."""
from __future__ import annotations

import torch

from layerwise.errors import ConfigError


def build_optimizer(params, cfg, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """`lr_scale` multiplies `cfg.lr` for a group that needs its own step size (DNI's synthesizers)."""
    params = list(params)
    lr = cfg.lr * lr_scale
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=bool(cfg.nesterov) and cfg.momentum > 0)
    if cfg.name in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ConfigError(f"optimizer={cfg.name!r} is not known; choose sgd, adam or adamw")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, max_epochs: int):
    """Stepped once per epoch by the training loop; None for a constant learning rate."""
    sched = cfg.scheduler
    name = sched.name
    if name in (None, "none", "constant"):
        return None
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=sched.step_size, gamma=sched.gamma)
    if name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(sched.milestones), gamma=sched.gamma)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, max_epochs), eta_min=sched.min_lr)
    raise ConfigError(f"optimizer.scheduler.name={name!r} is not known; choose none, step, multistep or cosine")

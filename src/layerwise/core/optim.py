"""Optimizers and LR schedulers from the `optimizer` config group (one pair per train group)."""
from __future__ import annotations

import torch

from layerwise.errors import ConfigError

#: Keys of an optimizer node that are layerwise's, not the optimizer class's.
OWN_KEYS = ("name", "scheduler")


def build_optimizer(params, cfg, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """`lr_scale` multiplies `cfg.lr` for a group that needs its own step size (DNI's synthesizers)."""
    params = list(params)
    if cfg.get("_target_") is not None:
        return _target_optimizer(params, cfg, lr_scale)
    lr = cfg.lr * lr_scale
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=bool(cfg.nesterov) and cfg.momentum > 0)
    if cfg.name in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ConfigError(f"optimizer={cfg.name!r} is not known; choose sgd, adam or adamw")


def _target_optimizer(params, cfg, lr_scale: float) -> torch.optim.Optimizer:
    """An optimizer named by `_target_` (conf/optimizer/rmsprop.yaml): Hydra builds the class as a partial, this
    group's parameters and learning rate complete it. Lists become tuples (betas), as torch's signatures say."""
    import inspect

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg, resolve=True)
    factory = instantiate({"_target_": node["_target_"], "_partial_": True})
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in node.items()
              if k not in OWN_KEYS and not (k.startswith("_") and k.endswith("_"))}
    params_of = inspect.signature(factory.func).parameters
    for name in [k for k, v in kwargs.items() if v is None and k in params_of]:
        if params_of[name].default is not None:  # the schema's null for an object default: the class's own
            del kwargs[name]
    lr = kwargs.pop("lr", None)
    if lr is None:  # the class's own default, scaled as a configured one would be
        default = params_of.get("lr")
        lr = default.default if default is not None and default.default is not inspect.Parameter.empty else None
    return factory(params, **kwargs) if lr is None else factory(params, lr=lr * lr_scale, **kwargs)


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

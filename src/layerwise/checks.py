"""Checks run before any data is loaded, so a typo costs seconds, not a queued GPU job."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from layerwise.errors import ConfigError


def _number(cfg: DictConfig, key: str, kind=float, low=None, high=None, allow_none=False):
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        want = "an integer" if kind is int else "a number"
        raise ConfigError(f"{key} must be {want}, got {value!r}; e.g. {key}={low if low is not None else 1}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{key}={value} is out of range; it must be {bounds}")


def check_config(cfg: DictConfig) -> None:
    _number(cfg, "seed", int, 0)
    _number(cfg, "data.batch_size", int, 1)
    _number(cfg, "data.subset_train", int, 1, allow_none=True)
    _number(cfg, "data.subset_test", int, 1, allow_none=True)
    _number(cfg, "data.image_size", int, 1, allow_none=True)
    _number(cfg, "trainer.max_epochs", int, 1)
    _number(cfg, "optimizer.lr", float, 1e-12)
    _number(cfg, "optimizer.weight_decay", float, 0)
    _number(cfg, "model.dropout", float, 0, 0.999)
    _number(cfg, "model.width_mult", float, 1e-3)
    splits = [k for k in ("num_modules", "split") if cfg.method.get(k) is not None]
    if splits and cfg.model.get("blocks") is not None:
        raise ConfigError(f"method.{splits[0]} and model.blocks both split the network into modules; "
                          f"set one of them (model.blocks=null)")
    if cfg.model.padding_mode not in ("zeros", "circular", "reflect", "replicate"):
        raise ConfigError(f"model.padding_mode={cfg.model.padding_mode!r} is not known; use zeros or circular")
    check_activation(cfg)


def check_activation(cfg: DictConfig) -> None:
    """Refuse a zero-derivative activation (sign, step) with a rule that would backpropagate through it.

    Only then is the rule built (cheap: it reads its options), since the answer can depend on them (DFA's
    injection point).
    """
    from layerwise.methods import build_rule
    from layerwise.models import ZERO_DERIVATIVE_ACTIVATIONS

    activation = cfg.model.get("activation")
    if activation not in ZERO_DERIVATIVE_ACTIVATIONS:
        return
    rule = build_rule(cfg.method)
    if rule.zero_derivative_activations == "refuse":
        raise ConfigError(f"model.activation={activation} has zero derivative, so method={cfg.method.name} "
                          f"cannot train through it; use model.activation=relu, or method=dfa method.injection=pre")


def check_device(trainer_cfg: DictConfig) -> None:
    import torch

    if trainer_cfg.accelerator not in ("gpu", "cuda"):
        return
    devices = trainer_cfg.devices
    wanted = [int(d) for d in devices] if not isinstance(devices, (int, str)) else [0]
    if not torch.cuda.is_available():
        raise ConfigError(f"GPU cuda:{wanted[0]} was requested (trainer.accelerator=gpu) but torch sees no CUDA GPU; "
                          "use --device cpu (trainer.accelerator=cpu), or check CUDA_VISIBLE_DEVICES and drivers")
    count = torch.cuda.device_count()
    missing = [d for d in wanted if d >= count]
    if missing:
        raise ConfigError(f"GPU cuda:{missing[0]} was requested but only {count} GPU(s) are visible; "
                          f"use --device cuda:0 .. cuda:{count - 1}")

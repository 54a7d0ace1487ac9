"""Checks run before any data is loaded, so a typo costs seconds, not a queued GPU job.

`check_config`: the typed schema (layerwise.config.schema: types, unknown keys, ranges, choices, cross-field rules of
every group and rule, the `_target_` allowlist) and the zero-derivative activation check, all without torch (the CLI
runs them before torch is imported); `check_device` (torch) asks the machine.
"""
from __future__ import annotations

from omegaconf import DictConfig

from layerwise.config.schema import validate
from layerwise.errors import ConfigError


def check_config(cfg: DictConfig) -> None:
    typed = validate(cfg)
    check_activation(cfg, typed.method)
    check_device_loader_processes(cfg)


def check_activation(cfg: DictConfig, options=None) -> None:
    """Refuse a zero-derivative activation (sign, step) with a rule that would backpropagate through it.

    `options`: the checked method options (validate's); the answer can depend on them (DFA's injection point). A
    rule of layerwise's answers from them (`RuleOptions.zero_derivative_activations`), without being built; a
    user's rule (its module already imported for its options) is built, so a `zero_derivative_activations` set
    on its class counts.
    """
    from layerwise.models.options import ZERO_DERIVATIVE_ACTIVATIONS
    from layerwise.rules import build_rule, package_rules

    activation = cfg.model.get("activation")
    if activation not in ZERO_DERIVATIVE_ACTIVATIONS:
        return
    method = cfg.method
    builtin = not method.get("_target_") and str(method.get("rule") or method.get("name")) in package_rules()
    if builtin and options is not None and hasattr(options, "zero_derivative_activations"):
        policy = options.zero_derivative_activations()
    else:
        policy = build_rule(method).zero_derivative_activations
    if policy == "refuse":
        raise ConfigError(f"model.activation={activation} has zero derivative, so method={cfg.method.name} "
                          f"cannot train through it; use model.activation=relu, or method=dfa method.injection=pre")


def check_device_loader_processes(cfg: DictConfig) -> None:
    """data.loader=device holds the whole dataset on one device and does not shard it: refused with several
    training processes (devices x nodes) here, before any data is loaded. torch is imported only to count the GPUs
    of trainer.devices=auto."""
    from layerwise.parallel.processes import process_count

    if cfg.data.get("loader") != "device" or cfg.trainer.get("pipeline"):
        return
    processes = process_count(cfg.trainer)
    if processes > 1:
        raise ConfigError(f"data.loader=device keeps the data on one device and does not shard it, but this run has "
                          f"{processes} training processes (trainer.devices x trainer.num_nodes); use "
                          f"data.loader=standard")


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

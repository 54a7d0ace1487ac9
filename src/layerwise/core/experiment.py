"""Data module, network, rule and LightningModule from a config: what the trainer and the pipeline both build."""
from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig

from layerwise.core.layout import config_hash  # noqa: F401  (re-exported)
from layerwise.core.module import LayerwiseModule
from layerwise.core.resources import check_network_fits
from layerwise.data import ImageDataModule
from layerwise.models import build_network
from layerwise.rules import build_rule


def run_identity(cfg: DictConfig) -> dict:
    """What summary.json and checkpoints say a run is."""
    return {"name": str(cfg.name), "method": str(cfg.method.name), "model": str(cfg.model.name),
            "data": str(cfg.data.name), "seed": int(cfg.seed)}


def _training_device(trainer_cfg: DictConfig) -> torch.device:
    """The device this process trains on (data.loader=device keeps the dataset there)."""
    wants_gpu = trainer_cfg.accelerator in ("gpu", "cuda") or (trainer_cfg.accelerator == "auto"
                                                               and torch.cuda.is_available())
    if not wants_gpu:
        return torch.device("cpu")
    devices = trainer_cfg.devices
    index = int(devices[0]) if not isinstance(devices, (int, str)) else 0
    return torch.device("cuda", index)


def build_experiment(cfg: DictConfig):
    """Data module, network, rule and LightningModule for `cfg` (no trainer)."""
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    rule = build_rule(cfg.method)  # rejects bad rule options before any data is loaded
    device = _training_device(cfg.trainer)
    datamodule = ImageDataModule(cfg.data, pin_memory=device.type == "cuda", device=device, seed=int(cfg.seed))
    datamodule.setup("fit")
    info = datamodule.info
    check_network_fits(cfg, info.spec, device)  # on the meta device: a too-large model fails here, in one line
    net = build_network(cfg.model, info.spec)
    example = datamodule.example_batch()
    rule.setup(net, example, info.num_classes)
    if hasattr(rule, "set_input_normalization"):  # a rule whose target is the raw image (infopro)
        rule.set_input_normalization(str(cfg.data.normalize), info.mean, info.std)
    module = LayerwiseModule(net, rule, cfg.optimizer, info.num_classes, example,
                             max_epochs=int(cfg.trainer.max_epochs), grad_clip=cfg.trainer.grad_clip,
                             memory_batches=int(cfg.trainer.memory_batches),
                             nonfinite=str(cfg.trainer.get("nonfinite", "stop")),
                             channels_last=bool(cfg.trainer.get("channels_last", False)),
                             compile=cfg.trainer.get("compile", False),
                             compile_backend=str(cfg.trainer.get("compile_backend", "inductor")))
    return datamodule, module

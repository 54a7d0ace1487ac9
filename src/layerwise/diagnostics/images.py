"""Image grids a learning rule wants to show (e.g. SSL reconstructions), for the first test batch."""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from torchvision.utils import save_image

from layerwise.rules.base import evaluating


class RuleImages(L.Callback):
    """Saves `rule.images(...)` as `images/<name>_epoch<E>.png` in the run dir and logs them to wandb.

    Runs after the last validation epoch, and every `every_n_epochs` epochs when that is set.
    """

    def __init__(self, out_dir: Path, every_n_epochs: int | None = None, max_images: int = 8):
        self.out_dir, self.every, self.max_images = Path(out_dir), every_n_epochs, max_images
        self._batch = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and dataloader_idx == 0:
            self._batch = batch[0][:self.max_images]

    def _due(self, trainer) -> bool:
        done = trainer.current_epoch + 1
        return done >= trainer.max_epochs or bool(self.every and done % self.every == 0)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or self._batch is None or not self._due(trainer) or not trainer.is_global_zero:
            return
        with evaluating(pl_module.net):
            grids = pl_module.rule.images(pl_module.net, self._batch)
        if not grids:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        epoch = trainer.current_epoch + 1
        for name, grid in grids.items():
            path = self.out_dir / f"{name}_epoch{epoch:03d}.png"
            tmp = path.with_suffix(".tmp.png")
            save_image(grid, tmp)
            os.replace(tmp, path)
            for lg in trainer.loggers:
                if isinstance(lg, WandbLogger):
                    lg.log_image(key=f"images/{name}", images=[grid], caption=[f"epoch {epoch}: targets / outputs"])

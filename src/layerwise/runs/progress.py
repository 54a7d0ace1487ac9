"""The training progress bar: Lightning's rich bar, numbered and placed like the rest of the console."""
from __future__ import annotations

import sys

from lightning.pytorch.callbacks import RichProgressBar

from layerwise.runlog import use_color


class EpochProgressBar(RichProgressBar):
    """Epochs counted 1..max_epochs, as the epoch log lines and summary.json's `epochs_done` count them (Lightning's
    bar says "Epoch 0/0" for a one-epoch run), and drawn on stderr next to the log: `trainer.progress_bar=auto`
    shows it when stderr is a terminal, and stdout may be piped to a file that should hold only the runs table."""

    def __init__(self, leave: bool = False):
        super().__init__(leave=leave, console_kwargs={"stderr": True,
                                                      "color_system": "auto" if use_color(sys.stderr) else None})

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:  # -1: no limit
            description += f"/{self.trainer.max_epochs}"
        # As Lightning does: as wide as the validation bar's label, so the two do not flicker.
        return f"{description:{len(self.validation_description)}}"

"""metrics.csv that survives a resume: Lightning's CSV writer deletes an existing metrics.csv when it starts."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger


class ContinuedCSVLogger(CSVLogger):
    """A CSVLogger that first keeps the rows an earlier part of the run logged up to epoch `keep_through_epoch`
    (the resumed checkpoint's epoch); later rows are dropped, as the resumed run logs them again."""

    def __init__(self, *args, keep_through_epoch: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_through_epoch = keep_through_epoch

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        rows = []
        if path.is_file():
            with open(path, newline="") as f:
                rows = [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
        with warnings.catch_warnings():  # "Previous log files ... will be deleted": they are kept, see below
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = super().experiment  # deletes metrics.csv
        writer.metrics[:0] = [r for r in rows if int(float(r.get("epoch", 0))) <= self.keep_through_epoch]
        return writer

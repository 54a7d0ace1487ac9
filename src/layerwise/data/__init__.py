"""Datasets and the data module.

options.py: every dataset's options (`DATA_OPTIONS`, `data_options`, `DATASETS`), torch-free; datasets.py: the
loaders (digits, synthetic, npz, image folders, torchvision's sets), each returning a train set, a test set and its
`DataInfo`; extra.py: SVHN, STL-10, ImageNet, Imagenette, ImageNet-32 in their published formats; checks.py: the
checks that turn a bad file into one line; module.py: `ImageDataModule`; sampling.py and device_loader.py: the
exactly resumable training order and the on-device loader.

Importing this package imports no torch: the names below that need it load their module on first use (PEP 562).
"""
from __future__ import annotations

import importlib

from layerwise.data.options import (
    DATA_OPTIONS,
    DATASETS,
    TORCHVISION_SETS,
    DataOptions,
    check_val_fraction,
    data_options,
)

#: name -> the module (torch) that defines it, imported when the name is first read; LOADERS from extra.py, which
#: registers its sets in it.
_LAZY = {"LOADERS": "extra", "DataInfo": "datasets", "TensorImages": "datasets", "ImageDataModule": "module",
         "build_transform": "module", "split_indices": "module"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DATASETS", "DATA_OPTIONS", "DataOptions", "data_options", "LOADERS", "TORCHVISION_SETS", "DataInfo",
           "ImageDataModule", "TensorImages", "build_transform", "check_val_fraction", "split_indices"]

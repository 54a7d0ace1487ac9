"""Datasets and the data module.

options.py: every dataset's options (`DATA_OPTIONS`, `data_options`, `DATASETS`), torch-free; datasets.py: the
loaders (digits, synthetic, npz, image folders, torchvision's sets), each returning a train set, a test set and its
`DataInfo`; extra.py: SVHN, STL-10, ImageNet, Imagenette, ImageNet-32 in their published formats; checks.py: the
checks that turn a bad file into one line; module.py: `ImageDataModule`; sampling.py and device_loader.py: the
exactly resumable training order and the on-device loader.

Importing this package imports no torch: the names below that need it load their module on first use (PEP 562).
"""
from __future__ import annotations

from layerwise.data.options import (
    DATA_OPTIONS,
    DATASETS,
    TORCHVISION_SETS,
    DataOptions,
    check_val_fraction,
    data_options,
)
from layerwise.lazy import lazy_names

#: name -> the module (torch) that defines it, imported when the name is first read; LOADERS from extra.py, which
#: registers its sets in it.
_LAZY = {"LOADERS": "extra", "DataInfo": "datasets", "TensorImages": "datasets", "ImageDataModule": "module",
         "build_transform": "module", "split_indices": "module"}


__getattr__ = lazy_names(__name__, globals(), _LAZY)


__all__ = ["DATASETS", "DATA_OPTIONS", "DataOptions", "data_options", "LOADERS", "TORCHVISION_SETS", "DataInfo",
           "ImageDataModule", "TensorImages", "build_transform", "check_val_fraction", "split_indices"]

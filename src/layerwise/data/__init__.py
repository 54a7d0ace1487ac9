"""Datasets and the data module.

datasets.py: the loaders (digits, synthetic, npz, image folders, torchvision's sets), each returning a train set,
a test set and its `DataInfo`; extra.py: SVHN, STL-10, ImageNet, Imagenette, ImageNet-32 in their published
formats; checks.py: the checks that turn a bad file into one line; module.py: `ImageDataModule`; sampling.py and
device_loader.py: the exactly resumable training order and the on-device loader.
"""
from __future__ import annotations

import layerwise.data.extra  # noqa: F401  (registers svhn, stl10, imagenet, imagenette, imagenet32 in LOADERS)
from layerwise.data.datasets import (
                                     DATA_OPTIONS,
                                     LOADERS,
                                     TORCHVISION_SETS,
                                     DataInfo,
                                     DataOptions,
                                     TensorImages,
                                     data_options,
)
from layerwise.data.module import ImageDataModule, build_transform, check_val_fraction, split_indices

__all__ = ["DATA_OPTIONS", "DataOptions", "data_options", "LOADERS", "TORCHVISION_SETS", "DataInfo", "ImageDataModule",
           "TensorImages", "build_transform", "check_val_fraction", "split_indices"]

"""A dataset of the lab's: `data._target_` names a function cfg -> (train set, test set, DataInfo)."""
from dataclasses import dataclass

import torch

from layerwise.data import DataInfo, DataOptions, TensorImages
from layerwise.options import in_range


@dataclass
class StripesOptions(DataOptions):
    n_train: int = 512
    n_test: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        in_range(self, "n_train", 1, example=512)
        in_range(self, "n_test", 1, example=128)


def stripes(cfg):
    """8x8 grey images, each with one bright row (class 0-3) or column (class 4-7), plus noise."""
    gen = torch.Generator().manual_seed(int(cfg.seed))

    def make(n: int) -> TensorImages:
        labels = torch.randint(8, (n,), generator=gen)
        images = 0.2 * torch.rand(n, 1, 8, 8, generator=gen)
        for i, label in enumerate(labels.tolist()):
            line = 2 * (label % 4)
            if label < 4:
                images[i, 0, line] += 0.8
            else:
                images[i, 0, :, line] += 0.8
        return TensorImages(images, labels)

    info = DataInfo(channels=1, size=8, num_classes=8, mean=(0.5,), std=(0.5,), from_pil=False)
    return make(int(cfg.n_train)), make(int(cfg.n_test)), info


stripes.Options = StripesOptions

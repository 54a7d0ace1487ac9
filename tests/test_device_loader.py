"""data.loader=device: the same batches as the standard v2 pipeline, built a batch at a time on the device."""
import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image
from torchvision.transforms import v2

from conftest import TINY, compose_cfg, fit_cfg
from layerwise.config.checks import check_config
from layerwise.data import ImageDataModule
from layerwise.data.device_loader import BatchAugment
from layerwise.data.sampling import AUGMENT, mix_seed
from layerwise.errors import ConfigError

AUGMENTED = ["data.augment.random_crop=true", "data.augment.horizontal_flip=true", "data.batch_size=32"]


class FakeCIFAR10(tvd.CIFAR10):
    """torchvision's CIFAR10 (PIL samples, uint8 HWC `.data`) on random pixels: no files needed."""

    def __init__(self, root, train=True, download=False, transform=None, target_transform=None):
        rng = np.random.default_rng(int(train))
        n = 70 if train else 40
        self.root, self.train, self.transform, self.target_transform = root, train, transform, target_transform
        self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = [k % 10 for k in range(n)]


@pytest.fixture
def fake_cifar(monkeypatch):
    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)


def datamodule(overrides, **kwargs):
    dm = ImageDataModule(compose_cfg(overrides).data, **kwargs)
    dm.setup()
    return dm


def v2_with_params(transform: v2.Compose, x, top: int, left: int, flip: bool) -> torch.Tensor:
    """The standard path's pipeline on one sample, with its random crop offsets and flip given."""
    for step in transform.transforms:
        if isinstance(step, v2.RandomCrop):
            pad_left, pad_right, pad_top, pad_bottom = step.padding
            height, width = step.size
            x = step.transform(x, dict(needs_crop=True, top=top, left=left, height=height, width=width,
                                       needs_pad=True, padding=[pad_left, pad_top, pad_right, pad_bottom]))
        elif isinstance(step, v2.RandomHorizontalFlip):
            x = step.transform(x, {}) if flip else x
        else:
            x = step(x)
    return x


CASES = {  # float tensor set (digits) and a PIL set with uint8 pixels, resized (fake CIFAR-10)
    "digits": ["data=digits", "data.normalize=gaussian", "data.subset_train=100"],
    "cifar_resized": ["data=cifar10", "data.image_size=24", "data.normalize=gaussian"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_device_batch_is_the_v2_pipeline_with_the_same_offsets_and_flips(case, fake_cifar):
    overrides = [*CASES[case], *AUGMENTED, "data.loader=device"]
    dm = datamodule(overrides, seed=5)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    x, y = next(iter(loader))
    # The device loader's draws for batch 0 of epoch 2, in its order: tops, lefts, flips.
    gen = torch.Generator().manual_seed(mix_seed(5, AUGMENT, 2, 0))
    pad, size = int(dm.cfg.augment.crop_padding), dm.info.size
    top, left = BatchAugment.offsets(len(x), 2 * pad, 2 * pad, gen, "cpu")
    flip = torch.rand(len(x), generator=gen) < 0.5
    assert 0 < int(flip.sum()) < len(x) and len(set(top.tolist())) > 3  # the draws do vary per sample
    order = loader.sampler.order()[: len(x)].tolist()
    base = dm.train_set.dataset if hasattr(dm.train_set, "indices") else dm.train_set
    indices = dm.train_set.indices if hasattr(dm.train_set, "indices") else range(len(base))
    tensors = hasattr(base, "images")  # digits: float tensors; CIFAR: uint8 arrays, loaded as PIL images
    for k, i in enumerate(order):
        j = indices[i]
        sample = base.images[j] if tensors else Image.fromarray(base.data[j])
        expected = v2_with_params(base.transform, sample, int(top[k]), int(left[k]), bool(flip[k]))
        assert expected.shape == (dm.info.channels, size, size)
        assert torch.equal(x[k], expected), (case, k)
        assert int(y[k]) == int(base.labels[j] if tensors else base.targets[j])


def test_crop_offsets_are_uniform_over_the_v2_range():
    crop = v2.RandomCrop(16, padding=3)
    torch.manual_seed(0)
    standard = {crop.make_params([torch.zeros(1, 16, 16)])["top"] for _ in range(400)}
    top, left = BatchAugment.offsets(70_000, 6, 6, torch.Generator().manual_seed(0), "cpu")
    assert set(top.tolist()) == set(left.tolist()) == standard == set(range(7))
    counts = torch.bincount(top, minlength=7).double()
    assert float((counts / counts.mean() - 1).abs().max()) < 0.05  # 10,000 expected each


@pytest.mark.parametrize("case", sorted(CASES))
def test_eval_batches_equal_the_standard_loaders(case, fake_cifar):
    overrides = [*CASES[case], *AUGMENTED, "data.val_fraction=0.2"]
    standard, device = datamodule(overrides), datamodule([*overrides, "data.loader=device"])
    s_loaders, d_loaders = standard.val_dataloader(), device.val_dataloader()
    assert len(s_loaders) == len(d_loaders) == 2  # dataloader 0 = test, 1 = validation split
    for s_loader, d_loader in zip(s_loaders, d_loaders):
        assert len(s_loader) == len(d_loader)
        pairs = list(zip(s_loader, d_loader, strict=True))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)


@pytest.mark.parametrize("case, float_copy", [(case, True) for case in sorted(CASES)] + [("cifar_resized", False)])
def test_the_standard_loader_slices_in_memory_batches_exactly_as_per_sample_loading(case, float_copy, fake_cifar,
                                                                                   monkeypatch):
    """data.loader=standard without augmentation: batches sliced from the arrays (the default for in-memory sets)
    equal the per-sample DataLoader's (data.num_workers=0 keeps that path), for training and both evaluations;
    uint8 images converted to float once, or (over FLOAT_COPY_LIMIT) a batch at a time."""
    from layerwise.data import device_loader

    if not float_copy:
        monkeypatch.setattr(device_loader, "FLOAT_COPY_LIMIT", 0)
    overrides = [*CASES[case], "data.batch_size=16", "data.val_fraction=0.2", "data.augment.random_crop=false",
                 "data.augment.horizontal_flip=false"]
    sliced, per_sample = datamodule(overrides, seed=3), datamodule([*overrides, "data.num_workers=0"], seed=3)
    assert type(sliced.train_dataloader()).__name__ == "DeviceLoader"
    assert type(per_sample.train_dataloader()).__name__ == "DataLoader"
    pairs = [(sliced.train_dataloader(), per_sample.train_dataloader()),
             *zip(sliced.val_dataloader(), per_sample.val_dataloader(), strict=True)]
    for a_loader, b_loader in pairs:
        a_loader.sampler.set_epoch(2) if hasattr(a_loader.sampler, "set_epoch") else None
        b_loader.sampler.set_epoch(2) if hasattr(b_loader.sampler, "set_epoch") else None
        batches = list(zip(a_loader, b_loader, strict=True))
        assert batches and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in batches)
        assert a_loader.data.images.is_floating_point() == float_copy
    augmented = datamodule([*overrides, *AUGMENTED])
    assert type(augmented.train_dataloader()).__name__ == "DataLoader"  # random steps: seeded per sample


def test_a_set_without_arrays_and_targets_keeps_the_per_sample_loader():
    """A user's own loader (data._target_) may return any Dataset: without CIFAR-like arrays it is loaded per sample."""
    from torch.utils.data import TensorDataset

    from layerwise.data.device_loader import batches_exactly

    assert not batches_exactly(TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)))


def test_train_batches_use_the_standard_order_and_labels():
    overrides = ["data=digits", "data.subset_train=200", *AUGMENTED]
    standard, device = datamodule(overrides, seed=1), datamodule([*overrides, "data.loader=device"], seed=1)
    s_batches, d_batches = list(standard.train_dataloader()), list(device.train_dataloader())
    assert len(standard.train_dataloader()) == len(device.train_dataloader()) == len(s_batches) == 7
    assert [b[1].tolist() for b in s_batches] == [b[1].tolist() for b in d_batches]
    assert all(a[0].shape == b[0].shape for a, b in zip(s_batches, d_batches))


@pytest.mark.parametrize("override, message", [
    ("data.augment.random_erasing=true", "does not implement data.augment.random_erasing; set data.loader=standard"),
    ("data.augment.random_resized_crop=true", "does not implement data.augment.random_resized_crop"),
    ("data.loader=gpu", "data.loader='gpu' is not known; choose standard"),
])
def test_what_the_device_loader_cannot_do_is_refused_before_loading(override, message):
    with pytest.raises(ConfigError, match=message):
        ImageDataModule(compose_cfg(["data=cifar10", "data.loader=device", override]).data)


def test_the_device_loader_is_refused_with_several_processes_before_any_data_is_loaded():
    """data.loader=device does not shard: several devices or nodes are refused by the config checks."""
    base = ["data=cifar10", "data.root=/nowhere", "data.loader=device", "trainer.accelerator=cpu", "logger=none"]
    for more in (["trainer.devices=2"], ["++trainer.num_nodes=2"]):
        with pytest.raises(ConfigError, match="data.loader=device keeps the data on one device"):
            check_config(compose_cfg([*base, *more]))
    check_config(compose_cfg(base))  # one process: fine (the data itself is never looked at)


def test_image_folder_is_refused():
    with pytest.raises(ConfigError, match="cannot hold data=image_folder .* use data=npz"):
        ImageDataModule(compose_cfg(["data=image_folder", "data.root=/nowhere", "data.loader=device"]).data)


def test_lightning_trains_and_validates_from_the_device_loader(tmp_path):
    cfg = [*TINY, "data.loader=device", "data.val_fraction=0.25", "trainer.max_epochs=2",
           "trainer.limit_train_batches=2", "data.augment.random_crop=true", "data.augment.horizontal_flip=true",
           "model=mlp", "model.widths=[32]", "model.head_hidden=[]"]
    summary = fit_cfg(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["epochs_done"] == 2
    assert summary.get("best_val_acc") is not None and summary.get("test_acc") is not None

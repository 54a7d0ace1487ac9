"""Datasets and augmentations: offline sets, users' own data, switches, and clear errors."""
import numpy as np
import pytest
import torch
from loguru import logger
from PIL import Image

from conftest import compose_cfg
from layerwise.data import DataInfo, ImageDataModule, build_transform
from layerwise.errors import DataError


def datamodule(overrides):
    dm = ImageDataModule(compose_cfg(overrides).data)
    dm.setup()
    return dm


def test_digits_fixed_split_resized_to_the_model_input():
    dm = datamodule(["data=digits", "data.image_size=16"])
    assert (len(dm.train_set), len(dm.test_set)) == (1437, 360)
    x, y = dm.train_set[0]
    assert x.shape == (1, 16, 16) and 0 <= int(y) < 10
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0  # minus_one_one normalisation
    again = datamodule(["data=digits", "data.image_size=16"])
    assert torch.equal(dm.test_set[5][0], again.test_set[5][0])


def test_synthetic_is_deterministic_by_seed_and_configurable():
    small = ["data=synthetic", "data.n_train=32", "data.n_test=8", "data.num_classes=4", "data.channels=1",
             "data.image_size=12"]
    a, b, c = datamodule(small), datamodule(small), datamodule([*small, "data.seed=1"])
    assert a.info.num_classes == 4 and a.train_set[0][0].shape == (1, 12, 12)
    assert torch.equal(a.train_set.images, b.train_set.images)
    assert not torch.equal(a.train_set.images, c.train_set.images)


def test_subsets_limit_samples():
    dm = datamodule(["data=digits", "data.subset_train=100", "data.subset_test=50"])
    assert (len(dm.train_set), len(dm.test_set)) == (100, 50)


def test_npz_user_arrays_nhwc_uint8(tmp_path):
    path = tmp_path / "mine.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 255, (20, 10, 10, 3), dtype=np.uint8), y_train=np.arange(20) % 3,
             x_test=rng.integers(0, 255, (6, 10, 10, 3), dtype=np.uint8), y_test=np.arange(6) % 3)
    dm = datamodule(["data=npz", f"data.path={path}"])
    assert dm.info.num_classes == 3 and dm.train_set[0][0].shape == (3, 10, 10)


def test_truncated_npz_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="not a readable .npz"):
        datamodule(["data=npz", f"data.path={path}"])


def test_image_folder(tmp_path):
    for split in ("train", "test"):
        for label, colour in (("cat", 0), ("dog", 255)):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for k in range(3):
                Image.new("RGB", (20, 24), (colour, k, 0)).save(folder / f"{k}.png")
    dm = datamodule(["data=image_folder", f"data.root={tmp_path}", "data.image_size=16"])
    x, y = dm.train_set[0]
    assert dm.info.num_classes == 2 and x.shape == (3, 16, 16) and x.dtype == torch.float32


def test_augmentation_switches():
    cfg = compose_cfg(["data=cifar10", "data.augment.random_erasing=true", "data.normalize=gaussian"]).data
    info = DataInfo(3, 32, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), from_pil=False)
    names = [type(t).__name__ for t in build_transform(cfg, info, train=True).transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "Normalize", "RandomErasing"]
    assert [type(t).__name__ for t in build_transform(cfg, info, train=False).transforms] == ["Normalize"]
    crop = build_transform(cfg, info, train=True).transforms[0]
    assert crop.padding == [4, 4, 4, 4] and list(crop.size) == [32, 32]
    resized = compose_cfg(["data=cifar10", "data.augment.random_resized_crop=true"]).data
    assert type(build_transform(resized, info, True).transforms[0]).__name__ == "RandomResizedCrop"


def test_no_transform_at_all_is_the_identity():
    cfg = compose_cfg(["data=digits", "data.normalize=none"]).data
    info = DataInfo(1, 8, 10, (0.5,), (0.25,), from_pil=False)
    x = torch.rand(1, 8, 8)
    assert torch.equal(build_transform(cfg, info, train=False)(x), x)


def test_missing_dataset_offline_names_where_to_put_it(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def refuse(*args, download=False, **kwargs):
        if download:
            raise OSError("network is unreachable")
        raise RuntimeError("Dataset not found or corrupted.")

    monkeypatch.setattr(tvd, "CIFAR10", refuse)
    with pytest.raises(DataError, match=r"cifar-10-batches-py and could not be downloaded .*data=digits"):
        datamodule(["data=cifar10", f"data.root={tmp_path}"])


def _folder(root, layout, colours, n=3):
    for split, classes in layout.items():
        for label in classes:
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                Image.new("RGB", (10, 10), colours[label]).save(root / split / label / f"{k}.png")
    return root


COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "emu": (0, 255, 0)}


@pytest.mark.parametrize("split, test_classes", [("test", ["dog"]), ("test", ["cat", "emu"]), ("val", ["emu"])])
def test_image_folder_splits_share_the_training_class_numbering(tmp_path, split, test_classes):
    """ImageFolder numbers each split's own folders; a test/ (or val/) lacking a class used to shift every
    later label."""
    root = _folder(tmp_path, {"train": ["cat", "dog", "emu"], split: test_classes}, COLOURS)
    messages = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    try:
        dm = datamodule(["data=image_folder", f"data.root={root}", "data.image_size=8"])
    finally:
        logger.remove(sink)
    train_index = {"cat": 0, "dog": 1, "emu": 2}
    assert dm.train_set.class_to_idx == dm.test_set.class_to_idx == train_index and dm.info.num_classes == 3
    assert sorted(set(dm.test_set.targets)) == sorted(train_index[c] for c in test_classes)
    for path, label in dm.test_set.samples:
        assert label == train_index[path.split("/")[-2]]
    absent = sorted(set(train_index) - set(test_classes))
    assert len(messages) == 1 and f"has no images of class(es) {', '.join(absent)}" in messages[0]


def test_gaussian_statistics_are_the_training_images(tmp_path, monkeypatch):
    """normalize=gaussian: the per-channel mean/std of the training set for every dataset (image folders used
    0.5/0.5), logged once with where they come from."""
    import layerwise.data.datasets as data_module

    # Half red, half blue training images: mean (0.5, 0, 0.5), std (0.5, 0, 0.5); the test images do not count.
    root = _folder(tmp_path, {"train": ["cat", "dog"], "test": ["cat"]}, COLOURS, n=4)
    messages = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="INFO")
    try:
        folder = datamodule(["data=image_folder", f"data.root={root}", "data.image_size=8", "data.normalize=gaussian"])
    finally:
        logger.remove(sink)
    assert folder.info.mean == pytest.approx((0.5, 0.0, 0.5)) and folder.info.std == pytest.approx((0.5, 0.0, 0.5),
                                                                                                   abs=1e-6)
    assert folder.test_set[0][0][0].mean() == pytest.approx(1.0)  # red (1 - 0.5) / 0.5 in the red channel
    stats_lines = [m for m in messages if "normalize=gaussian" in m]
    assert stats_lines == ["data image_folder: normalize=gaussian with per-channel mean (0.5000, 0.0000, 0.5000), "
                           "std (0.5000, 0.0000, 0.5000) (all 8 training images)"]
    # A bounded, seeded sample: the same images for the same data.seed.
    monkeypatch.setattr(data_module, "FOLDER_STATS_IMAGES", 3)
    first, again = (datamodule(["data=image_folder", f"data.root={root}", "data.image_size=8",
                                "data.normalize=gaussian"]).info for _ in range(2))
    assert first.stats_from == "3 of 8 (chosen by data.seed) training images" and first.mean == again.mean
    # The in-memory sets: statistics of the training images as the network gets them (resized, before subsets).
    for overrides in (["data=digits", "data.image_size=12"], ["data=synthetic", "data.n_train=64", "data.n_test=8"]):
        dm = ImageDataModule(compose_cfg([*overrides, "data.normalize=gaussian"]).data)
        train, _, info = data_module.LOADERS[dm.cfg.name](dm.cfg)
        assert info.mean == pytest.approx(train.images.mean(dim=(0, 2, 3)).tolist())
        assert info.std == pytest.approx(train.images.std(dim=(0, 2, 3)).tolist())

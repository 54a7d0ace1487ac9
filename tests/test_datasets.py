"""The field's other datasets (svhn, stl10, kmnist, imagenet, imagenette, imagenet32), each on small fake files in
its real on-disk format: shapes, label numbering, pixel orientation, the transforms, and the one-line refusal
when the files are missing. Two representatives train one tiny step through the CLI.
"""
import gzip
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_cfg, read_summary, run_cli, run_dirs
from layerwise.data import ImageDataModule
from layerwise.errors import ConfigError, DataError
from layerwise.models import InputSpec


def datamodule(name: str, root: Path, *overrides: str) -> ImageDataModule:
    cfg = compose_cfg([f"data={name}", f"data.root={root}", "data.download=false", *overrides])
    dm = ImageDataModule(cfg.data)
    dm.setup()
    return dm


def raw(ds, i):
    """Sample i of the underlying set as stored (uint8 C,H,W), without transforms."""
    return torch.as_tensor(ds.data[i]).permute(2, 0, 1), ds.targets[i]


# ---------------------------------------------------------------------------------------------------- fakes
def fake_svhn(root: Path, n_train: int = 6, n_test: int = 4) -> Path:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        x[0, 1, 2, 0] = 7  # row 0, column 1, blue, first image: checks the axis order
        y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)  # 1..10, 10 = digit 0
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
    return root


def fake_stl10(root: Path, n_train: int = 6, n_test: int = 4) -> Path:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("test", n_test)):
        rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    return root


def _idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, 0x08 = ubyte, rank), big-endian int32 sizes, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(data)
    with gzip.open(str(path) + ".gz", "wb") as f:  # the downloaded archive next to it, as torchvision leaves them
        f.write(data)


def fake_kmnist(root: Path, n_train: int = 6, n_test: int = 4) -> Path:
    folder = root / "KMNIST" / "raw"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def fake_image_tree(folder: Path, classes=("n01440764", "n02102040"), n: int = 3) -> Path:
    for split in ("train", "val"):
        for k, wnid in enumerate(classes):
            (folder / split / wnid).mkdir(parents=True)
            for i in range(n):
                # Not square, and one grayscale JPEG: ImageNet has both.
                mode, colour = ("L", 40 * i) if i == 0 else ("RGB", (200 * k, 30 * i, 100))
                Image.new(mode, (40, 30), colour).save(folder / split / wnid / f"{wnid}_{i}.JPEG")
    return folder


def fake_imagenet32(folder: Path, per_batch: int = 3) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    names = [f"train_data_batch_{k}" for k in range(1, 11)] + ["val_data"]
    for k, name in enumerate(names):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        data[0, :1024] = 255  # first image of each batch: red plane saturated
        data[0, 1024:] = 0
        labels = [(k * per_batch + i) % 1000 + 1 for i in range(per_batch)]  # 1-based
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    return folder


# ------------------------------------------------------------------------------------------------ loaders
def test_svhn_reads_the_mat_files(tmp_path):
    dm = datamodule("svhn", fake_svhn(tmp_path), "data.normalize=gaussian")
    assert dm.info.spec == InputSpec(3, 32, 10) and len(dm.train_set) == 6 and len(dm.test_set) == 4
    train = dm.train_set
    assert train.targets == [1, 2, 3, 4, 5, 6] and raw(dm.test_set, 3)[1] == 4
    assert raw(train, 0)[0][2, 0, 1] == 7  # (H, W, C, N) -> (C, H, W)
    assert dm.info.mean == (0.4377, 0.4438, 0.4728)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_svhn_label_ten_is_digit_zero(tmp_path):
    dm = datamodule("svhn", fake_svhn(tmp_path, n_train=10))
    assert dm.train_set.targets[9] == 0 and sorted(dm.train_set.targets) == list(range(10))


def test_stl10_reads_the_binary_files_as_torchvision_does(tmp_path):
    import torchvision.datasets as tvd

    root = fake_stl10(tmp_path)
    dm = datamodule("stl10", root)
    assert dm.info.spec == InputSpec(3, 96, 10) and len(dm.train_set) == 6 and len(dm.test_set) == 4
    assert dm.train_set.targets == [0, 1, 2, 3, 4, 5]  # files hold 1..10
    # torchvision's own parser (without its MD5 check) gives the same pixels in the same orientation.
    reader = tvd.STL10.__new__(tvd.STL10)
    reader.root, reader.base_folder = str(root), "stl10_binary"
    images, labels = reader._STL10__loadfile("train_X.bin", "train_y.bin")
    ours = np.stack([raw(dm.train_set, i)[0].numpy() for i in range(6)])
    assert np.array_equal(ours, images) and list(labels) == dm.train_set.targets
    assert dm.train_set[0][0].shape == (3, 96, 96)


def test_kmnist_reads_the_idx_files(tmp_path):
    dm = datamodule("kmnist", fake_kmnist(tmp_path), "data.normalize=gaussian")
    assert dm.info.spec == InputSpec(1, 28, 10) and len(dm.train_set) == 6 and len(dm.test_set) == 4
    assert dm.info.mean == (0.1918,)
    x, y = dm.train_set[1]
    assert x.shape == (1, 28, 28) and int(y) == 1


def test_imagenet_folder_tree_and_its_crops(tmp_path):
    folder = fake_image_tree(tmp_path / "imagenet")
    dm = datamodule("imagenet", tmp_path, "data.image_size=32")
    assert dm.info.spec == InputSpec(3, 32, 2) and len(dm.train_set) == 6 and len(dm.test_set) == 6
    assert dm.info.mean == (0.485, 0.456, 0.406)  # the preset normalises with ImageNet's statistics
    for ds in (dm.train_set, dm.test_set):
        x, _ = ds[0]  # a grayscale JPEG: three channels all the same (before normalisation)
        pixels = x * torch.tensor(dm.info.std).view(3, 1, 1) + torch.tensor(dm.info.mean).view(3, 1, 1)
        assert x.shape == (3, 32, 32) and torch.allclose(pixels[0], pixels[1], atol=1e-5)
    names = [type(t).__name__ for t in dm.test_set.transform.transforms]
    assert names[:4] == ["RGB", "ToImage", "Resize", "CenterCrop"]
    assert dm.test_set.transform.transforms[2].size == [37]  # 32 * 256 / 224: short side, aspect kept
    train_names = [type(t).__name__ for t in dm.train_set.transform.transforms]
    assert "RandomResizedCrop" in train_names and "RandomHorizontalFlip" in train_names
    # data.root may also be the dataset's folder itself.
    assert len(datamodule("imagenet", folder, "data.image_size=32").train_set) == 6


def test_imagenet_needs_a_crop_size(tmp_path):
    fake_image_tree(tmp_path / "imagenet")
    with pytest.raises(ConfigError, match="data.image_size=None leaves the crop size of data=imagenet open"):
        datamodule("imagenet", tmp_path, "data.image_size=null")


def test_imagenet_is_streamed_not_held(tmp_path):
    fake_image_tree(tmp_path / "imagenette2-160")
    dm = datamodule("imagenette", tmp_path, "data.num_workers=2")
    assert dm.info.spec == InputSpec(3, 128, 2)
    assert not hasattr(dm.train_set, "data")  # an ImageFolder: paths only, decoded per sample
    assert dm._workers() == 2
    loader = dm.train_dataloader()
    assert loader.num_workers == 2
    with pytest.raises(Exception, match="data.loader=device cannot hold data=imagenette"):
        datamodule("imagenette", tmp_path, "data.loader=device")


def test_imagenet32_reads_the_pickled_batches(tmp_path):
    fake_imagenet32(tmp_path / "imagenet32")
    dm = datamodule("imagenet32", tmp_path, "data.normalize=gaussian")
    assert dm.info.spec == InputSpec(3, 32, 1000) and len(dm.train_set) == 30 and len(dm.test_set) == 3
    assert dm.train_set.targets[:4] == [0, 1, 2, 3]  # 1-based in the files
    image = raw(dm.train_set, 3)[0]  # first image of batch 2: red plane saturated, others 0
    assert (image[0] == 255).all() and (image[1:] == 0).all()
    expected = dm.train_set.data.reshape(-1, 3).astype(np.float64) / 255
    assert np.allclose(dm.info.mean, expected.mean(0)) and np.allclose(dm.info.std, expected.std(0))
    assert dm.train_set[0][0].shape == (3, 32, 32)


def test_imagenet32_in_the_archives_subfolders(tmp_path):
    folder = fake_imagenet32(tmp_path / "imagenet32" / "Imagenet32_train")
    (tmp_path / "imagenet32" / "Imagenet32_val").mkdir()
    (folder / "val_data").rename(tmp_path / "imagenet32" / "Imagenet32_val" / "val_data")
    assert len(datamodule("imagenet32", tmp_path).test_set) == 3


MISSING = {
    "svhn": "train_32x32.mat",
    "stl10": "stl10_binary/train_X.bin",
    "kmnist": "KMNIST/raw",
    "imagenet": "imagenet/train/<class>/*.JPEG and",
    "imagenette": "imagenette2-160/train/<class>/*.JPEG and",
    "imagenet32": "train_data_batch_1, train_data_batch_2",
}


@pytest.mark.parametrize("name", sorted(MISSING))
def test_missing_files_say_which_files_go_where(name, tmp_path):
    with pytest.raises(DataError) as err:
        datamodule(name, tmp_path)
    message = str(err.value)
    assert "\n" not in message and MISSING[name] in message and str(tmp_path) in message


def test_truncated_stl10_is_named(tmp_path):
    root = fake_stl10(tmp_path)
    path = root / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="test_X.bin holds .* bytes but .*test_y.bin 4 labels"):
        datamodule("stl10", root)


def test_garbage_svhn_file_is_named(tmp_path):
    fake_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="test_32x32.mat is not a readable SVHN .mat file"):
        datamodule("svhn", tmp_path)


def test_in_memory_sets_work_with_the_device_loader_and_a_validation_split(tmp_path):
    dm = datamodule("svhn", fake_svhn(tmp_path, n_train=10), "data.loader=device", "data.val_fraction=0.2",
                    "data.batch_size=4")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and len(dm.val_set) == 2


# ---------------------------------------------------------------------------------------------------- CLI
def test_new_datasets_train_through_the_cli(tmp_path):
    """svhn (in-memory arrays) and imagenette (files decoded in DataLoader workers) train one step; a missing set
    stops with one line and exit 2."""
    (tmp_path / "svhn").mkdir()
    fake_svhn(tmp_path / "svhn", n_train=8)
    fake_image_tree(tmp_path / "nette")
    common = ["model=mlp", "model.widths=[8]", "trainer.accelerator=cpu", "trainer.max_epochs=1", "logger=none",
              "data.download=false", "data.batch_size=8"]
    cases = {
        "svhn": ["data=svhn", f"data.root={tmp_path / 'svhn'}"],
        "imagenette": ["data=imagenette", f"data.root={tmp_path / 'nette'}", "data.image_size=16",
                       "data.num_workers=1"],
        "missing": ["data=stl10", f"data.root={tmp_path / 'svhn'}"],
    }

    def run(name):
        out = tmp_path / f"out_{name}"
        out.mkdir()
        return out, run_cli([*cases[name], *common], out)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(cases, pool.map(run, cases)))
    for name in ("svhn", "imagenette"):
        out, res = results[name]
        assert res.returncode == 0, (name, res.stderr[-3000:])
        summary = read_summary(run_dirs(out)[0])
        assert summary["status"] == "completed" and summary["data"] == name and summary["epochs_done"] == 1
    out, res = results["missing"]
    errors = [line for line in res.stderr.splitlines() if "ERROR" in line]
    assert res.returncode == 2 and len(errors) == 1 and "stl10_binary/train_X.bin" in errors[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr

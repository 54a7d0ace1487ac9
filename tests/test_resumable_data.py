"""Exact, resumable data order, and bad data inputs as one clear line (issue 7)."""
import functools
import os

import lightning as L
import numpy as np
import pytest
import torch

from conftest import TINY, compose_cfg, run_cli_forked
from layerwise.data import ImageDataModule
from layerwise.data import module as data_module
from layerwise.errors import DataError

# Synthetic images with both random augmentations on, so every batch depends on the augmentation draws.
AUGMENTED = ["data=synthetic", "data.n_train=120", "data.n_test=16", "data.image_size=12", "data.batch_size=16",
             "data.augment.random_crop=true", "data.augment.horizontal_flip=true"]
KINDS = ["standard", "device"]


@functools.lru_cache(maxsize=None)
def data_cfg(overrides: tuple[str, ...]):
    return compose_cfg(list(overrides)).data  # composing takes most of a datamodule's setup here


def datamodule(overrides, seed=7):
    dm = ImageDataModule(data_cfg(tuple(overrides)), seed=seed)
    dm.setup()
    return dm


def epoch(loader, number):
    loader.sampler.set_epoch(number)
    return list(loader)


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", KINDS)
def test_an_epoch_depends_on_seed_and_epoch_alone(kind):
    loader = datamodule([*AUGMENTED, f"data.loader={kind}"]).train_dataloader()
    torch.manual_seed(0)
    first = epoch(loader, 1)
    torch.manual_seed(1)
    torch.rand(1000)  # the global RNG is reseeded and consumed: no effect on the data
    assert same(epoch(loader, 1), first)
    assert same(epoch(datamodule([*AUGMENTED, f"data.loader={kind}"]).train_dataloader(), 1), first)
    other_epoch, other_seed = epoch(loader, 2), epoch(datamodule([*AUGMENTED, f"data.loader={kind}"], 8)
                                                       .train_dataloader(), 1)
    for other in (other_epoch, other_seed):  # another order, and other augmentations of the same samples
        assert other[0][1].tolist() != first[0][1].tolist()
        labels = torch.cat([b[1] for b in first])
        assert sorted(torch.cat([b[1] for b in other]).tolist()) == sorted(labels.tolist())


def test_same_sample_gets_other_augmentations_in_another_epoch():
    dm = datamodule([*AUGMENTED, "data.normalize=none"])
    loader = dm.train_dataloader()
    seen = []
    for number in (0, 1):
        loader.sampler.set_epoch(number)
        position = loader.sampler.order().tolist().index(0)  # where sample 0 lands in this epoch
        batches = list(loader)
        seen.append(batches[position // 16][0][position % 16])
    assert not torch.equal(seen[0], seen[1])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("before_loader", [True, False])
def test_resume_at_yields_the_exact_rest_of_the_epoch(kind, before_loader):
    overrides = [*AUGMENTED, f"data.loader={kind}"]
    full = [epoch(datamodule(overrides).train_dataloader(), e) for e in (2, 3)]
    dm = datamodule(overrides)
    if before_loader:
        dm.resume_at(2, 3)
        loader = dm.train_dataloader()
    else:
        loader = dm.train_dataloader()
        dm.resume_at(2, 3)
    assert len(loader) == len(full[0]) == 8  # the full epoch: Lightning's restored counter starts at 3
    assert same(list(loader), full[0][3:])  # epoch 2 from batch 3 on, with no set_epoch call needed
    assert same(epoch(loader, 3), full[1])  # the next epoch is whole
    assert same(epoch(loader, 2), full[0])  # and the skip was used up


def test_skipped_batches_are_never_loaded():
    dm = datamodule(AUGMENTED)
    loaded = []
    base_getitem = type(dm.train_set).__getitem__
    type(dm.train_set).__getitem__ = lambda self, i: (loaded.append(i), base_getitem(self, i))[1]
    try:
        dm.resume_at(0, 6)
        rest = list(dm.train_dataloader())
    finally:
        type(dm.train_set).__getitem__ = base_getitem
    assert len(rest) == 2 and len(loaded) == 120 - 6 * 16


def test_loader_creation_leaves_the_global_rng_alone():
    dm = datamodule([*AUGMENTED, "data.val_fraction=0.25"])
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    for loader in [dm.train_dataloader(), *dm.val_dataloader()]:
        for _ in range(2):
            next(iter(loader))
    assert torch.equal(torch.rand(4), expected)


def test_worker_processes_give_the_same_batches():
    """Persistent workers keep their own dataset copy: the epoch travels with each index, not on the dataset."""
    loaders = [datamodule([*AUGMENTED, f"data.num_workers={n}"]).train_dataloader() for n in (0, 2)]
    assert loaders[1].persistent_workers
    for number in (0, 1):
        assert same(epoch(loaders[0], number), epoch(loaders[1], number))


def test_lightning_sets_the_epoch_on_the_sampler(tmp_path, monkeypatch):
    import layerwise.runs.train as train
    from conftest import fit_cfg

    seen = []

    class Record(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            seen.append((trainer.current_epoch, trainer.train_dataloader.sampler.epoch))

    monkeypatch.setattr(train, "EpochLine", lambda **kwargs: Record())  # one of fit's callbacks, as a recorder
    fit_cfg([*TINY, "trainer.max_epochs=2", "trainer.limit_train_batches=1", "model=mlp", "model.widths=[16]",
             "model.head_hidden=[]"], tmp_path)
    assert seen == [(0, 0), (1, 1)]


# ------------------------------------------------------------------------------------------ bad data inputs
def _fake_cifar_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (folder / name).write_bytes(b"\x80\x04truncated")
    return tmp_path


CLI_CASES = {
    "truncated_cifar": (lambda p: ["data=cifar10", f"data.root={_fake_cifar_root(p)}"],
                        "CIFAR10 files under {p}/cifar-10-batches-py are truncated or corrupt"),
    "unreadable_dir": (lambda p: ["data=npz", f"data.path={_locked(p)}/x.npz"], "cannot read {p}/locked"),
    "corrupt_npz": (lambda p: ["data=npz", f"data.path={_garbage_npz(p)}"], "is not a readable .npz file"),
    "npz_bad_labels": (lambda p: ["data=npz", f"data.path={_negative_labels_npz(p)}"],
                       "y_train has negative labels (min -1); class labels must be 0, 1, 2, ..."),
}


def _negative_labels_npz(tmp_path):
    path = tmp_path / "labels.npz"
    np.savez(path, x_train=np.zeros((4, 8, 8), np.float32), y_train=np.array([0, 1, -1, 2]),
             x_test=np.zeros((2, 8, 8), np.float32), y_test=np.array([0, 1]))
    return path


def _garbage_npz(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04" + b"not a zip archive" * 20)  # a zip header, then junk: a cut-off download
    return path


def _locked(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    np.savez(folder / "x.npz", x_train=np.zeros((2, 4, 4)), y_train=np.zeros(2), x_test=np.zeros((2, 4, 4)),
             y_test=np.zeros(2))
    folder.chmod(0)
    return folder


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_data_is_one_clear_line_through_the_cli(case, tmp_path):
    if case == "unreadable_dir" and os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading (see the in-process test below)")
    make_args, message = CLI_CASES[case]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    try:
        res = run_cli_forked([*make_args(data_dir), "trainer.accelerator=cpu", "logger=none"], tmp_path)
    finally:
        (data_dir / "locked").exists() and (data_dir / "locked").chmod(0o700)
    assert res.returncode == 2, res.stderr[-2000:]
    assert message.format(p=data_dir) in res.stderr and "Traceback" not in res.stderr
    assert len([line for line in res.stderr.splitlines() if "ERROR" in line]) == 1


def test_unreadable_folder_is_named_not_reported_missing(tmp_path, monkeypatch):
    """The permission check itself, where the tests run as root (os.access as a non-root user would answer)."""
    locked = tmp_path / "locked"
    (locked / "cifar-10-batches-py").mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(data_module.os, "access",
                        lambda p, mode: not str(p).startswith(str(locked)) and real_access(p, mode))
    for overrides in (["data=cifar10", f"data.root={locked}"], ["data=npz", f"data.path={locked}/x.npz"],
                      ["data=image_folder", f"data.root={locked}"]):
        # (The first existing path in the way is named: a non-root user could not even see what is inside.)
        message = f"cannot read {locked}(/cifar-10-batches-py)? \\(permission denied\\); fix"
        with pytest.raises(DataError, match=message):
            datamodule(overrides)


def test_truncated_cifar_offline_is_called_corrupt_not_missing(tmp_path):
    root = _fake_cifar_root(tmp_path)
    with pytest.raises(DataError, match="truncated or corrupt .* delete that folder and download again"):
        datamodule(["data=cifar10", f"data.root={root}", "data.download=false"])

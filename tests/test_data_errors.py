"""Users' own data that cannot be trained on as given: one line naming the file, the problem and the fix.

In-process cases cover each problem; the CLI cases run representatives through main.py (exit 2, one ERROR line,
no traceback, nothing trained: no checkpoint, no metrics).
"""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import compose_cfg, run_cli_forked
from layerwise.data import ImageDataModule
from layerwise.errors import DataError

COLOURS = {"cat": (250, 10, 10), "dog": (10, 10, 250), "emu": (10, 250, 10)}


def image_folder(root: Path, layout: dict[str, list[str]], n: int = 3, size=(12, 12)) -> Path:
    for split, classes in layout.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                Image.new("RGB", size, tuple(max(0, c - 5 * k) for c in COLOURS[name])).save(folder / f"{k}.png")
    return root


def npz(path: Path, **arrays) -> Path:
    rng = np.random.default_rng(0)
    base = dict(x_train=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), y_train=np.arange(12) % 2,
                x_test=rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), y_test=np.arange(4) % 2)
    np.savez(path, **{**base, **arrays})
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def setup_data(overrides):
    dm = ImageDataModule(compose_cfg(overrides).data)
    dm.setup()
    return dm


FLOATS = np.random.default_rng(1).random((12, 8, 8, 3))

# name -> (overrides given tmp_path, the message's distinctive part)
NPZ_CASES = {
    "int64 pixels": (dict(x_train=(FLOATS * 255).astype(np.int64)), "x_train has dtype int64; images must be uint8"),
    "bool pixels": (dict(x_test=np.ones((4, 8, 8), bool)), "x_test has dtype bool"),
    "0..255 floats": (dict(x_train=FLOATS * 255), r"x_train holds values in \[.*, 254.*\]; float images must lie in"),
    "standardised floats": (dict(x_train=FLOATS - 0.5), r"x_train holds values in \[-0.4"),
    "NaN pixels": (dict(x_train=np.full((12, 8, 8), np.nan)), "x_train holds NaN or infinite values"),
    "flattened (rank 2)": (dict(x_train=FLOATS.reshape(12, -1)), r"x_train has shape \(12, 192\) \(rank 2\)"),
    "rank 5": (dict(x_test=np.zeros((4, 1, 8, 8, 3), np.uint8)), r"x_test has shape \(4, 1, 8, 8, 3\) \(rank 5\)"),
    "RGBA": (dict(x_train=np.zeros((12, 8, 8, 4), np.uint8)), r"no axis of 1 or 3 channels .*RGBA: x\[..., :3\]"),
    "not square": (dict(x_train=np.zeros((12, 3, 8, 6), np.uint8)), "x_train images are 8x6 .* not square; set "
                                                                     "data.image_size=S"),
    "empty train": (dict(x_train=np.zeros((0, 8, 8), np.uint8), y_train=np.zeros(0, np.int64)),
                    r"x_train is empty \(shape \(0, 8, 8\)\); the train split needs at least one image"),
    "empty test": (dict(x_test=np.zeros((0, 8, 8, 3), np.uint8), y_test=np.zeros(0, np.int64)),
                   "x_test is empty"),
    "sizes differ": (dict(x_test=np.zeros((4, 10, 10, 3), np.uint8)),
                     "x_train images are 8x8 but x_test 10x10; set data.image_size=8 to resize both"),
    "channels differ": (dict(x_test=np.zeros((4, 8, 8), np.uint8)), "x_train has 3 channel.* but x_test 1"),
    "float labels": (dict(y_train=np.zeros(12)), "y_train has dtype float64; class labels must be integers"),
    "one-hot labels": (dict(y_test=np.eye(2, dtype=np.int64)[np.arange(4) % 2]),
                       r"y_test has shape \(4, 2\); .*one-hot labels: y.argmax\(1\)"),
    "label count": (dict(y_train=np.arange(10) % 2), "y_train has 10 labels for 12 images of x_train"),
    "test class unseen": (dict(y_test=np.array([0, 1, 2, 5])),
                          "y_test has class label.* 2, 5 that y_train never uses"),
    "object array": (dict(y_train=np.array([0, "a"] * 6, dtype=object)), "holds an object array"),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_malformed_npz_is_one_line_naming_the_file(case, tmp_path):
    arrays, message = NPZ_CASES[case]
    path = npz(tmp_path / "mine.npz", **arrays)
    with pytest.raises(DataError, match=message) as err:
        setup_data(["data=npz", f"data.path={path}"])
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_npz_that_is_well_formed_still_loads(tmp_path):
    """The checks refuse only what is wrong: NCHW floats in [0, 1], NHW uint8, non-square with a resize."""
    rng = np.random.default_rng(0)
    ok = [dict(x_train=rng.random((12, 1, 8, 8), np.float32), x_test=rng.random((4, 1, 8, 8), np.float32)),
          dict(x_train=np.zeros((12, 8, 8), np.uint8), x_test=np.zeros((4, 8, 8), np.uint8)),
          dict(x_test=np.zeros((4, 3, 10, 6), np.uint8))]
    for k, arrays in enumerate(ok):
        overrides = ["data=npz", f"data.path={npz(tmp_path / f'{k}.npz', **arrays)}"]
        dm = setup_data([*overrides, "data.image_size=8"] if k == 2 else overrides)
        assert dm.info.num_classes == 2 and dm.test_set[0][0].shape[-2:] == (8, 8)


def test_image_folder_problems_are_one_line(tmp_path):
    cases = {
        "extra class": (image_folder(tmp_path / "a", {"train": ["cat", "dog"], "test": ["dog", "emu"]}),
                        "test has class folder.* emu that .*/a/train lacks"),
        "empty class": (image_folder(tmp_path / "b", {"train": ["dog"], "test": ["dog"]}),
                        "train class folder.* cat hold no image files"),
        "no classes": (tmp_path / "c", "c/train has no class folders; put each class's images in"),
        "empty test": (image_folder(tmp_path / "d", {"train": ["dog"]}), "d/test holds no image files"),
    }
    (tmp_path / "b" / "train" / "cat").mkdir()
    (tmp_path / "c" / "train").mkdir(parents=True)
    (tmp_path / "c" / "test").mkdir()
    (tmp_path / "d" / "test" / "dog").mkdir(parents=True)
    for _name, (root, message) in cases.items():
        with pytest.raises(DataError, match=message):
            setup_data(["data=image_folder", f"data.root={root}", "data.image_size=8"])


@pytest.mark.parametrize("kind", ["truncated png", "empty file", "not an image"])
def test_undecodable_image_is_named(kind, tmp_path):
    root = image_folder(tmp_path, {"train": ["cat", "dog"], "test": ["cat", "dog"]})
    bad = root / "test" / "dog" / "1.png"
    if kind == "truncated png":
        truncate(bad)
    else:
        bad.write_bytes(b"" if kind == "empty file" else b"<html>404</html>")
    with pytest.raises(DataError, match=f"{bad} is not a readable image .*; replace or delete it"):
        setup_data(["data=image_folder", f"data.root={root}", "data.image_size=8"])


def test_file_where_a_folder_is_expected_and_back(tmp_path):
    arrays = npz(tmp_path / "mine.npz")
    with pytest.raises(DataError, match=f"data.root={arrays} is a file, not a folder; .*use data=npz data.path"):
        setup_data(["data=image_folder", f"data.root={arrays}"])
    with pytest.raises(DataError, match=f"data.root={arrays} is a file, not a folder; .*cifar-10-batches-py"):
        setup_data(["data=cifar10", f"data.root={arrays}", "data.download=false"])
    with pytest.raises(DataError, match=f"data.path={tmp_path} is a folder, not a file; point data.path at an .npz"):
        setup_data(["data=npz", f"data.path={tmp_path}"])


def test_image_folder_needs_an_image_size(tmp_path):
    root = image_folder(tmp_path, {"train": ["cat"], "test": ["cat"]})
    with pytest.raises(Exception, match="data.image_size=None cannot size the images .* set data.image_size=S"):
        setup_data(["data=image_folder", f"data.root={root}", "data.image_size=null"])


# --------------------------------------------------------------------------------------- through the CLI
def _cli_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    folder = image_folder(tmp / "folder", {"train": ["cat", "dog"], "test": ["cat", "dog"]})
    truncate(folder / "train" / "cat" / "2.png")
    extra = image_folder(tmp / "extra", {"train": ["cat", "dog"], "test": ["dog", "emu"]})
    return {
        "npz dtype": (["data=npz", f"data.path={npz(tmp / 'a.npz', x_train=(FLOATS * 255).astype(np.int64))}"],
                      f"{tmp}/a.npz: x_train has dtype int64"),
        "npz empty split": (["data=npz", f"data.path={npz(tmp / 'c.npz', x_test=np.zeros((0, 8, 8)), y_test=[])}"],
                            f"{tmp}/c.npz: x_test is empty"),
        "npz sizes differ": (["data=npz", f"data.path={npz(tmp / 'd.npz', x_test=np.zeros((4, 6, 6, 3), np.uint8))}"],
                             "x_train images are 8x8 but x_test 6x6; set data.image_size=8"),
        "truncated image": (["data=image_folder", f"data.root={folder}"],
                            f"{folder}/train/cat/2.png is not a readable image"),
        "class sets differ": (["data=image_folder", f"data.root={extra}"], "has class folder(s) emu that"),
        "folder for a file": (["data=npz", f"data.path={tmp}"], f"data.path={tmp} is a folder, not a file"),
    }


# One of each kind of failure reaches the CLI in the default run: bad npz contents, an image that does not decode,
# a path of the wrong kind. The other CLI cases only repeat messages the in-process tests above check, so they
# run with the slow tests (`make test-all`): each case is its own ~10 s process.
REPRESENTATIVE = ["npz dtype", "truncated image", "folder for a file"]


def _assert_refused_through_the_cli(tmp_path: Path, names: list[str]):
    data = tmp_path / "data"
    data.mkdir()
    cases = _cli_cases(data)

    def run(name: str):
        out = tmp_path / name.replace(" ", "_")
        out.mkdir()
        args = cases[name][0]
        return out, run_cli_forked([*args, "data.image_size=8" if "image_folder" in args[0] else "data.batch_size=4",
                                    "model=mlp", "model.widths=[8]", "trainer.accelerator=cpu", "logger=none"], out)

    results = {name: run(name) for name in names}  # forks of this process: no imports to wait on
    for name, (out, res) in results.items():
        message = cases[name][1]
        assert res.returncode == 2, (name, res.stderr[-2000:])
        errors = [line for line in res.stderr.splitlines() if "ERROR" in line]
        assert len(errors) == 1 and message in errors[0], (name, res.stderr[-2000:])
        assert "Traceback" not in res.stderr, name
        # Nothing trained, so nothing a later command could mistake for results.
        assert not list(out.rglob("*.ckpt")) and not list(out.rglob("metrics.csv")), name


def test_malformed_data_through_the_cli(tmp_path):
    _assert_refused_through_the_cli(tmp_path, REPRESENTATIVE)


@pytest.mark.slow
def test_more_malformed_data_through_the_cli(tmp_path):
    _assert_refused_through_the_cli(tmp_path, ["npz empty split", "npz sizes differ", "class sets differ"])


def test_npz_label_gaps_are_named(tmp_path):
    """Labels are class indices, so gaps are legal, but the outputs behind them are never trained: one warning."""
    from loguru import logger

    messages = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    try:
        path = npz(tmp_path / "gaps.npz", y_train=np.arange(12) % 2 * 4, y_test=np.array([0, 4, 4, 0]))
        dm = setup_data(["data=npz", f"data.path={path}"])
    finally:
        logger.remove(sink)
    assert dm.info.num_classes == 5
    assert len(messages) == 1 and "no sample of class label(s) 1, 2, 3 below its largest label 4" in messages[0]

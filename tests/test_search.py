"""Validation split (data.val_fraction), the search objective (optimized_metric) and the Optuna preset."""
import csv
import math

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from conftest import ROOT, TINY, compose_cfg, fit_cfg, read_summary, run_cli, run_dirs
from layerwise.config.search import METRICS, SearchCheck, check_optimized_metric, objective, patch_optuna_failed_trials
from layerwise.data import ImageDataModule, split_indices
from layerwise.errors import ConfigError

SYNTH = ["data=synthetic", "data.n_train=200", "data.n_test=20", "data.image_size=8", "data.num_classes=5"]


def datamodule(overrides):
    dm = ImageDataModule(compose_cfg(overrides).data)
    dm.setup()
    return dm


def _defaults_have(group: str) -> bool:
    defaults = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text()).get("defaults", [])
    return any(isinstance(d, dict) and group in d for d in defaults)


# `hparams_search=optuna` once conf/config.yaml lists `hparams_search: null` in its defaults, else appended.
OPTUNA = "hparams_search=optuna" if _defaults_have("hparams_search") else "+hparams_search=optuna"


# ------------------------------------------------------------------------------------------- the split
def test_split_is_disjoint_complete_stratified_and_fixed_by_data_seed():
    dm = datamodule([*SYNTH, "data.val_fraction=0.25"])
    train, val = dm.train_set.indices, dm.val_set.indices
    assert (len(train), len(val)) == (150, 50)
    assert not set(train) & set(val) and sorted(train + val) == list(range(200))
    labels = dm.train_set.dataset.labels.numpy()
    per_class, held = np.bincount(labels, minlength=5), np.bincount(labels[val], minlength=5)
    assert np.all(np.abs(held - 0.25 * per_class) <= 1)  # stratified: each class within one of its share

    again = datamodule([*SYNTH, "data.val_fraction=0.25", "seed=7"])  # the run seed does not move it
    assert (again.train_set.indices, again.val_set.indices) == (train, val)
    other = datamodule([*SYNTH, "data.val_fraction=0.25", "data.seed=1"])
    assert other.val_set.indices != val
    # Off (the default): the training set is untouched and the test set is the only evaluation loader.
    plain = datamodule(SYNTH)
    assert plain.val_set is None and len(plain.train_set) == 200
    assert not isinstance(plain.val_dataloader(), list)
    loaders = dm.val_dataloader()
    assert [len(ld.dataset) for ld in loaders] == [20, 50]  # [test, val]: dataloader 0 stays the test set


def test_subset_train_applies_first():
    subset = datamodule(["data=digits", "data.subset_train=100"])
    dm = datamodule(["data=digits", "data.subset_train=100", "data.val_fraction=0.2"])
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (80, 20, 360)
    assert sorted(dm.train_set.indices + dm.val_set.indices) == sorted(subset.train_set.indices)


def test_split_indices_without_labels():
    train, val = split_indices(10, 3, seed=0)
    assert len(val) == 3 and sorted(train + val) == list(range(10))
    assert (train, val) == split_indices(10, 3, seed=0)


def test_validation_samples_get_the_test_transform(tmp_path):
    aug = ["data.augment.random_crop=true", "data.augment.horizontal_flip=true"]
    dm = datamodule([*SYNTH, *aug, "data.val_fraction=0.1"])
    kinds = lambda ds: [type(t).__name__ for t in ds.dataset.transform.transforms]  # noqa: E731
    assert kinds(dm.train_set) == ["RandomCrop", "RandomHorizontalFlip", "Normalize"]
    assert kinds(dm.val_set) == ["Normalize"] == [type(t).__name__ for t in dm.test_set.transform.transforms]
    # torchvision-style datasets (transform set on the object): the val view is a copy, the train set keeps its own.
    for split in ("train", "test"):
        for label, colour in (("a", 0), ("b", 255)):
            (tmp_path / split / label).mkdir(parents=True)
            for k in range(5):
                Image.new("RGB", (12, 12), (colour, 20 * k, 0)).save(tmp_path / split / label / f"{k}.png")
    folder = datamodule(["data=image_folder", f"data.root={tmp_path}", "data.image_size=8", *aug,
                         "data.val_fraction=0.2"])
    assert (len(folder.train_set), len(folder.val_set)) == (8, 2)
    assert folder.val_set.dataset is not folder.train_set.dataset
    assert "RandomCrop" in kinds(folder.train_set) and "RandomCrop" not in kinds(folder.val_set)
    assert sorted(folder.train_set.dataset.targets[i] for i in folder.val_set.indices) == [0, 1]


@pytest.mark.parametrize("value", ["1.0", "-0.1", "2", "abc", "true"])
def test_val_fraction_out_of_range(value):
    with pytest.raises(ConfigError, match=r"data.val_fraction=.* must be a number in \[0, 1\)"):
        ImageDataModule(compose_cfg([*SYNTH, f"data.val_fraction={value}"]).data)  # before any data loads


@pytest.mark.parametrize("fraction, n, fix", [
    (0.01, 10, "holds out no sample for validation; use data.val_fraction=0.1 or more"),
    (0.96, 10, "leaves no sample to train on; lower data.val_fraction"),
])
def test_val_fraction_leaving_an_empty_side(fraction, n, fix):
    with pytest.raises(ConfigError, match=fix):
        datamodule([*SYNTH, f"data.n_train={n}", f"data.val_fraction={fraction}"])


# ------------------------------------------------------------------------------------------- metrics
def test_val_metrics_in_metrics_csv_and_summary(tmp_path):
    summary = fit_cfg([*TINY, "method=dgl", "model=mlp", "model.widths=[32,32]", "trainer.max_epochs=2",
                       "data.val_fraction=0.25"], tmp_path / "run")
    assert summary["status"] == "completed"
    for key in ("test_acc", "best_test_acc", "test_loss", "val_acc", "best_val_acc", "val_loss"):
        assert isinstance(summary[key], float), key
    assert summary["best_val_acc"] >= summary["val_acc"] - 1e-9
    assert len(summary["block_val_acc"]) == len(summary["block_test_acc"]) == 2
    with open(tmp_path / "run" / "metrics.csv") as f:
        columns = set(csv.DictReader(f).fieldnames)
    assert {"val/acc", "val/loss", "block0/val_acc", "block1/val_acc", "test/acc", "test/loss",
            "block0/test_acc"} <= columns
    assert not [c for c in columns if "dataloader_idx" in c]

    plain = fit_cfg([*TINY, "model=mlp", "model.widths=[32]"], tmp_path / "plain")
    assert not [k for k in plain if k.startswith(("val_", "best_val", "block_val"))]


# ------------------------------------------------------------------------------------------- objective
def _cfg(metric=None, val_fraction=0.1):
    cfg = {"data": {"val_fraction": val_fraction}}
    if metric is not None:
        cfg["optimized_metric"] = metric
    return OmegaConf.create(cfg)


SUMMARY = {"status": "completed", "test_acc": 0.8, "best_test_acc": 0.85, "test_loss": 0.6, "val_acc": 0.7,
           "best_val_acc": 0.75, "val_loss": 0.9}


def test_objective_maps_metric_names_to_summary_keys():
    expected = {"test/acc": 0.8, "best_test_acc": 0.85, "test/loss": 0.6, "val/acc": 0.7, "best_val_acc": 0.75,
                "val/loss": 0.9, "val_acc": 0.7, "test_acc": 0.8}
    for name, value in expected.items():
        assert objective(_cfg(name), SUMMARY) == value, name
    assert objective(_cfg(None, 0.0), SUMMARY) == 0.8  # no optimized_metric: test/acc
    assert math.isnan(objective(_cfg("val/acc"), {"status": "interrupted", "val_acc": None}))  # Optuna: failed


def test_unknown_metric_lists_the_valid_names():
    with pytest.raises(ConfigError) as err:
        check_optimized_metric(_cfg("val/accuracy"))
    message = str(err.value)
    assert "val/accuracy" in message and "\n" not in message
    assert all(name in message for name in METRICS)


def test_val_metric_needs_the_split_and_the_right_direction():
    with pytest.raises(ConfigError, match=r"needs a validation split.*data.val_fraction=0.1"):
        check_optimized_metric(_cfg("val/acc", 0.0))
    with pytest.raises(ConfigError, match="data.val_fraction=1.5 is out of range"):
        check_optimized_metric(_cfg("test/acc", 1.5))
    with pytest.raises(ConfigError, match="set hydra.sweeper.direction=minimize"):
        check_optimized_metric(_cfg("val/loss"), direction="maximize")
    assert check_optimized_metric(_cfg("val_loss"), direction="minimize") == "val/loss"


# ------------------------------------------------------------------------------------------- the preset
SWEEP = [*(o for o in TINY if not o.startswith("data.batch_size")), "model=mlp", "model.widths=[32]",
         "hydra.sweeper.n_trials=2"]


def _search_config(overrides, preset="optuna"):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[OPTUNA.replace("optuna", preset), *overrides], return_hydra_config=True)


def test_optuna_presets_search_on_the_validation_split():
    cfg = _search_config([])
    assert cfg.optimized_metric == "val/acc" and cfg.data.val_fraction == 0.1
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == "maximize" and sweeper.n_jobs == 1 and sweeper.sampler.seed is not None
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size"}
    SearchCheck().on_multirun_start(cfg)  # passes
    aux = _search_config(["method=dgl"], preset="optuna_aux")
    assert set(aux.hydra.sweeper.params) == {*sweeper.params, "method.aux.hidden_dim"}
    SearchCheck().on_multirun_start(aux)


@pytest.mark.parametrize("overrides, preset, message", [
    (["optimized_metric=acc"], "optuna", "optimized_metric='acc' is not known; choose one of val/acc"),
    (["data.val_fraction=0"], "optuna", "needs a validation split"),
    (["optimized_metric=val/loss"], "optuna", "set hydra.sweeper.direction=minimize"),
    (["method=bp"], "optuna_aux", "use hparams_search=optuna for rules without aux heads"),
])
def test_the_search_is_checked_before_the_first_trial(overrides, preset, message, capsys):
    with pytest.raises(SystemExit) as stop:
        SearchCheck().on_multirun_start(_search_config(overrides, preset))
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_nan_trial_fails_without_ending_the_search():
    """hydra-optuna-sweeper 1.3.0 re-tells a NaN trial as FAIL with its NaN values; unpatched, that ends the sweep."""
    import optuna
    from optuna.trial import TrialState

    assert patch_optuna_failed_trials()  # SearchCheck does this at the start of every preset search
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    with pytest.raises(ValueError, match="nan"):
        study.tell(trial, [float("nan")])  # the plugin's first tell
    study.tell(trial, [float("nan")], state=TrialState.FAIL)  # its retry
    assert study.trials[0].state == TrialState.FAIL
    study.tell(study.ask(), [0.5])
    assert study.best_value == 0.5


def test_optuna_sweep_through_the_cli(tmp_path):
    res = run_cli(["-m", OPTUNA, *SWEEP], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    (results,) = tmp_path.rglob("optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    assert set(best["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size"}
    runs = run_dirs(tmp_path)
    assert len(runs) == 2
    summaries = [read_summary(r) for r in runs]
    assert all(s["status"] == "completed" and "val_acc" in s for s in summaries)
    # The search selects on the validation split, not the test set.
    assert best["best_value"] == pytest.approx(max(s["val_acc"] for s in summaries))
    assert "Best parameters" in res.stdout + res.stderr


def test_a_search_whose_trials_all_fail_ends_with_the_failed_jobs_report(tmp_path):
    """Optuna's study.best_trial raised ValueError('No trials are completed yet') after the last trial: a traceback
    before any report. Now: the runs table (each trial's sampled values), the failed-jobs report, exit 1."""
    failing = [*(o for o in SWEEP if not o.startswith("data")), "data=npz", f"data.path={tmp_path / 'missing.npz'}"]
    res = run_cli(["-m", OPTUNA, *failing], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert "no trial of the search completed, so it has no best parameters" in res.stderr
    assert "2 of 2 jobs failed" in res.stderr
    assert res.stderr.count("failed: data.path=") == 2 and "Traceback" not in out
    assert "No trials are completed" not in out and not list(tmp_path.rglob("optimization_results.yaml"))
    assert "overrides" in res.stdout and res.stdout.count("optimizer.lr=") >= 2  # the table tells trials apart
    assert "A new study created" in res.stderr and "\x1b[" not in out  # optuna's lines too: no colour in a pipe

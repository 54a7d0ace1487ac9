"""A lab's own rule, network and dataset, in a directory outside the repository (docs/examples/mylab, the
worked example of docs/extending.md), run from the CLI with no edit to layerwise: by `_target_` in the lab's
own YAML (--config-dir), and a rule by an installed package's entry point, with no YAML at all."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, read_summary, run_dirs

LAB = ROOT / "docs" / "examples" / "mylab"
QUICK = ["trainer.max_epochs=3", "trainer.accelerator=cpu", "logger=csv", "optimizer.lr=0.1"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("lab") / "mylab"
    shutil.copytree(LAB, where, ignore=shutil.ignore_patterns("__pycache__"))
    return where


def layerwise(args: list[str], cwd: Path, pythonpath: list[Path], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath)),
           "LAYERWISE_OUTPUT_ROOT": str(cwd / "runs")}
    return subprocess.run([sys.executable, "-m", "layerwise", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_a_labs_rule_network_and_dataset_train_from_its_own_directory(lab):
    """One sweep: the lab's rule, and dgl, on the lab's network and dataset (8 classes: chance is 12.5%)."""
    res = layerwise(["-m", "--config-dir", str(lab / "conf"), "method=smooth_bp,dgl", "model=two_layer",
                     "data=stripes", *QUICK], lab, [lab])
    assert res.returncode == 0, res.stderr[-3000:]
    summaries = {s["method"]: s for s in map(read_summary, run_dirs(lab / "runs"))}
    assert set(summaries) == {"smooth_bp", "dgl"}
    for summary in summaries.values():
        assert (summary["model"], summary["data"], summary["status"]) == ("two_layer", "stripes", "completed")
        assert summary["test_acc"] >= 0.9, summary  # measured 1.0 for both (data.n_train: the options' default)


def test_a_labs_bad_option_is_one_line_naming_the_fix(lab, tmp_path):
    res = layerwise(["--config-dir", str(lab / "conf"), "method=smooth_bp", "model=two_layer", "data=stripes",
                     "method.smoothing=2", *QUICK], tmp_path, [lab], timeout=120)
    assert res.returncode == 2
    assert "method.smoothing=2 is out of range; it must be in [0, 1), e.g. method.smoothing=0.1" in res.stderr
    assert "Traceback" not in res.stderr
    # Nothing written (Hydra makes the empty run directory before any layerwise code runs).
    assert not [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]


def test_a_target_that_is_not_a_rule_is_refused(lab, tmp_path):
    res = layerwise(["method._target_=mylab.models.two_layer", "--cfg", "job"], tmp_path, [lab], timeout=120)
    assert res.returncode == 0  # --cfg job only composes
    res = layerwise(["data=digits", "model=mlp", "method._target_=mylab.models.two_layer", *QUICK], tmp_path, [lab],
                    timeout=120)
    assert res.returncode == 2
    assert "method._target_=mylab.models.two_layer is not a learning rule" in res.stderr


def test_an_installed_packages_rule_is_found_by_its_entry_point(lab, tmp_path):
    """`pip install` of a package declaring [project.entry-points."layerwise.rules"] leaves a dist-info like
    this one: the rule is then `method=<name>` with its options' defaults, and --help lists it."""
    site = tmp_path / "site"
    info = site / "mylab-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mylab\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[layerwise.rules]\nsmooth_bp = mylab.rules:SmoothBackprop\n")
    help_text = layerwise(["--help"], tmp_path, [lab, site], timeout=120)
    assert "smooth_bp" in help_text.stdout.split("method:")[1].splitlines()[0]
    res = layerwise(["method=smooth_bp", "data=digits", "model=mlp", "model.widths=[32]", "data.subset_train=256",
                     *QUICK], tmp_path, [lab, site])
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "runs")
    assert read_summary(run)["method"] == "smooth_bp"
    assert "smoothing: 0.1" in (run / ".hydra" / "config.yaml").read_text()  # the options' default


def test_the_options_defaults_a_labs_yaml_leaves_out_are_in_the_run_config(lab, tmp_path):
    res = layerwise(["--config-dir", str(lab / "conf"), "model=two_layer", "data=stripes", *QUICK], tmp_path, [lab])
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "runs")
    assert "n_train: 512" in (run / ".hydra" / "config.yaml").read_text()  # StripesOptions', not in stripes.yaml

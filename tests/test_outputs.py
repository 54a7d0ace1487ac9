"""The output contract of DESIGN.md: what one run and one sweep leave on disk."""
import csv
import json

import yaml

from conftest import TINY, read_summary, run_cli, run_dirs

SUMMARY_KEYS = {"status", "method", "model", "data", "seed", "epochs_done", "test_acc", "best_test_acc", "test_loss",
                "block_test_acc", "imgs_per_sec", "peak_activation_mb", "wall_s"}


def test_one_run_writes_every_promised_file(tmp_path):
    res = run_cli([*TINY, "method=dgl", "model=mlp", "model.widths=[32,32]", "trainer.max_epochs=2",
                   "logger=default", "name=contract"], tmp_path, env={"WANDB_MODE": "offline"})
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    date_dir = run.parent
    assert len(date_dir.name) == 10 and run.name.endswith("_contract")  # experiments/<YYYY-MM-DD>/<HH-MM-SS>_<name>
    assert {p.name for p in (run / ".hydra").iterdir()} >= {"config.yaml", "overrides.yaml", "hydra.yaml"}
    assert "method=dgl" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())

    log = (run / "run.log").read_text()
    assert "contract: completed after 2 epochs" in log

    summary = read_summary(run)
    assert SUMMARY_KEYS <= set(summary)
    assert summary["status"] == "completed" and summary["epochs_done"] == 2 and summary["seed"] == 0
    assert summary["best_test_acc"] >= summary["test_acc"] - 1e-9
    assert len(summary["block_test_acc"]) == 2

    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    columns = set(rows[0])
    assert {"train/loss", "train/acc", "test/loss", "test/acc", "block0/train_loss", "block0/train_acc",
            "block0/test_acc", "block1/test_acc", "train/lr", "train/imgs_per_sec",
            "train/peak_activation_mb", "epoch"} <= columns
    assert {r["epoch"] for r in rows if r["test/acc"]} == {"0", "1"}

    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert "wandb sync" in res.stderr


def test_multirun_jobs_get_numbered_dirs_and_one_table(tmp_path):
    res = run_cli(["-m", *TINY, "model=mlp", "method=bp,dgl", "model.widths=[16,16]"],
                  tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = run_dirs(tmp_path)
    assert [r.name for r in runs] == ["0", "1"]
    assert runs[0].parts[-4] == "multirun"  # experiments/multirun/<date>/<time>/<job>
    assert [read_summary(r)["method"] for r in runs] == ["bp", "dgl"]
    assert res.stdout.count("completed") == 2 and "sweep" in res.stdout
    assert json.loads((runs[1] / "summary.json").read_text())["block_test_acc"]

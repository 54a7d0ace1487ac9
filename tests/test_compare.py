"""scripts/compare.py: the offline comparison of runs, on run directories written by hand in tmp_path."""
from __future__ import annotations

import csv
import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compare.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("layerwise_compare_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


compare = _load_script()


# ------------------------------------------------------------------------------------------ fixture runs

def make_run(path: Path, *, method: str, seed: int, lr: float, test: list[float], train: list[float],
             blocks: list[float] | None = None, status: str | None = "completed", imgs: float = 1000.0,
             peak: float = 1.0, wall: float = 10.0) -> Path:
    """A run dir as main.py leaves it: .hydra/{config,overrides}.yaml, metrics.csv (Lightning's layout: a test row
    and a train row per epoch) and, unless status is None (still running / killed), summary.json."""
    (path / ".hydra").mkdir(parents=True)
    method_cfg = {"name": method}
    if method == "dgl":
        method_cfg["aux"] = {"type": "mlp", "hidden_dim": 256}
    config = {
        "data": {"root": "${oc.env:DATA_DIR,./data}", "batch_size": 64, "name": "synthetic", "n_train": 192},
        "model": {"name": "mlp", "widths": [32, 32]},
        "method": method_cfg,
        "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9},
        "trainer": {"max_epochs": 2, "progress_bar": False},
        "logger": {"csv": True},
        "seed": seed,
        "name": f"{method}_mlp_synthetic_s{seed}_{path.name}",  # differs per run: ignored
        "paths": {"output_root": str(path.parent)},  # differs per run: ignored
    }
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (path / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"method={method}", f"seed={seed}", f"optimizer.lr={lr}"]))
    n_blocks = len(blocks or [])
    block_cols = [f"block{i}/test_acc" for i in range(n_blocks)]
    header = ["epoch", "step", *block_cols, "test/acc", "test/loss", "train/acc", "train/imgs_per_sec", "train/loss"]
    with open(path / "metrics.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for e, (te, tr) in enumerate(zip(test, train)):
            block_vals = [b * (e + 1) / len(test) for b in blocks or []]  # the last epoch ends at `blocks`
            w.writerow([e, 2 * e + 1, *block_vals, te, 2.0 - te, "", "", ""])
            w.writerow([e, 2 * e + 1, *([""] * n_blocks), "", "", tr, imgs, 2.0 - tr])
    if status is not None:
        (path / "summary.json").write_text(json.dumps({
            "status": status, "name": config["name"], "method": method, "model": "mlp", "data": "synthetic",
            "seed": seed, "epochs_done": len(test), "test_acc": test[-1], "best_test_acc": max(test),
            "test_loss": 2.0 - test[-1], "block_test_acc": list(blocks or []), "imgs_per_sec": imgs,
            "peak_activation_mb": peak, "wall_s": wall}, indent=2))
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    """2 methods x 2 seeds at lr 0.1, one dgl run interrupted and one without summary.json (same config), and a
    dgl run at lr 0.01 (a group of its own)."""
    root = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    make_run(root / "0", method="bp", seed=0, lr=0.1, test=[0.60, 0.50], train=[0.55, 0.65],
             imgs=1000, peak=1.0, wall=10.0)
    make_run(root / "1", method="bp", seed=1, lr=0.1, test=[0.40, 0.54], train=[0.45, 0.75],
             imgs=1200, peak=1.0, wall=12.0)
    make_run(root / "2", method="dgl", seed=0, lr=0.1, test=[0.20, 0.30], train=[0.25, 0.35],
             blocks=[0.25, 0.30], imgs=2000, peak=0.5, wall=8.0)
    make_run(root / "3", method="dgl", seed=1, lr=0.1, test=[0.25, 0.36], train=[0.30, 0.40],
             blocks=[0.27, 0.36], imgs=2200, peak=0.7, wall=9.0)
    make_run(root / "4", method="dgl", seed=2, lr=0.1, test=[0.10], train=[0.12], blocks=[0.11, 0.10],
             status="interrupted", imgs=2100, peak=0.6, wall=3.0)
    make_run(root / "5", method="dgl", seed=3, lr=0.1, test=[0.15], train=[0.16], blocks=[0.14, 0.15],
             status=None)
    make_run(root / "6", method="dgl", seed=0, lr=0.01, test=[0.10, 0.12], train=[0.11, 0.13],
             blocks=[0.20, 0.12], imgs=1500, peak=0.5, wall=5.0)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    (root / "2" / "checkpoints").mkdir()
    return root


def parse_table(text: str) -> tuple[list[str], list[dict[str, str]]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]
    header, rows = cells[0], cells[2:]
    assert set(lines[1]) <= set("|-:")
    return header, [dict(zip(header, r)) for r in rows]


def run_main(capsys, *argv) -> tuple[int, str, str]:
    rc = compare.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------ the table

def test_table_values_grouping_and_marks(sweep, tmp_path, capsys):
    out_dir = tmp_path / "report"
    rc, out, err = run_main(capsys, sweep, "--out", out_dir, "--no-plots")
    assert rc == 0, err
    header, rows = parse_table(out)
    assert header == ["#", "method", "model", "data", "config", "seeds", "epochs", "test acc %", "best test acc %",
                      "per-block test acc %", "img/s", "peak act MB", "wall s"]
    # Seed-only differences (and per-run name / output paths) group; the lr difference splits dgl in two. The lr
    # is the one key that differs between groups, so every group shows it; dgl's method.aux.* is not a label.
    assert [(r["#"], r["method"], r["config"], r["seeds"]) for r in rows] == [
        ("1", "bp", "optimizer.lr=0.1", "2"),
        ("2", "dgl", "optimizer.lr=0.01", "1"),
        ("3", "dgl", "optimizer.lr=0.1", "4 (2 done)"),
    ]
    bp, dgl_small_lr, dgl = rows
    assert bp == {
        "#": "1", "method": "bp", "model": "mlp", "data": "synthetic", "config": "optimizer.lr=0.1", "seeds": "2",
        "epochs": "2",
        "test acc %": "52.00 ± 2.83",       # final 0.50, 0.54: mean 0.52, sample std sqrt(2 * 0.02^2 / 1) = 0.0283
        "best test acc %": "57.00 ± 4.24",  # best 0.60, 0.54: mean 0.57, std sqrt(2 * 0.03^2) = 0.0424
        "per-block test acc %": "-",        # bp has no block heads
        "img/s": "1100", "peak act MB": "1.0", "wall s": "11.0",
    }
    assert dgl_small_lr == {
        "#": "2", "method": "dgl", "model": "mlp", "data": "synthetic", "config": "optimizer.lr=0.01", "seeds": "1",
        "epochs": "2", "test acc %": "12.00", "best test acc %": "12.00",  # one seed: no ± std
        "per-block test acc %": "20.00 12.00", "img/s": "1500", "peak act MB": "0.5", "wall s": "5.0",
    }
    # Means over the 2 completed runs only: final 0.30, 0.36 -> 0.33 ± 0.0424; blocks (0.25+0.27)/2, (0.30+0.36)/2.
    assert dgl == {
        "#": "3", "method": "dgl", "model": "mlp", "data": "synthetic", "config": "optimizer.lr=0.1",
        "seeds": "4 (2 done)", "epochs": "2", "test acc %": "33.00 ± 4.24", "best test acc %": "33.00 ± 4.24",
        "per-block test acc %": "26.00 33.00", "img/s": "2100", "peak act MB": "0.6", "wall s": "8.5",
    }
    # The partial runs are marked under the table, with their group and how far they got.
    notes = out.split("\n\n", 1)[1].splitlines()
    assert notes[0].startswith("2 of 7 runs did not complete; the means leave them out")
    assert notes[1].startswith(f"- `{sweep / '4'}`: interrupted; group 3, seed 2, 1 epoch, last test acc 10.00")
    assert notes[2].startswith(f"- `{sweep / '5'}`: running/incomplete (no summary.json")
    assert notes[2].endswith("group 3, seed 3, 1 epoch, last test acc 15.00")
    # table.md is what was printed; table.csv / runs.csv hold the raw numbers.
    assert (out_dir / "table.md").read_text() == out
    with open(out_dir / "table.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [(t["group"], t["runs"], t["done"]) for t in table] == [("1", "2", "2"), ("2", "1", "1"), ("3", "4", "2")]
    assert float(table[0]["test_acc_mean"]) == pytest.approx(0.52)
    with open(out_dir / "runs.csv") as fh:
        runs = list(csv.DictReader(fh))
    assert [(r["group"], r["seed"], r["status"]) for r in runs] == [
        ("1", "0", "completed"), ("1", "1", "completed"), ("2", "0", "completed"), ("3", "0", "completed"),
        ("3", "1", "completed"), ("3", "2", "interrupted"), ("3", "3", "running/incomplete")]
    assert "in 3 groups" in err


def test_include_incomplete_uses_partial_runs(sweep, tmp_path, capsys):
    rc, out, _ = run_main(capsys, sweep, "--out", tmp_path / "o", "--no-plots", "--include-incomplete")
    assert rc == 0
    dgl = parse_table(out)[1][2]
    # Final test acc of all four: 0.30, 0.36, 0.10 (interrupted, summary.json), 0.15 (metrics.csv's last value).
    # mean 0.9100 / 4 = 0.2275; deviations .0725 .1325 -.1275 -.0775, squares sum .045075, / 3 -> std .12258
    assert dgl["seeds"] == "4 (2 done)"
    assert dgl["test acc %"] == "22.75 ± 12.26"
    # blocks: (0.25 + 0.27 + 0.11 + 0.14) / 4 = 0.1925, (0.30 + 0.36 + 0.10 + 0.15) / 4 = 0.2275
    assert dgl["per-block test acc %"] == "19.25 22.75"
    assert dgl["wall s"] == "6.7"  # (8 + 9 + 3) / 3: the running run has no wall time yet
    assert "they are included in the means" in out


def test_grouping_uses_the_saved_config(sweep):
    runs = [compare.load_run(d, print) for d in compare.find_run_dirs([str(sweep)])]
    assert [r.path.name for r in runs] == ["0", "1", "2", "3", "4", "5", "6"]  # checkpoints/ is no run
    groups = compare.group_runs(runs)
    assert [[r.path.name for r in g.runs] for g in groups] == [["0", "1"], ["6"], ["2", "3", "4", "5"]]
    # Ignoring the lr as well merges the two dgl groups.
    merged = compare.group_runs(runs, ignore=compare.IGNORED + ("optimizer.lr",))
    assert [len(g.runs) for g in merged] == [2, 5] and [g.label for g in merged] == ["", ""]
    # --group-by: only these keys count (`lr` resolves to optimizer.lr).
    by_lr = compare.group_runs(runs, group_by=["lr"])
    assert [(g.ident("method"), g.label, len(g.runs)) for g in by_lr] == [
        ("bp,dgl", "optimizer.lr=0.1", 6), ("dgl", "optimizer.lr=0.01", 1)]


def test_method_specific_keys_label_only_within_their_method(tmp_path):
    make_run(tmp_path / "a", method="bp", seed=0, lr=0.1, test=[0.5], train=[0.5])
    make_run(tmp_path / "b", method="dgl", seed=0, lr=0.1, test=[0.5], train=[0.5], blocks=[0.5])
    c = make_run(tmp_path / "c", method="dgl", seed=0, lr=0.1, test=[0.5], train=[0.5], blocks=[0.5])
    cfg = yaml.safe_load((c / ".hydra" / "config.yaml").read_text())
    cfg["method"]["aux"]["type"] = "cnn"
    (c / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    runs = [compare.load_run(d, print) for d in compare.find_run_dirs([str(tmp_path)])]
    assert [g.label for g in compare.group_runs(runs)] == ["", "method.aux.type=cnn", "method.aux.type=mlp"]


def test_metric_option_adds_a_column_and_plots_its_pair(sweep, tmp_path, capsys):
    out_dir = tmp_path / "loss"
    rc, out, _ = run_main(capsys, sweep, "--metric", "test/loss", "--out", out_dir)
    assert rc == 0
    header, rows = parse_table(out)
    assert "last test/loss" in header
    assert rows[0]["last test/loss"] == "1.4800 ± 0.0283"  # 2 - final acc: 1.50, 1.46
    assert (out_dir / "test_loss.png").is_file() and (out_dir / "train_loss.png").is_file()
    assert compare.counterpart("test/acc") == "train/acc"
    assert compare.counterpart("block1/test_acc") == "block1/train_acc"
    assert compare.counterpart("train/loss") == "test/loss"


def test_feedback_runs_add_a_final_w_b_angle_column(tmp_path, capsys):
    """Runs with diagnostics=alignment on a feedback rule (summary.json "angle_wb", per block) get the column;
    the other groups show "-" in it, and a table without such runs has no column."""
    root = tmp_path / "sweep"
    make_run(root / "0", method="bp", seed=0, lr=0.1, test=[0.5, 0.6], train=[0.5, 0.6])
    fa = make_run(root / "1", method="fa", seed=0, lr=0.1, test=[0.4, 0.5], train=[0.4, 0.5])
    summary = json.loads((fa / "summary.json").read_text())
    (fa / "summary.json").write_text(json.dumps({**summary, "angle_wb": [88.04, None, 30.0]}))
    rc, out, _ = run_main(capsys, root, "--no-plots", "--out", tmp_path / "r")
    assert rc == 0
    header, rows = parse_table(out)
    assert header.index("final W/B angle °") == header.index("img/s") - 1
    assert {r["method"]: r["final W/B angle °"] for r in rows} == {"bp": "-", "fa": "88.0 - 30.0"}
    rc, out, _ = run_main(capsys, root / "0", "--no-plots", "--out", tmp_path / "r0")
    assert "W/B angle" not in out


# ------------------------------------------------------------------------------------------ plots

def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_are_written_as_png(sweep, tmp_path, capsys):
    out_dir = tmp_path / "plots"
    rc, _, err = run_main(capsys, sweep, "--out", out_dir)
    assert rc == 0, err
    for name in ("test_acc.png", "train_acc.png"):
        w, h = _png_size(out_dir / name)
        assert w > 300 and h > 200
        assert str(out_dir / name) in err
    # The curve behind the test plot: per epoch, the mean over every run of the group that logged it.
    runs = [compare.load_run(d, print) for d in compare.find_run_dirs([str(sweep)])]
    dgl = compare.group_runs(runs)[2]
    xs, mean, std, n = compare.curve(dgl.runs, "test/acc")
    assert xs.tolist() == [1, 2] and n.tolist() == [4, 2]
    assert mean.tolist() == pytest.approx([(0.20 + 0.25 + 0.10 + 0.15) / 4, 0.33])
    assert std[1] == pytest.approx(0.0424264, abs=1e-6)


# ------------------------------------------------------------------------------------------ errors

def test_no_runs_found_is_one_line_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err = run_main(capsys, empty, tmp_path / "nothing*")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "no such file or directory" in err and "nothing*" in err

    rc, _, err = run_main(capsys, empty)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("compare.py: error: no run directories") and str(empty) in err


def test_unknown_metric_lists_the_available_ones(sweep, tmp_path, capsys):
    rc, out, err = run_main(capsys, sweep, "--metric", "test/accuracy", "--out", tmp_path / "o")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unknown --metric 'test/accuracy'" in err
    for name in ("test/acc", "test/loss", "train/acc", "block0/test_acc"):
        assert name in err
    assert not (tmp_path / "o").exists()  # nothing is written on a usage error


def test_runs_as_a_script(sweep):
    # Job dirs given one by one (as a shell glob would); without --out the report goes to <sweep>/compare/.
    jobs = sorted(str(p) for p in sweep.iterdir())
    res = subprocess.run([sys.executable, str(SCRIPT), *jobs, "--no-plots"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert parse_table(res.stdout)[1][0]["test acc %"] == "52.00 ± 2.83"
    assert (sweep / "compare" / "table.md").read_text() == res.stdout
    assert "7 runs (5 completed) in 3 groups" in res.stderr

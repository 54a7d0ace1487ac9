"""Sweeps through the real CLI: launchers, a failing job, wandb grouping."""
import json
import subprocess
import sys

import yaml

from conftest import ROOT, TINY, read_summary, run_cli, run_cli_forked, run_dirs

SMALL = [o for o in TINY if not o.startswith("logger")] + ["model=mlp", "model.widths=[32,32]"]


def _sweep_dir(out_root):
    (sweep,) = [p for p in (out_root / "multirun").glob("*/*") if p.is_dir()]
    return sweep


def _compare_rows(sweep):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), str(sweep), "--no-plots"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "synthetic" in line]
    return [[cell.strip() for cell in row.split("|")] for row in rows]


def _assert_grid_complete(out_root):
    runs = run_dirs(out_root)
    assert sorted(r.name for r in runs) == ["0", "1", "2", "3"]
    summaries = [read_summary(r) for r in runs]
    assert all(s["status"] == "completed" for s in summaries)
    assert sorted((s["method"], s["seed"]) for s in summaries) == [("bp", 0), ("bp", 1), ("dgl", 0), ("dgl", 1)]
    rows = _compare_rows(_sweep_dir(out_root))  # one table: bp and dgl, two seeds each
    assert [(r[2], r[6]) for r in rows] == [("bp", "2"), ("dgl", "2")]
    return runs


def test_joblib_grid_gives_one_complete_run_dir_per_job_in_one_wandb_group(tmp_path):
    res = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMALL, "logger=default",
                   "method=bp,dgl", "seed=0,1"], tmp_path, env={"WANDB_MODE": "offline"})
    assert res.returncode == 0, res.stderr[-3000:]
    runs = _assert_grid_complete(tmp_path)
    sweep = _sweep_dir(tmp_path)
    group = f"sweep_{sweep.parent.name}_{sweep.name}".encode()
    for run in runs:  # each job is its own wandb run, all in the sweep's group
        (run_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
        assert group in run_file.read_bytes()


def test_submitit_local_grid_runs_each_job_in_its_own_process(tmp_path):
    """submitit_local stands in for a cluster: the same launcher code path as Slurm. Two jobs, not the joblib
    test's four: the grid and the table over seeds are the joblib test's; each job here pays a fresh interpreter."""
    res = run_cli(["-m", "hydra/launcher=submitit_local", *SMALL, "logger=csv", "method=bp,dgl"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = run_dirs(tmp_path)
    assert [r.name for r in runs] == ["0", "1"]
    summaries = [read_summary(r) for r in runs]
    assert [(s["status"], s["method"]) for s in summaries] == [("completed", "bp"), ("completed", "dgl")]
    results = list(_sweep_dir(tmp_path).glob(".submitit/*/*_result.pkl"))
    assert len({p.parent for p in results}) == 2, results  # one submitit job (its own process) per run


def test_failing_jobs_are_reported_and_the_others_keep_their_results(tmp_path):
    """One job with a bad value (config error), one that crashes inside Lightning (an exception that is not a
    layerwise error: a precision plugin whose package is missing)."""
    res = run_cli_forked(["-m", *SMALL, "logger=csv", "trainer.precision=32,transformer-engine", "optimizer.lr=0.1,-1"],
                         tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "3 of 4 jobs failed" in res.stderr
    assert "[trainer.precision=32 optimizer.lr=-1] failed: optimizer.lr=-1 is out of range" in res.stderr
    assert ("[trainer.precision=transformer-engine optimizer.lr=0.1] failed: ModuleNotFoundError: Requirement "
            "'transformer_engine" in res.stderr)
    runs = {(read_summary(r)["status"], r.name) for r in run_dirs(tmp_path)}
    assert runs == {("completed", "0"), ("failed", "1"), ("failed", "2"), ("failed", "3")}
    done = run_dirs(tmp_path)[0]
    assert (done / "checkpoints" / "last.ckpt").is_file() and (done / "metrics.csv").is_file()
    crashed = read_summary(run_dirs(tmp_path)[2])
    assert crashed["error"].startswith("ModuleNotFoundError: Requirement 'transformer_engine")
    assert "Traceback" in (run_dirs(tmp_path)[2] / "run.log").read_text()


def test_slurm_launcher_preset_composes_with_cluster_keys():
    res = subprocess.run([sys.executable, str(ROOT / "main.py"), "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                          "--cfg", "hydra", "--package", "hydra.launcher"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    for line in ("_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "partition: gpu",
                 "gpus_per_node: ${trainer.devices}", "tasks_per_node: ${trainer.devices}",  # resolved: test_multinode
                 "nodes: ${oc.select:trainer.num_nodes,1}", "cpus_per_task: 8", "mem_gb: 32", "timeout_min: 720",
                 "array_parallelism: 32", "max_num_timeout: 3"):
        assert line in res.stdout, line


def test_the_sweep_table_shows_each_jobs_own_overrides(tmp_path):
    """An Optuna sweep's rows all read bp/mlp/synthetic/0: the sampled values are what tell them apart."""
    from rich.console import Console

    from layerwise.reporting.report import load_summaries, runs_table, with_own_overrides

    shared = ["hparams_search=optuna", "model=mlp"]
    for num, own in enumerate([["optimizer.lr=0.0012345678901", "data.batch_size=64"],
                               ["optimizer.lr=0.25", "data.batch_size=128"]]):
        job = tmp_path / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*own, *shared]))
        (job / "summary.json").write_text(json.dumps({"method": "bp", "model": "mlp", "status": "completed"}))
    rows = with_own_overrides(load_summaries(tmp_path.glob("*/summary.json")))
    assert [r["_own"] for r in rows] == ["optimizer.lr=0.001235 data.batch_size=64",
                                         "optimizer.lr=0.25 data.batch_size=128"]
    console = Console(width=250, record=True)
    console.print(runs_table(rows))
    text = console.export_text()
    assert "overrides" in text and "optimizer.lr=0.001235 data.batch_size=64" in text
    single = Console(width=250, record=True)
    single.print(runs_table(with_own_overrides(rows[:1])))  # one job: nothing to tell apart, no column
    assert "overrides" not in single.export_text()

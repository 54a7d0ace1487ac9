"""Sweeps through the real CLI: launchers, a failing job, wandb grouping."""
import subprocess
import sys

from conftest import ROOT, TINY, read_summary, run_cli, run_dirs

SMALL = [o for o in TINY if not o.startswith("logger")] + ["model=mlp", "model.widths=[32,32]"]


def _sweep_dir(out_root):
    (sweep,) = [p for p in (out_root / "multirun").glob("*/*") if p.is_dir()]
    return sweep


def test_joblib_grid_gives_one_complete_run_dir_per_job_in_one_wandb_group(tmp_path):
    res = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMALL, "logger=default",
                   "method=bp,dgl", "seed=0,1"], tmp_path, env={"WANDB_MODE": "offline"})
    assert res.returncode == 0, res.stderr[-3000:]
    runs = run_dirs(tmp_path)
    assert len(runs) == 4 and sorted(r.name for r in runs) == ["0", "1", "2", "3"]
    summaries = [read_summary(r) for r in runs]
    assert all(s["status"] == "completed" for s in summaries)
    assert sorted((s["method"], s["seed"]) for s in summaries) == [("bp", 0), ("bp", 1), ("dgl", 0), ("dgl", 1)]
    sweep = _sweep_dir(tmp_path)
    group = f"sweep_{sweep.parent.name}_{sweep.name}".encode()
    for run in runs:  # each job is its own wandb run, all in the sweep's group
        (run_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
        assert group in run_file.read_bytes()
    compare = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), str(sweep), "--no-plots"],
                             capture_output=True, text=True, timeout=120)
    assert compare.returncode == 0, compare.stderr
    rows = [line for line in compare.stdout.splitlines() if line.startswith("| ") and "synthetic" in line]
    seeds = [[cell.strip() for cell in row.split("|")][6] for row in rows]
    assert len(rows) == 2 and seeds == ["2", "2"], compare.stdout  # bp and dgl, two seeds each


def test_a_failing_job_is_reported_and_the_others_keep_their_results(tmp_path):
    """submitit_local stands in for a cluster: each job in its own process, as on Slurm."""
    res = run_cli(["-m", "hydra/launcher=submitit_local", *SMALL, "logger=csv", "method=bp,dgl",
                   "optimizer.lr=0.1,-1"], tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "2 of 4 jobs failed" in res.stderr
    assert "[method=bp optimizer.lr=-1] failed: optimizer.lr=-1 is out of range" in res.stderr
    summaries = {(s["method"], s["status"]) for s in map(read_summary, run_dirs(tmp_path))}
    assert summaries == {("bp", "completed"), ("dgl", "completed"), ("bp", "failed"), ("dgl", "failed")}
    assert "Traceback" not in res.stderr  # a config error is one line per job, not a stack trace
    for run in run_dirs(tmp_path):
        if read_summary(run)["status"] == "completed":
            assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.csv").is_file()


def test_a_crashing_job_keeps_its_traceback_in_its_run_log(tmp_path):
    res = run_cli(["-m", *SMALL, "logger=csv", "trainer.precision=32,bogus"], tmp_path)
    assert res.returncode == 1
    failed = [r for r in run_dirs(tmp_path) if read_summary(r)["status"] == "failed"]
    assert len(failed) == 1 and read_summary(failed[0])["error"].startswith("ValueError: Precision 'bogus'")
    assert "Traceback" in (failed[0] / "run.log").read_text()


def test_slurm_launcher_preset_composes_with_cluster_keys():
    res = subprocess.run([sys.executable, str(ROOT / "main.py"), "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                          "--cfg", "hydra", "--package", "hydra.launcher"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    for line in ("_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "partition: gpu",
                 "gpus_per_node: 1", "tasks_per_node: 1", "cpus_per_task: 8", "mem_gb: 32", "timeout_min: 720",
                 "array_parallelism: 32", "max_num_timeout: 3"):
        assert line in res.stdout, line

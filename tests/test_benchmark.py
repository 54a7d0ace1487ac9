"""scripts/benchmark.py end to end on a tiny model: the table and the JSON agree, and ratios are a/b of the
numbers reported. Never asserts on speed (timings belong to the benchmark itself, not to unit tests)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "benchmark.py"
TINY = ["--models", "basic_cnn", "--methods", "bp,dgl", "--batch-size", "16", "--steps", "2", "--warmup", "1",
        "--repeats", "1", "--threads", "1", "--quiet",
        "--override", "model.width_mult=0.0625", "--override", "model.head_hidden=[16]",
        "--override", "data.image_size=16", "--override", "dgl:method.aux.hidden_dim=16"]


# A stand-in for scripts/pipeline_benchmark.py (helper "pipeline"'s module), so the smoke test times nothing more.
FAKE_PIPELINE = """
def measure(model, batch_size, steps, stages):
    return [{"stages": k, "threads_per_process": 1, "imgs_per_sec": 10.0 * k, "speedup": float(k)} for k in stages]

def markdown(rows):
    return "| stages | speedup |\\n|---|---|\\n" + "\\n".join(f"| {r['stages']} | {r['speedup']} |" for r in rows)
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out, fake = tmp / "bench.json", tmp / "pipeline_benchmark.py"
    fake.write_text(FAKE_PIPELINE)
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--json", str(out), "--pipeline",
                           "--pipeline-script", str(fake)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def _table(stdout: str) -> list[dict[str, str]]:
    """The first Markdown table of the output (the pipeline's, when there is one, follows it)."""
    lines = []
    for line in stdout.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_table_has_the_columns_and_one_row_per_method(run):
    stdout, report = run
    rows = _table(stdout)
    assert [(r["model"], r["method"]) for r in rows] == [("basic_cnn", "bp"), ("basic_cnn", "dgl")]
    for column in ("project img/s", "plain BP img/s", "project/plain", "method/BP img/s", "project/plain CPU-time",
                   "method/BP CPU-time", "act. MB",
                   "plain BP act. MB", "method/BP mem", "GFLOP/s", "conv ceiling GFLOP/s", "efficiency"):
        assert column in rows[0], column
    for row, data in zip(rows, report["rows"]):
        assert float(row["project img/s"]) == pytest.approx(data["project_imgs_per_sec"], abs=0.051)
        assert float(row["project/plain"]) == pytest.approx(data["project_over_plain"], abs=5e-4)


def test_json_ratios_are_the_quotients_of_the_reported_numbers(run):
    _, report = run
    bp, dgl = report["rows"]
    for row in (bp, dgl):
        assert row["project_imgs_per_sec"] > 0 and row["plain_bp_imgs_per_sec"] > 0
        assert row["project_over_plain"] == pytest.approx(row["project_imgs_per_sec"] / row["plain_bp_imgs_per_sec"])
        assert row["method_over_bp_imgs_per_sec"] == pytest.approx(row["project_imgs_per_sec"]
                                                                   / bp["project_imgs_per_sec"])
        assert row["method_over_bp_memory"] == pytest.approx(row["project_peak_activation_mb"]
                                                             / bp["project_peak_activation_mb"])
        assert row["efficiency"] == pytest.approx(row["achieved_gflops"] / row["ceiling_gflops"])
        assert row["project_over_plain_cpu_time"] == pytest.approx(row["project_imgs_per_cpu_sec"]
                                                                   / row["plain_bp_imgs_per_cpu_sec"])
        assert len(row["project_imgs_per_sec_repeats"]) == report["config"]["repeats"] == 1
    assert bp["method_over_bp_imgs_per_sec"] == 1.0
    # The same network trained by BP saves the same activations in both loops (CPU: ActivationMeter).
    assert bp["project_peak_activation_mb"] == pytest.approx(bp["plain_bp_peak_activation_mb"], rel=0.02)
    assert dgl["gflop_per_step"] > 0 and bp["gflop_per_step"] > 0


def test_pipeline_rows_are_appended(run):
    stdout, report = run
    assert [r["stages"] for r in report["pipeline"]["rows"]] == [1, 2]
    assert "| stages | speedup |" in stdout


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the script's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_a_missing_or_failing_pipeline_module_is_reported_not_raised(tmp_path):
    bench = _load_script()
    args = bench.parse_args(["--models", "basic_cnn", "--pipeline-script", str(tmp_path / "missing.py")])
    text, data = bench.pipeline_section(args)
    assert "not found" in text and data["error"] == text
    broken = tmp_path / "broken.py"
    broken.write_text("def measure(*a):\n    raise RuntimeError('no fork here')\n")
    args = bench.parse_args(["--models", "basic_cnn", "--pipeline-script", str(broken)])
    text, data = bench.pipeline_section(args)
    assert "failed: RuntimeError: no fork here" in text and data["error"] == text


def test_blocks_run_every_local_method_once_per_number_of_modules():
    bench = _load_script()
    args = bench.parse_args(["--models", "resnet32", "--methods", "bp,dgl,infopro", "--blocks", "2,16",
                             "--split", "infopro"])
    runs = bench.runs_for(args.methods, args.blocks, args.split)
    assert runs == {"bp": ("bp", None, []),
                    "dgl@K=2": ("dgl", 2, ["model.blocks=2", "model.split=infopro"]),
                    "dgl@K=16": ("dgl", 16, ["model.blocks=16", "model.split=infopro"]),
                    "infopro@K=2": ("infopro", 2, ["model.blocks=2", "model.split=infopro"]),
                    "infopro@K=16": ("infopro", 16, ["model.blocks=16", "model.split=infopro"])}
    for bad in (["--split", "infopro"], ["--blocks", "0,2"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_the_small_run_benchmark_reports_the_ratios_of_its_own_measurements(tmp_path):
    """scripts/small_run_benchmark.py on a tiny workload: both commands run as processes, and the table's ratios
    are the quotients of the times it reports."""
    out = tmp_path / "small.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "small_run_benchmark.py"), "--methods", "bp",
                           "--repeats", "1", "--epochs", "1", "--n-train", "256", "--n-test", "64", "--widths", "32",
                           "--quiet", "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    med = row["median"]  # one repeat: the median of its ratios is its ratio
    assert row["end_to_end_ratio"] == pytest.approx(row["project_s"][0] / row["plain_s"][0])
    assert row["loop_ratio"] == pytest.approx(med["project_loop_s"] / med["plain_loop_s"])
    assert 0 < med["plain_loop_s"] < med["plain_s"] and 0 < med["project_loop_s"] < med["project_s"]
    assert 0 <= med["project_acc"] <= 1 and 0 <= med["plain_acc"] <= 1
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| bp |"))
    assert f"| {row['end_to_end_ratio']:.2f} |" in line and f"| {row['loop_ratio']:.2f} |" in line


def test_the_small_run_benchmark_refuses_a_method_the_plain_script_lacks():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "small_run_benchmark.py"), "--methods", "fa"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and "--methods fa: the plain script implements bp and dgl" in proc.stderr


@pytest.mark.slow
def test_the_gpu_check_writes_its_report_on_a_cpu(tmp_path):
    """scripts/gpu_check.sh's plumbing without a GPU (step 3, tiny): the Markdown report with the loader's rate."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--quick", "--only", "3",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "gpu_check.md").read_text()
    assert "## 3. data.loader=device throughput" in report and "img/s" in report
    assert "| data.loader=device, crop + flip, 5000 images 3x32x32, batch 512 |" in report

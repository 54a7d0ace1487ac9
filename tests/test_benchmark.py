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

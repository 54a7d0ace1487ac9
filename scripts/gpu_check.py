#!/usr/bin/env python
"""The GPU check (scripts/gpu_check.sh runs it): everything a GPU machine should show, on synthetic data only.

    python scripts/gpu_check.py --out $OUT                      # on the GPU machine, <= 8 minutes on an H100/H200
    python scripts/gpu_check.py --out /tmp/check --device cpu --quick   # its plumbing, on any machine

Steps (each with its own time limit, STEP_TIMEOUTS; a failing step is a row in the report, never the end of the check):
1. every learning rule, one short epoch on CIFAR-shaped synthetic data (3x32x32, 10 classes), in fp32 and in
   bf16-mixed: one `main.py -m` sweep (all jobs in one process), status, test accuracy, img/s per job;
2. `scripts/benchmark.py --device cuda` for basic_cnn, vgg11c and resnet20 with bp and dgl: project / plain;
3. `data.loader=device` with random crop + horizontal flip: training batches per second of the loader alone, as
   images per second (target >= 100k img/s);
4. `scripts/pipeline_benchmark.py`: method=dgl, 1 and 2 pipeline stages on the one GPU.
The report is Markdown (`gpu_check.md` in --out), with each step's wall time and the command that reproduces it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "main.py"

#: Seconds each step may take (rules, benchmark, loader, pipeline): 8 minutes in all.
STEP_TIMEOUTS = (240, 90, 60, 90)
#: Rules whose defaults need a fully connected network (the rest run on basic_cnn).
MLP_RULES = ("target_prop", "pepita")
#: Rules that refuse basic_cnn's defaults, with what they need instead.
CONV_NEEDS = {"forward_forward": ["model.batch_norm=false"]}  # goodness of blocks without batch norm


def run(cmd: list[str], timeout: float, log: Path) -> tuple[int, float, str]:
    """(exit code, wall seconds, output); 124 when it ran past `timeout`. The output also goes to `log`."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        code = 124
        out = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        out += f"\n(stopped after {timeout:.0f} s)"
    log.write_text(" ".join(cmd) + "\n\n" + out)
    return code, time.perf_counter() - t0, out


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[:160].replace("|", "/")


# ------------------------------------------------------------------------------------------------ 1. rules
def rules_step(args, out: Path) -> tuple[str, float]:
    from layerwise.rules import rule_names

    accelerator = "gpu" if args.device == "cuda" else "cpu"
    precisions = ["32-true", "bf16-mixed"]
    n_train, n_test = (256, 128) if args.quick else (1024, 512)
    rows, wall = [], 0.0
    conv = [r for r in rule_names() if r not in MLP_RULES and r not in CONV_NEEDS]
    mlp = [r for r in rule_names() if r in MLP_RULES]
    groups = [("basic_cnn", conv, [])] + [("basic_cnn", [r], extra) for r, extra in CONV_NEEDS.items()]
    groups.append(("mlp", mlp, []))
    total = sum(len(methods) for _, methods, _ in groups)
    for g, (model, methods, extra) in enumerate(groups):
        sweep = out / f"rules_{g}_{model}"
        cmd = [sys.executable, str(MAIN), "-m", f"method={','.join(methods)}",
               f"trainer.precision={','.join(precisions)}", f"model={model}", "data=synthetic", "data.image_size=32",
               f"data.n_train={n_train}", f"data.n_test={n_test}", "data.batch_size=128", "trainer.max_epochs=1",
               f"trainer.accelerator={accelerator}", "logger=none", "trainer.progress_bar=false",
               f"hydra.sweep.dir={sweep}", *extra]
        share = max(30.0, args.timeouts[1] * len(methods) / total)  # by the number of jobs
        code, seconds, text = run(cmd, share, out / f"rules_{g}_{model}.log")
        wall += seconds
        before = len(rows)
        for job in sorted(sweep.glob("*/.hydra/overrides.yaml"), key=lambda p: int(p.parent.parent.name)):
            job_dir = job.parent.parent
            overrides = dict(line.strip("- \n").split("=", 1) for line in job.read_text().splitlines()
                             if "=" in line)
            summary_path = job_dir / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
            status = summary.get("status", "no summary")
            if status not in ("completed",):
                status += f": {summary.get('error', '')[:120]}".rstrip(": ")
            acc, ips = summary.get("test_acc"), summary.get("imgs_per_sec")
            label = " ".join([model, *extra])
            rows.append(f"| {overrides.get('method')} | {label} | {overrides.get('trainer.precision')} | {status} | "
                        f"{'-' if acc is None else f'{100 * acc:.1f}'} | {'-' if not ips else f'{ips:.0f}'} |")
        if code == 124:
            rows.append(f"| (the sweep's other jobs) | {model} | - | not run: stopped after "
                        f"{share:.0f} s | - | - |")
        elif code != 0 and len(rows) == before:  # no job got as far as its run directory
            rows.append(f"| (sweep) | {model} | - | exit {code}: {last_line(text)} | - | - |")
    table = ["| method | model | precision | status | test acc % | img/s |", "|---|---|---|---|---:|---:|", *rows]
    note = (f"One epoch each on {n_train} synthetic 3x32x32 images (batch 128), tested on {n_test}; "
            "accuracy after one epoch is only a sign of life.")
    return "\n".join(table) + "\n\n" + note, wall


# ------------------------------------------------------------------------------------------------ 2. benchmark
def benchmark_step(args, out: Path) -> tuple[str, float]:
    steps, repeats = ("3", "1") if args.quick else ("30", "3")
    models = "basic_cnn,resnet20" if args.quick else "basic_cnn,vgg11c,resnet20"
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--device", args.device, "--models", models,
           "--methods", "bp,dgl", "--batch-size", "128", "--steps", steps, "--warmup", "3", "--repeats", repeats,
           "--quiet", "--json", str(out / "benchmark.json")]
    code, seconds, text = run(cmd, args.timeouts[2], out / "benchmark.log")
    table = [ln for ln in text.splitlines() if ln.startswith("|")]
    if code != 0 or not table:
        return f"failed (exit {code}): {last_line(text)}", seconds
    return "\n".join(table), seconds


# ------------------------------------------------------------------------------------------------ 3. loader
def loader_step(args, out: Path) -> tuple[str, float]:
    n = 5000 if args.quick else 50000
    code = f"""
import time, torch
from hydra import compose, initialize_config_dir
from layerwise.data import ImageDataModule
with initialize_config_dir(config_dir="{ROOT / 'conf'}", version_base="1.3"):
    cfg = compose("config", overrides=["data=synthetic", "data.image_size=32", "data.n_train={n}", "data.n_test=64",
                                       "data.batch_size=512", "data.loader=device", "data.augment.random_crop=true",
                                       "data.augment.horizontal_flip=true"])
device = torch.device("{args.device}")
dm = ImageDataModule(cfg.data, device=device)
dm.setup("fit")
loader = dm.train_dataloader()
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
for epoch in range(3):
    loader.sampler.set_epoch(epoch)
    sync(); t0 = time.perf_counter(); seen = 0
    for x, y in loader:
        seen += len(x)
    sync(); seconds = time.perf_counter() - t0
print(f"img/s={{seen / seconds:.0f}}")
"""
    rc, seconds, text = run([sys.executable, "-c", code], args.timeouts[3], out / "loader.log")
    if rc != 0:
        return f"failed (exit {rc}): {last_line(text)}", seconds
    found = re.findall(r"img/s=(\d+)", text)
    if not found:
        return f"failed: no rate in the output: {last_line(text)}", seconds
    ips = float(found[-1])
    verdict = "met" if ips >= 100_000 else "NOT met"
    return ("| loader | img/s | target >= 100,000 |\n|---|---:|---|\n"
            f"| data.loader=device, crop + flip, {n} images 3x32x32, batch 512 | {ips:,.0f} | {verdict} |"), seconds


# ------------------------------------------------------------------------------------------------ 4. pipeline
def pipeline_step(args, out: Path) -> tuple[str, float]:
    device = "gpu" if args.device == "cuda" else "cpu"
    steps = "4" if args.quick else "30"
    cmd = [sys.executable, str(ROOT / "scripts" / "pipeline_benchmark.py"), "--model", "vgg11c", "--device", device,
           "--batch-size", "128", "--steps", steps, "--warmup", "3", "--stages", "1", "2"]
    code, seconds, text = run(cmd, args.timeouts[4], out / "pipeline.log")
    table = [ln for ln in text.splitlines() if ln.startswith("|")]
    if code != 0 or not table:
        return f"failed (exit {code}): {last_line(text)}", seconds
    return "\n".join(table), seconds


def environment(args) -> str:
    import torch

    lines = [f"- torch {torch.__version__}, CUDA {torch.version.cuda}, Python {sys.version.split()[0]}"]
    if args.device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"- {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs")
    else:
        lines.append(f"- device {args.device} (no GPU used)")
    lines.append(f"- {os.cpu_count()} CPU cores")
    return "\n".join(lines)


STEPS = (("Every rule, one epoch, fp32 and bf16-mixed", rules_step),
         ("Project vs plain PyTorch (scripts/benchmark.py)", benchmark_step),
         ("data.loader=device throughput", loader_step),
         ("Pipeline, 1 and 2 stages on one device (scripts/pipeline_benchmark.py)", pipeline_step))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    p.add_argument("--step-timeout", type=float, default=None,
                   help="seconds for every step (default: 240, 90, 60, 90: at most 8 minutes in all)")
    p.add_argument("--only", default=None, help="comma-separated step numbers (1-4) to run")
    args = p.parse_args(argv)
    args.timeouts = {k: args.step_timeout or default for k, default in zip(range(1, 5), STEP_TIMEOUTS)}
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = {int(s) for s in args.only.split(",")} if args.only else set(range(1, len(STEPS) + 1))
    t0 = time.perf_counter()
    report = ["# layerwise GPU check", "", environment(args), ""]
    for number, (title, step) in enumerate(STEPS, start=1):
        if number not in chosen:
            continue
        body, seconds = step(args, args.out)
        report += [f"## {number}. {title} ({seconds:.0f} s)", "", body, ""]
        (args.out / "gpu_check.md").write_text("\n".join(report))  # what is done so far survives a kill
        print(f"step {number} done in {seconds:.0f} s", file=sys.stderr, flush=True)
    report.append(f"Total {time.perf_counter() - t0:.0f} s.")
    (args.out / "gpu_check.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

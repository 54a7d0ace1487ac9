#!/usr/bin/env python
"""A small run end to end: `python main.py ...` against scripts/plain_small_run.py doing the same work.

    python scripts/small_run_benchmark.py                       # bp, dgl; 3 interleaved repeats; Markdown table
    python scripts/small_run_benchmark.py --repeats 5 --json small.json

The workload (issue 20): an 8,000 x 28 x 28 synthetic .npz (and 2,000 test images), a 784-512-512-10 MLP, SGD,
batch 64, 10 epochs, a test pass after every epoch, a checkpoint at the end. Each repeat runs every method's
project command and then its plain script, each as a fresh process, so both pay their own interpreter start-up and
imports. Reported per method, medians over the repeats:
- end to end: the process's wall seconds, from its start to its exit;
- loop: the project's summary.json `wall_s` (from before the data are set up to the end of fit: every epoch, every
  test pass, every checkpoint) against the plain script's `loop_s` (first batch to the checkpoint on disk);
- CPU: the child's user + system seconds (steadier than wall time on a shared machine).
Each ratio is the median over the repeats of that repeat's project / plain (the two ran back to back).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ROOT / "scripts" / "plain_small_run.py"


def write_npz(path: Path, n_train: int, n_test: int, size: int = 28, seed: int = 0) -> None:
    """uint8 images: a faint random prototype per class under strong gaussian noise (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(0, 1, (10, size, size))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, n)
        x = np.clip(128 + 6 * prototypes[y] + rng.normal(0, 64, (n, size, size)), 0, 255).astype(np.uint8)
        return x, y

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def project_command(args, method: str, data: Path, run_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), "data=npz", f"data.path={data}", "model=mlp",
            f"model.widths=[{args.widths}]", f"data.batch_size={args.batch_size}", f"method={method}",
            f"trainer.max_epochs={args.epochs}", f"logger={args.logger}", "trainer.progress_bar=false",
            f"hydra.run.dir={run_dir}", *args.override]


def plain_command(args, method: str, data: Path, out: Path) -> list[str]:
    return [sys.executable, str(PLAIN), "--data", str(data), "--method", method, "--widths", args.widths,
            "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--out", str(out)]


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, the child's CPU seconds, the finished process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done


def measure(args) -> list[dict]:
    rows = {m: {"method": m, "project_s": [], "plain_s": [], "project_loop_s": [], "plain_loop_s": [],
                "project_cpu_s": [], "plain_cpu_s": [], "project_acc": [], "plain_acc": []} for m in args.methods}
    with tempfile.TemporaryDirectory(prefix="small_run_") as tmp:
        tmp = Path(tmp)
        data = tmp / "small.npz"
        write_npz(data, args.n_train, args.n_test)
        for repeat in range(args.repeats):
            for method in args.methods:
                run_dir = tmp / f"{method}_{repeat}"
                wall, cpu, _ = timed(project_command(args, method, data, run_dir), tmp)
                summary = json.loads((run_dir / "summary.json").read_text())
                if summary["status"] != "completed":
                    raise SystemExit(f"error: the project's {method} run ended {summary['status']}")
                row = rows[method]
                row["project_s"].append(wall)
                row["project_cpu_s"].append(cpu)
                row["project_loop_s"].append(float(summary["wall_s"]))
                row["project_acc"].append(float(summary["test_acc"]))
                wall, cpu, done = timed(plain_command(args, method, data, tmp / f"plain_{method}.pt"), tmp)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                row["plain_s"].append(wall)
                row["plain_cpu_s"].append(cpu)
                row["plain_loop_s"].append(float(result["loop_s"]))
                row["plain_acc"].append(float(result["test_acc"]))
                if not args.quiet:
                    print(f"repeat {repeat + 1}/{args.repeats} {method}: project {row['project_s'][-1]:.1f} s "
                          f"(loop {row['project_loop_s'][-1]:.1f}), plain {row['plain_s'][-1]:.1f} s "
                          f"(loop {row['plain_loop_s'][-1]:.1f})", file=sys.stderr)
    out = []
    for row in rows.values():
        med = {k: statistics.median(v) for k, v in row.items() if isinstance(v, list)}
        # Each ratio is the median of the repeats' own ratios: a repeat's two processes ran back to back, so a
        # slow spell of the machine divides out, where a ratio of medians would mix different spells.
        paired = {f"{name}_ratio": statistics.median(a / b for a, b in zip(row[f"project{key}"], row[f"plain{key}"]))
                  for name, key in (("end_to_end", "_s"), ("loop", "_loop_s"), ("cpu", "_cpu_s"))}
        out.append({**row, "median": med, **paired})
    return out


def markdown(rows: list[dict], args) -> str:
    lines = ["| method | project s | plain s | end to end ÷ | project loop s | plain loop s | loop ÷ | CPU ÷ | "
             "test acc % project / plain |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        m = r["median"]
        lines.append(f"| {r['method']} | {m['project_s']:.1f} | {m['plain_s']:.1f} | {r['end_to_end_ratio']:.2f} | "
                     f"{m['project_loop_s']:.1f} | {m['plain_loop_s']:.1f} | {r['loop_ratio']:.2f} | "
                     f"{r['cpu_ratio']:.2f} | {100 * m['project_acc']:.1f} / {100 * m['plain_acc']:.1f} |")
    lines.append("")
    lines.append(f"{args.n_train} x 28 x 28 npz ({args.n_test} test), MLP 784-{args.widths.replace(',', '-')}-10, "
                 f"batch {args.batch_size}, {args.epochs} epochs, logger={args.logger}; medians of {args.repeats} "
                 "interleaved repeats (times); ÷ = the median of the repeats' project / plain (targets: end to end "
                 "<= 1.3, loop <= 1.15).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", type=lambda s: s.split(","), default=["bp", "dgl"], help="bp and/or dgl")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--widths", default="512,512")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--logger", default="csv", help="the project's logger= (csv writes metrics.csv; wandb, none)")
    p.add_argument("--override", action="append", default=[], help="more key=value for the project's command")
    p.add_argument("--json", type=Path, default=None, help="write every measurement here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    unknown = sorted(set(args.methods) - {"bp", "dgl"})
    if unknown:
        p.error(f"--methods {','.join(unknown)}: the plain script implements bp and dgl")
    rows = measure(args)
    print(markdown(rows, args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

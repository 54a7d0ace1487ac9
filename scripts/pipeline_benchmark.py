"""Pipeline speedup of DGL: K=1 (one process) vs K=2 stages (two processes) at the same total thread count.

    python scripts/pipeline_benchmark.py --model basic_cnn --batch-size 128 --steps 20
    python scripts/pipeline_benchmark.py --model vgg11c --device gpu      # on a GPU machine
    python scripts/pipeline_benchmark.py --model mlp --override data.channels=1 \
        --override 'model.widths=[1024,1024,1024,1024]' --batch-size 64      # FLOP-balanced blocks

Training images per second in steady state (after `warmup` batches) at the last stage, on synthetic 32x32
data, method=dgl, trainer=pipeline with buffer 0. On CPU the total thread budget is fixed (default 2): K=1 runs
one process with 2 threads, K=2 two processes with 1 thread each (torch.set_num_threads): the pipeline against
intra-op threading. With --threads-per-process 1 every process gets one thread: K=2 against one process of the
same size, the pipeline's own scaling.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cfg(model: str, batch_size: int, steps: int, stages: int, threads: int, warmup: int, device: str,
         extra: list[str]):
    from hydra import compose, initialize_config_dir

    overrides = [f"model={model}", "method=dgl", "data=synthetic", "data.image_size=32",
                 f"data.batch_size={batch_size}", f"data.n_train={batch_size * (steps + warmup)}",
                 f"data.n_test={batch_size}", "trainer=pipeline", f"trainer.pipeline.stages={stages}",
                 f"trainer.pipeline.threads_per_stage={threads}", f"trainer.pipeline.warmup_batches={warmup}",
                 "trainer.max_epochs=1", "trainer.limit_val_batches=1", f"trainer.accelerator={device}",
                 "logger=none", *extra]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def measure(model: str, batch_size: int, steps: int, stages: list[int], *, threads: int = 2, warmup: int = 3,
            device: str = "cpu", extra: list[str] = (), threads_per_process: int | None = None) -> list[dict]:
    """One row per stage count: stages, threads_per_process, imgs_per_sec, speedup (vs the first entry, K=1).
    `threads` is split evenly over the stages; `threads_per_process` instead gives every process that many."""
    from layerwise.runs.pipeline import train_pipeline

    rows: list[dict] = []
    for k in stages:
        per_process = threads_per_process or max(1, threads // k)
        cfg = _cfg(model, batch_size, steps, k, per_process, warmup, device, list(extra))
        with tempfile.TemporaryDirectory(prefix="pipeline_bench_") as tmp:
            result = train_pipeline(cfg, Path(tmp))
        ips = float(result["steady_imgs_per_sec"] or 0.0)
        rows.append({"model": model, "batch_size": batch_size, "device": device, "stages": k,
                     "blocks": [list(range(a, b)) for a, b in zip(result["plan"].starts, result["plan"].starts[1:])],
                     "threads_per_process": per_process, "imgs_per_sec": round(ips, 1)})
    base = rows[0]["imgs_per_sec"] if rows else 0.0
    for row in rows:
        row["speedup"] = round(row["imgs_per_sec"] / base, 2) if base else None
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | batch | device | stages (blocks) | threads/process | img/s | speedup |",
             "|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        blocks = " ".join("[" + ",".join(map(str, b)) + "]" for b in r["blocks"])
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['device']} | {r['stages']} {blocks} | "
                     f"{r['threads_per_process']} | {r['imgs_per_sec']:.1f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["basic_cnn"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed batches after the warm-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2, help="total CPU threads, split evenly over the stages")
    parser.add_argument("--threads-per-process", type=int, default=None,
                        help="instead of --threads: this many threads in every process (K=2 then uses K times more)")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--override", action="append", default=[], help="more KEY=VALUE for every run")
    args = parser.parse_args(argv)
    from layerwise.runlog import setup_console

    setup_console("WARNING")
    rows = [row for model in args.model
            for row in measure(model, args.batch_size, args.steps, args.stages, threads=args.threads,
                               warmup=args.warmup, device=args.device, extra=args.override,
                               threads_per_process=args.threads_per_process)]
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

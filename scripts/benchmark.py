#!/usr/bin/env python
"""Training throughput and activation memory of the project's loop next to a minimal plain-PyTorch BP loop.

    python scripts/benchmark.py                                   # basic_cnn, vgg11c x bp, dgl on CPU, batch 128
    python scripts/benchmark.py --models vgg16 --methods bp,dgl --steps 3 --repeats 3 --json vgg16.json
    python scripts/benchmark.py --device cuda --models vgg16 --steps 50
    python scripts/benchmark.py --pipeline                        # + scripts/pipeline_benchmark.py's K=1 vs K=2
    python scripts/benchmark.py --cli                             # the CLI's own latency (see cli_table)
    python scripts/benchmark.py --models resnet32,resnet110 --methods bp,dgl,infopro --blocks 2,4,8,16 \
        --split infopro --batch-size 32                           # activation memory per number of modules K

What is timed, in one process, with data already in memory (one synthetic batch of the dataset's shape reused,
so no loader or augmentation is measured):
- project: the experiment built as `layerwise.runs.train` builds it (build_network, build_rule, LayerwiseModule) and
  trained by a real Lightning Trainer (manual optimization, self.log on, loggers/checkpoints/validation off):
  `Trainer.fit` with limit_train_batches = warmup + steps; a Callback times from the start of the first batch
  after warm-up to the end of the last one (everything the Lightning loop does per batch is inside the window).
- plain: the same network (built from the same config and seed), one optimizer with the same settings, and
  `opt.zero_grad(set_to_none=True); F.cross_entropy(net(x), y).backward(); opt.step()`: the overhead reference.
Repeats are interleaved (every method's project run, then plain, then again ...) and medians reported.

With --blocks K1,K2,...: every method but bp runs once per K (model.blocks=K, model.split=--split), so the table
shows each local rule's activation memory against BP's at every number of local modules (InfoPro, Wang et al.
2021, Fig. 1 / Table 7: about 40 % less GPU memory than end to end at K = 2 on ResNet-110).

Memory: on CPU the bytes autograd saves for backward (layerwise.core.memory.ActivationMeter; for the project run it is
the module's own meter, i.e. what train/peak_activation_mb reports); on CUDA torch.cuda.max_memory_allocated over
the timed batches minus what was allocated when they started (weights, optimizer state).

FLOP/s: torch.utils.flop_counter.FlopCounterMode counts one training step of the rule (forward + backward, no
optimizer step). The ceiling is a micro-benchmark of the same convolutions and linear layers (the shapes the step
used, with an input gradient only where the step needed one) run in isolation; efficiency = achieved / ceiling.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import os
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PIPELINE_SCRIPT = Path(__file__).resolve().with_name("pipeline_benchmark.py")
MB = 2**20


# ------------------------------------------------------------------------------------------------ experiment
def compose(model: str, method: str, batch_size: int, accelerator: str, extra: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = [f"model={model}", f"method={method}", "data=synthetic", f"data.batch_size={batch_size}",
                 # the synthetic set is only used for its shape; keep its generation cheap
                 "data.n_train=64", "data.n_test=8", f"trainer.accelerator={accelerator}", "logger=none",
                 # the CPU meter's hooks run on the first warm-up batch only, never in the timed window
                 "trainer.progress_bar=false", "trainer.memory_batches=1", *extra]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def overrides_for(method: str, overrides: list[str]) -> list[str]:
    """`key=value` applies to every method, `dgl:key=value` to method dgl only (e.g. options bp does not have)."""
    chosen = []
    for item in overrides:
        scope, sep, rest = item.partition(":")
        if sep and "=" not in scope:
            if scope == method:
                chosen.append(rest)
        else:
            chosen.append(item)
    return chosen


def synthetic_batch(cfg, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from layerwise.data import ImageDataModule

    datamodule = ImageDataModule(cfg.data)
    datamodule.setup("fit")
    info = datamodule.info
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, info.channels, info.size, info.size, generator=gen)
    y = torch.randint(0, info.num_classes, (batch_size,), generator=gen)
    return x.to(device), y.to(device)


def build_project(cfg):
    from layerwise.config.checks import check_config
    from layerwise.core.experiment import build_experiment

    check_config(cfg)
    return build_experiment(cfg)[1]


def build_plain(cfg) -> tuple[nn.Module, torch.optim.Optimizer]:
    from layerwise.core.optim import build_optimizer
    from layerwise.data import ImageDataModule
    from layerwise.models import build_network

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = ImageDataModule(cfg.data)
    datamodule.setup("fit")
    net = build_network(cfg.model, datamodule.info.spec)
    return net, build_optimizer(net.parameters(), cfg.optimizer)


class RepeatedBatch(torch.utils.data.Dataset):
    """The same in-memory batch `n` times (used with batch_size=None: no collation, nothing copied)."""

    def __init__(self, batch, n: int):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx):
        return self.batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ timing
@dataclass
class Window:
    """Per-batch seconds and the CUDA peak bytes over the timed batches of one repeat."""

    batch_seconds: list[float] = field(default_factory=list)
    # CPU seconds the process got per batch: on a shared CPU machine far steadier than wall time
    batch_cpu_seconds: list[float] = field(default_factory=list)
    cuda_peak_bytes: int = 0


class TimedBatches(L.Callback):
    """Times each of the batches warmup .. warmup+steps-1 of one fit into `window`: from one batch's start hook to
    its end hook, the whole of what Lightning's loop and LayerwiseModule.training_step do for that batch."""

    def __init__(self, warmup: int, steps: int, device: torch.device, window: Window):
        self.warmup, self.last, self.device, self.window = warmup, warmup + steps - 1, device, window
        self.base, self.t0, self.c0 = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.base = _start_window(self.device)
        synchronize(self.device)
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        synchronize(self.device)
        if batch_idx >= self.warmup:
            self.window.batch_seconds.append(time.perf_counter() - self.t0)
            self.window.batch_cpu_seconds.append(time.process_time() - self.c0)
        if batch_idx == self.last:
            self.window.cuda_peak_bytes = _end_window(self.device, self.base)


def _start_window(device: torch.device) -> int:
    synchronize(device)
    if device.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _end_window(device: torch.device, base: int) -> int:
    return torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else 0


def trainer_kwargs(device: torch.device) -> dict:
    if device.type == "cuda":
        return dict(accelerator="gpu", devices=[device.index or 0])
    return dict(accelerator="cpu", devices=1)


def run_project(module, batch, device: torch.device, warmup: int, steps: int) -> Window:
    """One repeat: a fresh Trainer (fresh optimizers, as at the start of a run) fits warmup + steps batches."""
    window = Window()
    n = warmup + steps
    loader = torch.utils.data.DataLoader(RepeatedBatch(batch, n), batch_size=None, num_workers=0)
    trainer = L.Trainer(**trainer_kwargs(device), precision="32-true", max_epochs=1, limit_train_batches=n,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TimedBatches(warmup, steps, device, window)])
    trainer.fit(module, train_dataloaders=loader)
    return window


def run_plain(net: nn.Module, opt: torch.optim.Optimizer, batch, device: torch.device, warmup: int,
              steps: int, meter=None) -> Window:
    x, y = batch
    net.train()

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    if meter is not None:  # CPU activation bytes of one step (outside the timed window: the hooks cost time)
        with meter.track(device):
            step()
    window = Window()
    base = _start_window(device)
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        synchronize(device)
        window.batch_seconds.append(time.perf_counter() - t0)
        window.batch_cpu_seconds.append(time.process_time() - c0)
    window.cuda_peak_bytes = _end_window(device, base)
    return window


# ------------------------------------------------------------------------------------------------ FLOPs
@dataclass
class LayerCall:
    kind: str                  # "conv" or "linear"
    module: nn.Module
    shape: tuple[int, ...]
    input_grad: bool


def one_step(module, batch) -> None:
    """One forward + backward of the rule on `batch` without stepping (the gradients are dropped after)."""
    from layerwise.core.batch import backward_only, run_batch

    x, y = batch
    module.train()
    run_batch(module.net, module.rule, x, y, backward_only, lambda i: None)
    module.zero_grad(set_to_none=True)


def step_flops_and_layers(module, batch) -> tuple[int, list[LayerCall]]:
    from torch.utils.flop_counter import FlopCounterMode

    calls: list[LayerCall] = []

    def hook(mod, inputs, output):
        kind = "conv" if isinstance(mod, nn.Conv2d) else "linear"
        calls.append(LayerCall(kind, mod, tuple(inputs[0].shape), bool(inputs[0].requires_grad)))

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            one_step(module, batch)
    finally:
        for h in handles:
            h.remove()
    return counter.get_total_flops(), calls


class ConvCeiling:
    """The step's conv/linear layers run alone (forward + backward, an input gradient only where the step had one),
    on fresh copies and random data of the same shapes: what the same arithmetic costs without the rest of a step."""

    def __init__(self, calls: list[LayerCall], device: torch.device):
        from torch.utils.flop_counter import FlopCounterMode

        self.device, self.jobs = device, []
        for call in calls:
            mod = copy.deepcopy(call.module).to(device)
            x = torch.randn(call.shape, device=device, requires_grad=call.input_grad)
            with torch.no_grad():
                g = torch.randn_like(mod(x))
            self.jobs.append((mod, x, g))
        counter = FlopCounterMode(display=False)
        with counter:
            self._run()
        self.flops = counter.get_total_flops()

    def _run(self) -> None:
        for mod, x, g in self.jobs:
            mod.zero_grad(set_to_none=True)
            x.grad = None
            mod(x).backward(g)

    def seconds(self) -> float:
        synchronize(self.device)
        t0 = time.perf_counter()
        self._run()
        synchronize(self.device)
        return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ one model
@dataclass
class Result:
    model: str
    method: str
    blocks: int | None = None  # --blocks: the number of local modules K of this run; None: the model's default
    project_s: list[list[float]] = field(default_factory=list)  # per repeat, per timed batch
    plain_s: list[list[float]] = field(default_factory=list)
    project_cpu_s: list[float] = field(default_factory=list)  # every timed batch
    plain_cpu_s: list[float] = field(default_factory=list)
    project_mem: list[int] = field(default_factory=list)
    plain_mem: list[int] = field(default_factory=list)
    flops: int = 0
    ceiling_flops: int = 0
    ceiling_s: list[float] = field(default_factory=list)  # one per repeat


def _ips(args, w: Window) -> float:
    return args.batch_size / statistics.median(w.batch_seconds)


def runs_for(methods: list[str], blocks: list[int] | None,
             split: str | None) -> dict[str, tuple[str, int | None, list[str]]]:
    """label -> (method, K, extra overrides): bp once; every other method once per K of --blocks (or once)."""
    runs = {}
    for m in methods:
        for k in ([None] if not blocks or m == "bp" else blocks):
            extra = [] if k is None else [f"model.blocks={k}"] + ([f"model.split={split}"] if split else [])
            runs[m if k is None else f"{m}@K={k}"] = (m, k, extra)
    return runs


def bench_model(model: str, methods: list[str], args, device: torch.device, log) -> list[Result]:
    from layerwise.core.memory import ActivationMeter

    accelerator = "gpu" if device.type == "cuda" else "cpu"
    runs = runs_for(methods, args.blocks, args.split)
    cfgs = {label: compose(model, m, args.batch_size, accelerator, overrides_for(m, args.override) + extra)
            for label, (m, _, extra) in runs.items()}
    first = next(iter(cfgs.values()))
    batch = synthetic_batch(first, args.batch_size, device)
    modules = {m: build_project(cfg) for m, cfg in cfgs.items()}
    net, opt = build_plain(first)
    net.to(device)
    results = {label: Result(model, m, k) for label, (m, k, _) in runs.items()}

    ceilings = {}
    for m, module in modules.items():  # FLOPs before any timing (the module is on CPU until fit)
        module.to(device)
        res = results[m]
        res.flops, calls = step_flops_and_layers(module, batch)
        ceilings[m] = ConvCeiling(calls, device)
        res.ceiling_flops = ceilings[m].flops
        log(f"  {model}/{m}: {res.flops / 1e9:.2f} GFLOP per step, {len(calls)} conv/linear calls")

    for r in range(args.repeats):
        for m, module in modules.items():
            w = run_project(module, batch, device, args.warmup, args.steps)
            res = results[m]
            res.project_s.append(w.batch_seconds)
            res.project_cpu_s += w.batch_cpu_seconds
            res.project_mem.append(w.cuda_peak_bytes if device.type == "cuda" else module.meter.peak_bytes)
            res.ceiling_s.append(ceilings[m].seconds())  # interleaved too: the machine's state now
            log(f"  repeat {r + 1}/{args.repeats} {model}/{m} project: {_ips(args, w):.1f} img/s")
        meter = ActivationMeter() if device.type != "cuda" else None
        w = run_plain(net, opt, batch, device, args.warmup, args.steps, meter)
        for res in results.values():
            res.plain_s.append(w.batch_seconds)
            res.plain_cpu_s += w.batch_cpu_seconds
            res.plain_mem.append(w.cuda_peak_bytes if meter is None else meter.peak_bytes)
        log(f"  repeat {r + 1}/{args.repeats} {model} plain bp: {_ips(args, w):.1f} img/s")
    return list(results.values())


# ------------------------------------------------------------------------------------------------ report
def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def rows_from(results: list[Result], args) -> list[dict]:
    b, cpu = args.batch_size, not args.device.startswith("cuda")
    rows = []
    for res in results:
        # Medians over every timed batch of every repeat: robust to the bursts of a shared machine.
        proj_t = statistics.median(t for rep in res.project_s for t in rep)
        plain_t = statistics.median(t for rep in res.plain_s for t in rep)
        rows.append({
            "model": res.model, "method": res.method, "blocks": res.blocks,
            "project_imgs_per_sec": b / proj_t,
            "project_imgs_per_sec_repeats": [b / statistics.median(rep) for rep in res.project_s],
            "plain_bp_imgs_per_sec": b / plain_t,
            "plain_bp_imgs_per_sec_repeats": [b / statistics.median(rep) for rep in res.plain_s],
            # CPU device: images per CPU-second the process got (wall time counts other users' load too)
            "project_imgs_per_cpu_sec": b / statistics.median(res.project_cpu_s) if cpu else None,
            "plain_bp_imgs_per_cpu_sec": b / statistics.median(res.plain_cpu_s) if cpu else None,
            "project_peak_activation_mb": statistics.median(res.project_mem) / MB,
            "plain_bp_peak_activation_mb": statistics.median(res.plain_mem) / MB,
            "gflop_per_step": res.flops / 1e9,
            "achieved_gflops": res.flops / 1e9 / proj_t,
            "ceiling_gflops": res.ceiling_flops / 1e9 / statistics.median(res.ceiling_s),
        })
    for row in rows:
        bp = next((r for r in rows if r["model"] == row["model"] and r["method"] == "bp"), None)
        row["project_over_plain"] = _ratio(row["project_imgs_per_sec"], row["plain_bp_imgs_per_sec"])
        row["project_over_plain_cpu_time"] = _ratio(row["project_imgs_per_cpu_sec"], row["plain_bp_imgs_per_cpu_sec"])
        row["method_over_bp_cpu_time"] = _ratio(row["project_imgs_per_cpu_sec"], bp and bp["project_imgs_per_cpu_sec"])
        row["memory_project_over_plain"] = _ratio(row["project_peak_activation_mb"], row["plain_bp_peak_activation_mb"])
        row["method_over_bp_imgs_per_sec"] = _ratio(row["project_imgs_per_sec"], bp and bp["project_imgs_per_sec"])
        row["method_over_bp_memory"] = _ratio(row["project_peak_activation_mb"],
                                              bp and bp["project_peak_activation_mb"])
        row["efficiency"] = _ratio(row["achieved_gflops"], row["ceiling_gflops"])
    return rows


COLUMNS = [  # (header, key, format)
    ("model", "model", "{}"), ("method", "method", "{}"), ("K", "blocks", "{}"),
    ("project img/s", "project_imgs_per_sec", "{:.1f}"), ("plain BP img/s", "plain_bp_imgs_per_sec", "{:.1f}"),
    ("project/plain", "project_over_plain", "{:.3f}"), ("method/BP img/s", "method_over_bp_imgs_per_sec", "{:.3f}"),
    ("project/plain CPU-time", "project_over_plain_cpu_time", "{:.3f}"),
    ("method/BP CPU-time", "method_over_bp_cpu_time", "{:.3f}"),
    ("act. MB", "project_peak_activation_mb", "{:.1f}"), ("plain BP act. MB", "plain_bp_peak_activation_mb", "{:.1f}"),
    ("method/BP mem", "method_over_bp_memory", "{:.3f}"), ("GFLOP/step", "gflop_per_step", "{:.2f}"),
    ("GFLOP/s", "achieved_gflops", "{:.1f}"), ("conv ceiling GFLOP/s", "ceiling_gflops", "{:.1f}"),
    ("efficiency", "efficiency", "{:.2f}"),
]


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "—" for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pipeline_section(args) -> tuple[str, dict]:
    """scripts/pipeline_benchmark.py's K=1 vs K=2 table; a missing or failing module is reported, not raised."""
    script = args.pipeline_script
    if not script.exists():
        msg = f"pipeline benchmark skipped: {script} not found"
        return msg, {"error": msg}
    try:
        spec = importlib.util.spec_from_file_location("pipeline_benchmark", script)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        rows = []
        for model in args.models:
            rows += mod.measure(model, args.batch_size, args.steps, args.pipeline_stages)
        return mod.markdown(rows), {"rows": rows}
    except Exception as err:  # noqa: BLE001 - the main table must survive a broken optional part
        msg = f"pipeline benchmark failed: {type(err).__name__}: {err}"
        return msg, {"error": msg, "traceback": traceback.format_exc()}


# ------------------------------------------------------------------------------------------------ --cli
#: What `--cli` times, each a fresh `python ...` (first: the reference every other row is compared with).
CLI_COMMANDS = {
    "python -c 'import torch'": ["-c", "import torch"],
    "main.py seed=-1 (config error)": [str(ROOT / "main.py"), "seed=-1"],
    "main.py method=dgl method.aux.type=bogus": [str(ROOT / "main.py"), "method=dgl", "method.aux.type=bogus"],
    "main.py model.activation=sign method=bp": [str(ROOT / "main.py"), "model.activation=sign", "method=bp"],
    "main.py --cfg job": [str(ROOT / "main.py"), "--cfg", "job"],
    "main.py --help": [str(ROOT / "main.py"), "--help"],
}


def cli_table(repeats: int, log) -> tuple[str, dict]:
    """Wall and CPU seconds (user + system, steadier than wall on a shared machine) of each CLI_COMMANDS entry,
    medians of `repeats` interleaved runs, and their ratios to `import torch` (DESIGN.md: config errors, --cfg job
    and --help return before torch is imported)."""
    import resource
    import subprocess

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    times: dict[str, list[float]] = {name: [] for name in CLI_COMMANDS}
    cpu: dict[str, list[float]] = {name: [] for name in CLI_COMMANDS}
    codes: dict[str, int] = {}
    for r in range(repeats):
        for name, args in CLI_COMMANDS.items():
            start, start_cpu = time.perf_counter(), children_cpu()
            res = subprocess.run([sys.executable, *args], capture_output=True, cwd=ROOT, env=env)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(children_cpu() - start_cpu)
            codes[name] = res.returncode
            log(f"repeat {r + 1}/{repeats}: {name}: {times[name][-1]:.2f} s, {cpu[name][-1]:.2f} CPU s "
                f"(exit {res.returncode})")
    medians = {name: statistics.median(t) for name, t in times.items()}
    cpu_medians = {name: statistics.median(t) for name, t in cpu.items()}
    first = next(iter(CLI_COMMANDS))
    reference, cpu_reference = medians[first], cpu_medians[first]
    lines = ["| command | exit | wall s | / import torch | CPU s | / import torch |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {codes[name]} | {medians[name]:.2f} | {medians[name] / reference:.2f} | "
              f"{cpu_medians[name]:.2f} | {cpu_medians[name] / cpu_reference:.2f} |" for name in medians]
    what = (f"a fresh `{Path(sys.executable).name} ...` each: wall seconds and CPU seconds (user + system), medians "
            f"of {repeats} interleaved repeats")
    return "\n".join(lines) + "\n\n" + what, {"medians_s": medians, "times_s": times, "cpu_medians_s": cpu_medians,
                                               "cpu_s": cpu, "exit_codes": codes}


# ------------------------------------------------------------------------------------------------ CLI
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    csv = lambda s: [v.strip() for v in s.split(",") if v.strip()]  # noqa: E731
    p.add_argument("--models", type=csv, default=["basic_cnn", "vgg11c"], help="comma-separated conf/model names")
    p.add_argument("--methods", type=csv, default=["bp", "dgl"], help="comma-separated conf/method names")
    p.add_argument("--blocks", type=lambda s: [int(v) for v in csv(s)], default=None,
                   help="comma-separated numbers of local modules K: every method but bp runs once per K "
                        "(model.blocks=K), e.g. --blocks 2,4,8,16")
    p.add_argument("--split", default=None, help="with --blocks: model.split (even | flops | memory | infopro)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="timed batches per repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches before them, every repeat (>= 1)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:i")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--override", action="append", default=[],
                   help="extra Hydra override (repeatable): key=value for every method, e.g. model.width_mult=0.25, "
                        "or METHOD:key=value for one, e.g. dgl:method.aux.pool_size=2")
    p.add_argument("--pipeline", action="store_true", help="append scripts/pipeline_benchmark.py's K=1 vs K=2 table")
    p.add_argument("--pipeline-script", type=Path, default=PIPELINE_SCRIPT, help=argparse.SUPPRESS)  # for tests
    p.add_argument("--pipeline-stages", type=lambda s: [int(v) for v in csv(s)], default=[1, 2])
    p.add_argument("--cli", action="store_true",
                   help="time the CLI instead of training: import torch vs a config error vs --cfg job vs --help")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if min(args.steps, args.repeats, args.warmup, args.batch_size) < 1:
        p.error("--steps, --warmup, --repeats and --batch-size must be >= 1 (warm-up batch 0 measures memory)")
    if args.blocks is not None and min(args.blocks, default=0) < 1:
        p.error("--blocks takes numbers of modules >= 1, e.g. --blocks 2,4,8,16")
    if args.split is not None:
        if not args.blocks:
            p.error("--split needs --blocks (it says how model.blocks=K groups the layers)")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        p.error(f"--device {args.device!r}: use cpu, cuda or cuda:i")
    return args


def quiet_libraries() -> None:
    os.environ.setdefault("WANDB_MODE", "disabled")
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from loguru import logger

    logger.remove()


def main(argv=None) -> int:
    args = parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.cli:
        text, data = cli_table(args.repeats, log)
        print(text)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"cli": data}, indent=2))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible; use --device cpu", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    log(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"{args.warmup} warm-up + {args.steps} timed steps x {args.repeats} interleaved repeats")
    results = []
    for model in args.models:
        results += bench_model(model, args.methods, args, device, log)
    rows = rows_from(results, args)
    what = (f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
            f"img/s = batch / median batch time over {args.repeats} interleaved repeats x {args.steps} timed steps "
            f"(after {args.warmup} warm-up each). "
            "project = Lightning Trainer.fit over LayerwiseModule.training_step; plain = zero_grad/CE backward/step "
            "on the same network and optimizer config. CPU-time ratios: the same with process CPU seconds per batch "
            "instead of wall seconds (steadier on a shared machine; CPU device only). act. MB = " +
            ("torch.cuda.max_memory_allocated above the resting allocation" if device.type == "cuda"
             else "bytes autograd saves for backward (ActivationMeter)") +
            "; efficiency = achieved GFLOP/s / GFLOP/s of the step's conv+linear layers timed alone"
            " (median per repeat).")
    out = markdown(rows) + "\n\n" + what
    report = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "timed": what, "rows": rows}
    if args.pipeline:
        text, data = pipeline_section(args)
        out += "\n\n" + text
        report["pipeline"] = data
    print(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

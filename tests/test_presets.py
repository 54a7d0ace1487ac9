"""Every preset in conf/experiment/ composes, and every job of its sweep trains one tiny step.

Presets are found by glob, so a new conf/experiment/*.yaml is covered without touching this file. Each preset is
composed with its Hydra config to read `hydra.sweeper.params`; every combination of the sweep (or, for a large
sweep, enough combinations to use every value once) then runs one training step in-process on synthetic data shaped
like the preset's dataset (channels, image size), with the model narrowed: the rule, the architecture and the
preset's own settings are the real ones, only the sizes shrink. A preset that stops composing, names a key that
moved, or pairs a rule with a model it cannot train fails here, not after a day in the queue.
"""
from __future__ import annotations

import functools
import itertools
import math
import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from torch import nn

from conftest import ROOT, compose_cfg, fit_cfg, run_cli

EXPERIMENTS = ROOT / "conf" / "experiment"
PRESETS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
MAX_COMBOS = 8  # a larger sweep runs enough combinations to use each value of each key once
TINY_TRAIN = ["trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
              "trainer.limit_val_batches=1", "trainer.memory_batches=1", "trainer.progress_bar=false", "logger=none",
              "data.batch_size=8", "data.n_train=8", "data.n_test=8", "data.num_workers=0"]
# Narrow every width a config has (keys it lacks are skipped), so a VGG16 or a DNI synthesizer runs in a blink.
NARROW = {"model.width_mult": 0.0625, "method.synthesizer.channels": 8, "method.synthesizer.hidden_dim": 16,
          "method.aux.hidden_dim": 16, "method.aux.cnn_channels": 8, "method.decoder_channels": 4,
          "method.feature_dim": 16, "method.dim_in_decoder": 256}
# Presets whose networks do not shrink: torchvision models ignore model.width_mult, and one step of VGG-13 or
# ResNet-152 (133M / 60M parameters) would take minutes and gigabytes. Their jobs are checked by
# test_unshrinkable_preset_job_builds_its_modules instead: config validated, network built on the meta device.
NO_TINY_STEP = {"belilovsky_dgl_imagenet"}
# Presets whose jobs repeat another preset's variants on a deeper net: `make test` trains only the job named here
# (ResNet-110's deepest split); the others are slow, as wang_infopro_resnet32_cifar10 trains the same variant
# files and test_schema validates every ResNet-110 job's config.
ONE_FAST_JOB = {"wang_infopro_resnet110_cifar10": "experiment/variants/wang_infopro=resnet110_k16",
                # ResNet-110 at K=55 builds 51 aux networks; the resnet32 job trains the same rule and options
                "ma_auglocal_cifar10": "experiment/variants/ma_auglocal=resnet32",
                # the comparison tables' jobs are each rule at its defaults, trained by the rules' own tests and the
                # smoke table (test_training); one job each keeps the preset's own settings tested here
                "local_rules_digits": "experiment/variants/local_rules_digits=forward_forward",
                "learned_feedback_digits": "method=pepita",
                # bp/fa/usf/dfa variant files are trained by the biotorch_lenet presets; frsf shares brsf's code path
                "biotorch_resnet20_cifar10": "experiment/variants/biotorch=brsf"}
# Presets whose one job is slow and repeats a cheaper test: test_resnets runs forward_gradient on ResNet-18 with the
# CIFAR stem, test_schema and test_preset_composes_from_the_cli validate the preset's config.
SLOW_PRESETS = {"fournier_fg_resnet18_cifar10"}


@functools.lru_cache(maxsize=None)
def preset_config(name: str, overrides: tuple[str, ...] = ()):
    """The preset composed with its Hydra config (hydra.sweeper.params), read-only and cached."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}", *overrides], return_hydra_config=True)


@functools.lru_cache(maxsize=None)
def sweep_jobs(name: str) -> list[list[str]]:
    """The preset's sweep as lists of overrides, one list per job to test."""
    params = preset_config(name).hydra.sweeper.params or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
            else [f"{o.get_key_element()}={o.get_value_element_as_str()}"] for o in parsed]
    if not axes:
        return [[]]
    if math.prod(len(a) for a in axes) <= MAX_COMBOS:
        return [list(combo) for combo in itertools.product(*axes)]
    return [[axis[i % len(axis)] for axis in axes] for i in range(max(len(a) for a in axes))]


def tiny_overrides(name: str, job: list[str]) -> list[str]:
    """Synthetic data shaped like the preset's dataset, and every width the composed job has narrowed."""
    from layerwise.data import TORCHVISION_SETS

    cfg = preset_config(name, tuple(job))
    data = cfg.data
    if data.name in TORCHVISION_SETS:
        size, channels = TORCHVISION_SETS[data.name][3], TORCHVISION_SETS[data.name][4]
    else:
        size, channels = 32, data.channels
    size = data.image_size or size
    out = ["data=synthetic", f"data.image_size={size}", f"data.channels={channels}"]
    for key, value in NARROW.items():
        if OmegaConf.select(cfg, key, default=None) is not None:
            out.append(f"{key}={value}")
    # conv widths (basic_cnn's channels too) scale with width_mult; head and MLP widths are capped here
    for key in ("model.head_hidden", "model.widths"):
        widths = OmegaConf.select(cfg, key, default=None)
        if widths:
            out.append(f"{key}=[{','.join(str(min(int(w), 16)) for w in widths)}]")
    return out


def _all_jobs() -> list[tuple[str, list[str] | None]]:
    jobs = []
    for name in PRESETS:
        try:
            jobs += [(name, job) for job in sweep_jobs(name)]
        except Exception:  # noqa: BLE001 - a preset that does not compose: its test below re-raises the error
            jobs.append((name, None))
    return jobs


JOBS = _all_jobs()
TINY_JOBS = [j for j in JOBS if j[0] not in NO_TINY_STEP]
BIG_JOBS = [j for j in JOBS if j[0] in NO_TINY_STEP]


def _job_id(item) -> str:
    name, job = item
    return name + ("[" + ",".join(o.split("=", 1)[1] for o in job) + "]" if job else "")


def test_presets_are_found():
    assert "quickstart" in PRESETS and len(PRESETS) >= 2


@pytest.mark.parametrize("name", PRESETS)
def test_preset_header_names_its_numbers_and_tags(name):
    """Each preset opens with a comment saying how to run it and what was published (or that nothing was);
    its run name starts with the preset's tag and, where it sets logger tags, they name the preset."""
    text = (EXPERIMENTS / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_"), name
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert f"experiment={name}" in header
    if name != "quickstart":
        assert re.search(r"published", header, re.IGNORECASE), f"{name}: say what was published (or that nothing was)"
        names = []
        for job in sweep_jobs(name):
            cfg = preset_config(name, tuple(job))
            names.append(str(cfg.name))
            assert names[-1].startswith(f"{name}_"), (name, job, names[-1])
            assert list(cfg.logger.tags) == [name], (name, cfg.logger.tags)
        assert len(set(names)) == len(names), f"{name}: two jobs of the sweep share a run name: {names}"


def _tiny_params():
    slow = [pytest.mark.slow]
    return [pytest.param(name, job, id=_job_id((name, job)),
                         marks=slow if name in SLOW_PRESETS or (name in ONE_FAST_JOB
                                                                and ONE_FAST_JOB[name] not in (job or [])) else [])
            for name, job in TINY_JOBS]


@pytest.mark.parametrize("name, job", _tiny_params())
def test_preset_job_trains_one_tiny_step(name, job, tmp_path):
    if job is None:
        sweep_jobs.cache_clear()
        sweep_jobs(name)  # raises the composition error
    summary = fit_cfg([f"experiment={name}", *job, *tiny_overrides(name, job), *TINY_TRAIN], tmp_path)
    assert summary["status"] == "completed" and summary["epochs_done"] == 1, summary
    assert math.isfinite(summary["test_loss"]), summary


@pytest.mark.parametrize("name, job", BIG_JOBS, ids=[_job_id(j) for j in BIG_JOBS])
def test_unshrinkable_preset_job_builds_its_modules(name, job):
    """The job's config passes the checks a run makes, and its network, built on the meta device (shapes only: no
    memory, no init arithmetic), has the modules model.blocks asks for and maps an input of the data's size to
    one logit per class."""
    from layerwise.config.checks import check_config
    from layerwise.models import InputSpec, build_network

    assert job is not None, f"{name} does not compose"
    cfg = compose_cfg([f"experiment={name}", *job])
    check_config(cfg)
    spec = InputSpec(3, int(cfg.data.image_size), 1000)
    with torch.device("meta"):
        net = build_network(cfg.model, spec)
        logits = net(torch.empty(2, 3, spec.size, spec.size))
    blocks = cfg.model.blocks
    assert len(net.blocks) == (len(blocks) if blocks is not None else {"vgg13_bn": 10, "resnet152": 51}[cfg.model.arch])
    assert tuple(logits.shape) == (2, 1000)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_from_the_cli(name, tmp_path):
    """`python main.py experiment=<name> --cfg job` prints the composed job config (nothing runs)."""
    proc = run_cli([f"experiment={name}", "--cfg", "job"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.method.name and cfg.model.name and cfg.data.name


# ---- LeNet (model=lenet), added for the biotorch presets ----

def _lenet(channels: int, size: int):
    from layerwise.models import InputSpec, build_network

    return build_network(compose_cfg(["model=lenet"]).model, InputSpec(channels, size, 10))


@pytest.mark.parametrize("channels, size, pad", [(1, 28, 2), (3, 32, 0)], ids=["mnist-1x28x28", "cifar-3x32x32"])
def test_lenet_layer_shapes(channels, size, pad):
    net = _lenet(channels, size)
    assert len(net.blocks) == 2
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (channels, 6, (5, 5), (pad, pad)), (6, 16, (5, 5), (0, 0))]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    for block in net.blocks:
        assert [type(m) for m in block] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    linears = [m for m in net.head.modules() if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(16 * 5 * 5, 120), (120, 84), (84, 10)]
    x = torch.randn(2, channels, size, size)
    assert [tuple(o.shape) for o in net.block_outputs(x)] == [(2, 6, 14, 14), (2, 16, 5, 5)]
    assert net(x).shape == (2, 10)
    # 61,706 parameters on MNIST: LeNet-5's count (with 1 input channel; 62,006 with 3)
    assert sum(p.numel() for p in net.parameters()) == (61706 if channels == 1 else 62006)


def test_lenet_too_small_input_says_so():
    from layerwise.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 12 px"):
        _lenet(1, 8)


@pytest.mark.parametrize("method", ["dgl", "dni", "ssl", "predsim", "infopro"])
def test_lenet_blocks_serve_local_rules(method, tmp_path):
    """The two conv blocks are ordinary blocks: local rules attach their aux heads, synthesizers and decoders."""
    summary = fit_cfg(["model=lenet", f"method={method}", "data=synthetic", "data.image_size=28", "data.channels=1",
                       *TINY_TRAIN], tmp_path)
    assert summary["status"] == "completed" and math.isfinite(summary["test_loss"]), summary

"""Values of the right type that a library, numpy or the file system would refuse, and settings that need more memory
than there is: each gets one line naming the key, the problem and the fix (exit 2), before anything is written."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import ClassVar, List

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, TINY, compose_cfg, run_cli, run_cli_forked
from layerwise.config.schema import _schema_for, validate
from layerwise.config.values import check_run_name, check_values
from layerwise.core.resources import memory_errors
from layerwise.errors import ConfigError, ResourceError
from layerwise.options import SEED_MAX

MLP = [*TINY, "model=mlp", "model.widths=[32]", "logger=none"]

# Compositions that between them hold every group's float options (rules, optimizers, trainer, diagnostics).
COMPOSITIONS = [
    ["diagnostics=[alignment,probe]", "optimizer=adam", "trainer=pipeline"],
    ["method=ssl"], ["method=infopro"], ["method=forward_forward"], ["method=predsim"], ["method=dfa"],
    ["data=synthetic", "model=mlp"],
]


def _float_leaves(node, path=""):
    """Every float value of a composed config, with its key path (list items as key[i])."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _float_leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _float_leaves(v, f"{path}[{i}]")
    elif isinstance(node, float):
        yield path


@pytest.mark.parametrize("overrides", COMPOSITIONS)
def test_every_float_option_refuses_nan(overrides):
    """`optimizer.lr=nan` passed every range check (a comparison with nan is false) and diverged at step one.
    Every float of the typed config is tried (check_values, the step validate runs before the range checks)."""
    cfg = compose_cfg(overrides)
    validate(cfg)
    container = OmegaConf.to_container(cfg, resolve=True)
    schema = _schema_for(container)
    paths = list(_float_leaves(container))
    assert len(paths) >= 5
    for path in paths:
        merged = OmegaConf.merge(schema, container)
        OmegaConf.set_readonly(merged, False)
        parent, _, leaf = path.rpartition(".")
        node = OmegaConf.select(merged, parent) if parent else merged
        if leaf.endswith("]"):
            name, index = leaf[:-1].split("[")
            node[name][int(index)] = math.nan
        else:
            node[leaf] = math.nan
        with pytest.raises(ConfigError) as info:
            check_values(merged, schema)
        message = str(info.value)
        assert f"{path}=nan is not a finite number" in message and "\n" not in message, (path, message)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.lr=nan"], "optimizer.lr=nan is not a finite number; give a finite value, e.g. optimizer.lr=0.05"),
    (["optimizer.weight_decay=1e400"], "optimizer.weight_decay=inf is not a finite number"),  # parsed as inf
    (["model.width_mult=-inf"], "model.width_mult=-inf is not a finite number; give a finite value, e.g. "
                                "model.width_mult=1.0"),
    (["optimizer=adam", "optimizer.betas=[0.9,nan]"],
     "optimizer.betas[1]=nan is not a finite number; give a finite value, e.g. optimizer.betas=[0.9,0.999]"),
    (["trainer.grad_clip=inf"], "trainer.grad_clip=inf is not a finite number; give a finite value, or null"),
    (["trainer.limit_train_batches=nan"], "trainer.limit_train_batches=nan is not a finite number"),  # an Any field
    (["optimizer.scheduler.step_size=1000000000000000000000"],
     "optimizer.scheduler.step_size=1000000000000000000000 is beyond the 64-bit integer range"),
    ([f"seed={SEED_MAX + 1}"], f"seed={SEED_MAX + 1} is out of range; it must be in [0, {SEED_MAX}] (numpy's seed "
                               f"range), e.g. seed=0"),
    (["data.seed=-1"], f"data.seed=-1 is out of range; it must be in [0, {SEED_MAX}]"),
    (["name=runs/a"], "name='runs/a' contains a path separator"),
    (["trainer.accelerator=cpu", "trainer.devices=[5]"],  # Lightning's TypeError traceback before
     "trainer.devices=[5] names GPU indices (or all devices) but trainer.accelerator=cpu runs a number of processes"),
    (["trainer.accelerator=cpu", "trainer.devices=-1"], "trainer.devices=-1 names GPU indices"),
])
def test_values_a_library_refuses_fail_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(overrides))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_seed_at_the_edge_of_numpys_range_is_accepted():
    validate(compose_cfg([f"seed={SEED_MAX}", f"data.seed={SEED_MAX}"]))


def test_a_field_may_opt_in_to_non_finite_values():
    @dataclass
    class Options:
        NONFINITE: ClassVar[tuple] = ("limit",)
        limit: float = math.inf
        scale: float = 1.0
        weights: List[float] = field(default_factory=lambda: [1.0])

    check_values(OmegaConf.structured(Options()))
    with pytest.raises(ConfigError, match=r"scale=-inf is not a finite number"):
        check_values(OmegaConf.structured(Options(scale=-math.inf)))
    with pytest.raises(ConfigError, match=r"weights\[0\]=nan is not a finite number"):
        check_values(OmegaConf.structured(Options(weights=[math.nan])))


@pytest.mark.parametrize("name, message", [
    ("a/b", "contains a path separator"),
    ("a\\b", "contains a path separator"),
    ("tab\there", "contains control characters ('\\t')"),
    ("", "is empty"),
    ("x" * 247, "name is 247 bytes long; the run directory <time>_<name> may have at most 255 bytes"),
    ("é" * 124, "name is 248 bytes long"),  # bytes, not characters
])
def test_run_names_the_file_system_refuses(name, message, tmp_path):
    with pytest.raises(ConfigError) as info:
        check_run_name(name, tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)
    check_run_name("x" * 246, tmp_path)
    check_run_name("dgl_vgg11c lr=0.1 (b)", tmp_path)


def test_bad_values_through_the_cli_exit_2_with_one_line_and_no_run_dir(tmp_path):
    # A name too long for a directory: refused before Hydra makes the run dir (it ended in Hydra's OSError).
    res = run_cli([*MLP, "name=" + "x" * 300], tmp_path, timeout=180)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip() == ("error: name is 300 bytes long; the run directory <time>_<name> may have at most "
                                  "255 bytes on this file system, so give a name of at most 246 bytes, "
                                  "e.g. name=dgl_vgg11c_lr0.1")
    assert not [p for p in tmp_path.rglob("*") if p.is_dir()]
    # A seed numpy refuses: Lightning's ValueError traceback before.
    res = run_cli([*MLP, "seed=99999999999"], tmp_path, timeout=180)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "seed=99999999999 is out of range; it must be in [0, 4294967295]" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("summary.json"))


# ------------------------------------------------------------------------------------------------ memory

def test_a_network_too_large_for_memory_is_refused_before_allocation(tmp_path):
    """768 x 1e11 weights (307 TB): built on the meta device, never allocated."""
    res = run_cli_forked([*MLP, "model.widths=[100000000000]"], tmp_path, timeout=180)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "Traceback" not in res.stderr
    assert re.search(r"model=mlp has 7\d,\d{3}\.\d\dG parameters, \d+\.\d TiB of weights alone \(largest layer "
                     r"blocks\.0\.1 \(Linear\(in_features=768, out_features=100000000000, bias=True\)\)\), more than "
                     r"the [\d.]+ [GMT]iB of memory available; "
                     r"lower model.widths=\[100000000000\], data.image_size=16$",
                     errors[0]), errors[0]
    # Found once the data is loaded: the run's own new directory records it as failed, with nothing trained.
    (summary,) = [json.loads(p.read_text()) for p in tmp_path.rglob("summary.json")]
    assert summary["status"] == "failed" and "model.widths" in summary["error"]
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.csv"))


def test_an_allocation_that_fails_names_its_size_and_settings(tmp_path):
    """image_size=1e7: the data's 12 PB allocation fails at once on any machine (beyond the address space)."""
    res = run_cli_forked([*MLP, "data.image_size=10000000"], tmp_path, timeout=180)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and len([line for line in res.stderr.splitlines() if "ERROR" in line]) == 1
    assert "out of memory while loading the data and building the network: an allocation of" in res.stderr
    assert "TiB failed" in res.stderr and "lower model.widths=[32], data.image_size=10000000" in res.stderr


@pytest.mark.parametrize("error, expected", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 400000000000 bytes. Error code 12 (Cannot allocate memory)"),
     "out of memory while training: an allocation of 372.5 GiB failed ("),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.1 GiB"),
     "out of memory while training: an allocation of 20.00 GiB failed on the GPU; lower data.batch_size=64, "),
    (MemoryError("Unable to allocate 3.00 TiB for an array with shape (1000000, 1000000)"),
     "an allocation of 3.00 TiB failed"),
])
def test_allocation_failures_become_one_line(error, expected):
    cfg = compose_cfg(MLP)
    with pytest.raises(ResourceError) as info:
        with memory_errors(cfg, "training"):
            raise error
    assert expected in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):  # other errors pass through untouched
        with memory_errors(cfg, "training"):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


def test_dgl_aux_pool_size_larger_than_the_map_pools_to_the_map():
    """method.aux.pool_size=100 on a 4x4 map: the head was sized for 4x4 but the pool upsampled to 100x100."""
    from layerwise.rules.dgl import build_aux_head

    cfg = OmegaConf.create({"type": "cnn", "hidden_dim": 8, "n_hidden_layers": 1, "pool_size": 100,
                            "cnn_channels": 4, "cnn_layers": 1})
    head = build_aux_head(torch.Size([3, 4, 4]), 10, cfg)
    assert head(torch.randn(2, 3, 4, 4)).shape == (2, 10)


@pytest.mark.parametrize("model", sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")))
def test_every_model_passes_the_memory_check_on_the_meta_device(model):
    """The pre-check runs before every run: it must build each architecture without memory and pass a normal one."""
    from layerwise.core.resources import check_network_fits
    from layerwise.models import InputSpec

    check_network_fits(compose_cfg([f"model={model}"]), InputSpec(channels=3, size=32, num_classes=10))

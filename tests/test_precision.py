"""Mixed precision with one optimizer per block (one scale per batch, clipping after unscale), channels_last and
torch.compile (layerwise.core.acceleration).

CPU notes: Lightning turns `precision="16-mixed"` on CPU into bf16-mixed (no scaler), so the fp16 + GradScaler path
is tested with an explicit `MixedPrecision("16-mixed", "cpu")` plugin: torch autocasts to fp16 on CPU and
`torch.amp.GradScaler("cpu")` runs the same unscale/inf-check/skip/update logic as on CUDA.
"""
from __future__ import annotations

import copy
import time

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from conftest import TINY, compose_cfg
from layerwise.core.acceleration import BatchGradScaler, compile_mode, compile_units
from layerwise.errors import ConfigError

MLP = ["model=mlp", "model.widths=[32,32]"]
CNN = ["model=basic_cnn", "model.channels=[8,8,8]", "model.head_hidden=[32]"]
INIT_SCALE = 2.0 ** 16


# Real 8x8 digits (1437 train / 360 test): an MLP learns them in 2 epochs.
DIGITS8 = ["data=digits", "data.image_size=8", "trainer.accelerator=cpu", "logger=none", "trainer.progress_bar=false"]


def _experiment(overrides: list[str], base: list[str] = TINY):
    from layerwise.core.experiment import build_experiment

    return build_experiment(compose_cfg([*base, *overrides]))


def _trainer(precision: str, epochs: int = 1, **kwargs) -> L.Trainer:
    # Lightning maps "16-mixed" on CPU to bf16; the plugin keeps fp16 autocast and a CPU GradScaler.
    plugin = dict(plugins=[MixedPrecision("16-mixed", "cpu")]) if precision == "16-mixed" else dict(precision=precision)
    return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **plugin, **kwargs)


def _test_acc(module, datamodule) -> float:
    module.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in datamodule.val_dataloader():  # the test set
            correct += int((module(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


# ----------------------------------------------------------------- the scaler, without Lightning
def _three_groups_backward(scaler, inf_in: int | None):
    """Three one-parameter 'blocks', all backpropagated with the current scale before any step (as DFA does)."""
    params = [nn.Parameter(torch.ones(2)) for _ in range(3)]
    optimizers = [torch.optim.SGD([p], lr=1.0) for p in params]
    for k, p in enumerate(params):
        loss = p.sum() * (float("inf") if k == inf_in else 1.0)
        scaler.scale(loss).backward()
    return params, optimizers


def test_one_scale_per_batch_skips_only_the_group_with_an_inf():
    scaler = BatchGradScaler("cpu", init_scale=INIT_SCALE)
    params, optimizers = _three_groups_backward(scaler, inf_in=1)
    for opt in optimizers:  # what Lightning's MixedPrecision does per optimizer step
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()  # deferred
    assert scaler.get_scale() == INIT_SCALE
    scaler.end_batch()
    assert scaler.get_scale() == INIT_SCALE / 2  # halved once, not once per group
    assert torch.equal(params[1].detach(), torch.ones(2))  # the inf group did not step
    for k in (0, 2):  # the others stepped with their true gradient (1): 1 - lr * 1
        assert torch.equal(params[k].detach(), torch.zeros(2))


def test_plain_grad_scaler_with_an_update_per_step_mis_unscales_later_groups():
    """Why BatchGradScaler exists: with Lightning's update after every step, group 2's gradient (scaled by 2^16)
    is unscaled by 2^15 after group 1's inf halved the scale, so it steps twice too far."""
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    params, optimizers = _three_groups_backward(scaler, inf_in=1)
    for opt in optimizers:
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
    assert torch.equal(params[2].detach(), torch.full((2,), -1.0))  # 1 - 2 * 1


def test_scaler_state_survives_the_swap_and_a_batch_without_steps():
    old = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    new = BatchGradScaler.replacing(old, "cpu")
    assert new.get_scale() == 1024.0 and new.get_growth_interval() == 7
    new.end_batch()  # no optimizer stepped (e.g. every group skipped): no update, no assertion
    assert new.get_scale() == 1024.0


# ----------------------------------------------------------------- the training loop under 16-mixed
def test_clipping_sees_unscaled_gradients_and_scale_updates_once_per_batch():
    """trainer.grad_clip under fp16: every step's gradient norm is the threshold (clipping after unscale), not
    threshold / 2^16 (clipping the scaled gradients); with K optimizers the scale is updated once per batch."""
    clip = 1e-4  # far below the true norms, so every group is clipped
    datamodule, module = _experiment([*MLP, "method=dgl", "data.n_train=128", f"trainer.grad_clip={clip}"])
    norms: list[float] = []

    def record(opt, args, kwargs):  # runs inside optimizer.step, after clipping (and only when the scaler steps)
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    updates = []
    original_end_batch = BatchGradScaler.end_batch

    def end_batch(self):
        updates.append(self.get_scale())
        original_end_batch(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BatchGradScaler, "end_batch", end_batch)
        trainer = _trainer("16-mixed", limit_val_batches=0)
        module.configure_optimizers = _with_hook(module.configure_optimizers, record)
        trainer.fit(module, datamodule=datamodule)
    assert isinstance(trainer.precision_plugin.scaler, BatchGradScaler)
    assert len(updates) == 2  # 128 images / 64 per batch: one update per batch, not one per optimizer (3)
    assert norms and all(n == pytest.approx(clip, rel=1e-2) for n in norms), norms


def _with_hook(configure, hook):
    def wrapped():
        optimizers, schedulers = configure()
        for opt in optimizers:
            opt.register_step_pre_hook(hook)
        return optimizers, schedulers
    return wrapped


@pytest.mark.parametrize("precision,method", [("16-mixed", "dni"), ("16-mixed", "dgl"), ("16-mixed", "dfa"),
                                              ("bf16-mixed", "dfa")])
def test_mixed_precision_trains_above_chance(precision, method):
    """2 epochs on digits; 32-true reaches bp 0.66, dgl 0.82, dfa 0.51 test accuracy here (chance: 0.10). dni:
    its synthesizer regresses the .grad a scaled backward leaves, so it must divide by the loss scale."""
    datamodule, module = _experiment([*MLP, f"method={method}"], DIGITS8)
    trainer = _trainer(precision, epochs=2, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    assert isinstance(scaler, BatchGradScaler) if precision == "16-mixed" else scaler is None
    assert _test_acc(module, datamodule) > 0.35


# ----------------------------------------------------------------- channels_last
def test_channels_last_matches_the_default_format():
    results = {}
    for channels_last in (False, True):
        datamodule, module = _experiment([*CNN, "method=dgl", "data.n_train=64",
                                          f"trainer.channels_last={channels_last}"])
        _trainer("32-true", limit_val_batches=0).fit(module, datamodule=datamodule)
        results[channels_last] = module
    fast = results[True]
    convs = [p for p in fast.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not results[False].net.blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    reference = results[False].state_dict()
    for key, value in fast.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-5, msg=key)


# ----------------------------------------------------------------- torch.compile
def test_compile_option_values():
    assert compile_mode(False) is None and compile_mode("false") is None
    assert compile_mode(True) == "default" and compile_mode("max-autotune") == "max-autotune"
    with pytest.raises(ConfigError, match="trainer.compile='fast' is not known"):
        compile_mode("fast")


def test_compile_in_place_keeps_parameters_and_checkpoints_load_both_ways(tmp_path):
    """The one compile test (aot_eager: dynamo + autograd tracing without C++ code generation, to stay fast)."""
    t0 = time.perf_counter()
    overrides = [*MLP, "method=dgl", "data.n_train=64", "data.n_test=64", "data.image_size=8"]
    datamodule, plain = _experiment(overrides)
    reference = copy.deepcopy(plain.state_dict())
    _, compiled = _experiment([*overrides, "trainer.compile=true", "trainer.compile_backend=aot_eager"])
    units = compile_units(compiled.net, compiled.rule)
    assert all(u._compiled_call_impl is not None for u in units) and len(units) == 2 + 1 + 1  # blocks, head, aux
    assert list(compiled.state_dict()) == list(reference)  # same keys: no "_orig_mod." prefix
    params_before = [id(p) for p in compiled.parameters()]
    trainer = _trainer("32-true", limit_val_batches=0)
    trainer.fit(compiled, datamodule=datamodule)
    assert [id(p) for p in compiled.parameters()] == params_before
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    plain.load_state_dict(state)  # compiled checkpoint -> plain module (strict)
    x, _ = next(iter(datamodule.val_dataloader()))
    compiled.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x), rtol=1e-4, atol=1e-5)
    _, compiled_again = _experiment([*overrides, "trainer.compile=true", "trainer.compile_backend=aot_eager"])
    compiled_again.load_state_dict(reference)  # plain state -> compiled module (strict)
    assert torch._dynamo.config.recompile_limit >= 6 * len(units)  # no unit silently falls back to eager
    print(f"compile test: {time.perf_counter() - t0:.1f}s")

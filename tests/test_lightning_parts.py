"""Lightning and Hydra parts from the config: callbacks (+callbacks=...), loggers by `_target_`
(logger=tensorboard), optimizers by `_target_` (optimizer=rmsprop, optimizer=custom), and the `_target_` allowlist."""
from __future__ import annotations

import csv

import pytest
import torch

from conftest import TINY, compose_cfg, fit_cfg
from layerwise.config.schema import validate
from layerwise.errors import ConfigError

# A two-block MLP on 8x8 synthetic images: a few tenths of a second per epoch.
FAST = [*TINY, "model=mlp", "model.widths=[32,32]", "data.image_size=8", "data.n_train=128", "data.n_test=64",
        "method=dgl", "trainer.limit_val_batches=1.0"]


@pytest.mark.parametrize("overrides", [  # each option alone: tests/test_schema.py (every group option validates)
    ["+callbacks=[early_stopping,lr_monitor]", "data.val_fraction=0.1", "callbacks.early_stopping.monitor=val/acc"],
    ["logger=tensorboard", "logger.csv=true", "+callbacks.mine._target_=lightning.pytorch.callbacks.Timer",
     "allowed_targets=[mylab]"],
])
def test_parts_compose_and_validate(overrides):
    validate(compose_cfg(overrides))


@pytest.mark.parametrize("overrides, message", [
    (["+callbacks=early_stopping", "callbacks.early_stopping.patience=x"],
     "callbacks.early_stopping.patience must be an integer, got 'x'"),
    (["+callbacks=early_stopping", "+callbacks.early_stopping.patiense=3"],
     "callbacks.early_stopping.patiense is not an argument of lightning.pytorch.callbacks.EarlyStopping, which takes "
     "monitor, min_delta, patience"),
    (["+callbacks=early_stopping", "callbacks.early_stopping.monitor=test/accc"], "did you mean test/acc?"),
    (["+callbacks=early_stopping", "callbacks.early_stopping.monitor=val/acc"], "set data.val_fraction=0.1"),
    (["+callbacks=lr_monitor", "logger=none"], "this run has none (logger=none); use logger=csv"),
    (["+callbacks=lr_monitor", "callbacks.lr_monitor.logging_interval=hour"], "choose one of step, epoch"),
    (["optimizer=rmsprop", "optimizer.alpha=x"], "optimizer.alpha must be a number, got 'x'"),
    (["optimizer=rmsprop", "optimizer.lr=-1"], "optimizer.lr=-1 is out of range"),
    (["optimizer=rmsprop", "+optimizer.betas=[0.9,0.9]"],
     "optimizer.betas is not an argument of torch.optim.RMSprop, which takes lr, alpha, eps"),
    (["+optimizer._target_=torch.optim.Adagrad"], "start from optimizer=custom optimizer._target_=torch.optim.Adagrad"),
    (["optimizer=custom"], "optimizer._target_ has no value"),
    (["optimizer=sgd", "optimizer.momentum=x"], "optimizer.momentum must be a number"),
    (["+callbacks.x._target_=mylab.Cb"], "allow it with allowed_targets=[mylab]"),
    (["optimizer=custom", "optimizer._target_=os.system"], "is not allowed"),
    (["+callbacks.x._target_=mylab.Cb", "allowed_targets=[os]"], "os is part of Python itself"),
    (["logger=tensorboard", "logger.extra.tensorboard.name=[1]"], "must be a string or null"),
    (["callbacks=early_stopping", "trainer=pipeline"], "trainer=pipeline trains without Lightning's Trainer"),
])
def test_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_early_stopping_stops_before_max_epochs(tmp_path):
    # min_delta=1: no epoch can improve test/acc by a whole unit, so the run stops after patience=1 epoch.
    summary = fit_cfg([*FAST, "trainer.max_epochs=5", "+callbacks=early_stopping",
                       "callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=1.0"], tmp_path)
    assert summary["status"] == "completed"
    assert summary["epochs_done"] < 5


def test_lr_monitor_logs_each_blocks_lr_and_rmsprop_trains(tmp_path):
    """One run for both: the learning rate of every block's optimizer in metrics.csv, and the optimizer built
    from conf/optimizer/rmsprop.yaml is the one that trained (its state in the checkpoint)."""
    summary = fit_cfg([*FAST, "trainer.max_epochs=2", "+callbacks=lr_monitor", "optimizer=rmsprop",
                       "optimizer.scheduler.name=step", "optimizer.scheduler.step_size=1"], tmp_path)
    assert summary["status"] == "completed"
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    columns = [c for c in rows[0] if c.startswith("lr-RMSprop")]
    assert len(columns) >= 2  # one optimizer per block (DGL), plus the head's
    lrs = [float(r[columns[0]]) for r in rows if r.get(columns[0])]
    assert lrs[:2] == pytest.approx([1e-3, 1e-4])  # stepped by the scheduler once per epoch
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    groups = [s["param_groups"][0] for s in state["optimizer_states"]]
    assert all("alpha" in g and "centered" in g for g in groups)  # RMSprop's own arguments


def test_tensorboard_logger_writes_events(tmp_path):
    summary = fit_cfg([*FAST, "logger=tensorboard"], tmp_path)
    assert summary["status"] == "completed"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert not (tmp_path / "metrics.csv").exists()  # logger=tensorboard alone, as logger=wandb is wandb alone


def test_target_optimizer_scales_lr_per_group():
    """build_optimizer's contract for `_target_` optimizers: lr_scale multiplies the configured lr (DNI)."""
    from layerwise.core.optim import build_optimizer

    cfg = compose_cfg(["optimizer=custom", "optimizer._target_=torch.optim.Adagrad", "optimizer.lr=0.01"])
    validate(cfg)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg.optimizer, lr_scale=0.5)
    assert type(opt) is torch.optim.Adagrad
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)

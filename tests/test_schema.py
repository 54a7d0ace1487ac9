"""The typed config schema: every shipped config validates; bad values fail with one line naming key, value, fix."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT, compose_cfg, run_cli
from layerwise.config.schema import check_targets, validate
from layerwise.errors import ConfigError
from layerwise.rules import build_rule
from layerwise.rules.dgl import DglOptions
from layerwise.rules.dni import DniOptions

CONF = ROOT / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _sweep_runs(preset: str) -> list[list[str]]:
    """The overrides of every run a preset's sweep (hydra.sweeper.params) launches."""
    overrides = [f"experiment={preset}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        params = compose("config", overrides=overrides, return_hydra_config=True).hydra.sweeper.params or {}
    choices = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    return [[*overrides, *combo] for combo in itertools.product(*choices)]


@pytest.mark.parametrize("preset", _options("experiment"))
def test_every_run_of_every_experiment_preset_validates(preset):
    runs = _sweep_runs(preset)
    assert runs
    for overrides in runs:
        validate(compose_cfg(overrides))


@pytest.mark.parametrize("method", _options("method"))
def test_every_method_validates_with_the_default_config(method):
    typed = validate(compose_cfg([f"method={method}"]))
    assert typed.method.name == method


def _group_option_rows() -> list[list[str]]:
    """Every option of every group at least once, several groups per composed config (composing is slow)."""
    needs = {("data", "npz"): " data.path=x.npz", ("optimizer", "custom"): " optimizer._target_=torch.optim.Adagrad"}
    groups = {g: [f"{g}={o}{needs.get((g, o), '')}" for o in _options(g)]
              for g in ("data", "model", "optimizer", "trainer", "logger", "diagnostics")}
    groups["callbacks"] = [f"+callbacks={o}" for o in _options("callbacks")]  # no default: added with +
    groups["trainer"].remove("trainer=pipeline")  # its own row: it refuses Lightning parts (logger=tensorboard)
    rows = itertools.zip_longest(*groups.values())
    return [" ".join(o for o in row if o).split() for row in rows] + [["trainer=pipeline"]]


@pytest.mark.parametrize("overrides", [
    *_group_option_rows(), ["diagnostics=[alignment,probe]"],
    ["hparams_search=optuna"], ["hparams_search=optuna_aux", "method=dgl"],
])
def test_every_group_option_and_search_preset_validates(overrides):
    validate(compose_cfg(overrides))


def test_every_rule_is_found_and_has_its_own_options():
    from layerwise.rules import rule_class, rule_names
    from layerwise.rules.base import RuleOptions

    names = rule_names()
    expected = {"bp", "dgl", "dni", "dfa", "fa", "sign_symmetry", "forward_forward", "infopro", "predsim", "ssl"}
    assert expected <= set(names)
    assert not {"base", "feedback", "pre_pool"} & set(names)
    for name in names:
        options = rule_class(name).Options
        assert issubclass(options, RuleOptions)
        assert name == "bp" or options is not RuleOptions, name  # every rule but bp has options of its own


def test_options_of_a_reused_rule_use_that_rules_schema():
    assert isinstance(validate(compose_cfg(["method=cdni"])).method, DniOptions)
    assert isinstance(validate(compose_cfg(["method=random_features"])).method, DglOptions)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.lr=abc"], "optimizer.lr must be a number, got 'abc', e.g. optimizer.lr=0.05"),
    (["data.batch_size=1.5"], "data.batch_size must be an integer, got 1.5, e.g. data.batch_size=128"),
    (["model=mlp", "model.widths=[a]"], "model.widths must be a list of integers, got 'a'"),
    (["optimizer.lr=0"], "optimizer.lr=0 is out of range; it must be > 0, e.g. optimizer.lr=0.05"),
    (["data.augment.erasing_p=2"], "data.augment.erasing_p=2 is out of range; it must be in [0, 1]"),
    (["trainer.limit_train_batches=1.5"], "trainer.limit_train_batches=1.5 must be a fraction in (0, 1]"),
    (["trainer.precision=17"], "trainer.precision=17 is not known; choose one of"),
    (["trainer.strategy=fsdp"], "trainer.strategy='fsdp' is not known; choose one of auto, ddp"),
    (["optimizer=adam", "optimizer.betas=[0.9]"],
     "optimizer.betas=[0.9] must have 2 items, e.g. optimizer.betas=[0.9,0.999]"),
    (["optimizer.scheduler.milestones=[75,50]"], "must be increasing"),
    (["trainer=pipeline", "trainer.pipeline.split=[1]"], "trainer.pipeline.split=[1] must have 2 items"),
    (["method=dgl", "+method.aux_typ=mlp"],
     "method.aux_typ is not an option of method=dgl; did you mean method.aux.type?"),
    (["+data.n_train=5"], "data.n_train is not an option of data=cifar10; did you mean data.subset_train?"),
    (["+trainer.max_epoch=3"],
     "trainer.max_epoch is not an option of the trainer config nor an argument of lightning.Trainer; did you mean "
     "trainer.max_epochs?"),
    (["data=npz"], "data.path has no value (???); set it on the command line, e.g. data.path="),
    (["method=dni", "method.synthesizer.kernel_size=4"], "method.synthesizer.kernel_size=4 must be odd"),
    (["method=dfa", "method.feedback.scale=null"], "method.feedback.scale=null has no meaning for method=dfa"),
    (["method=infopro", "method.num_modules=2", "method.split=[2,1]"], "method.num_modules and method.split both set"),
    (["method=ssl", "method.ssl_weight=0"], "method.ssl_weight=0 turns reconstruction off"),
    (["+optimizer._target_=os.system"], "optimizer._target_='os.system' is not allowed"),
])
def test_bad_values_fail_with_one_line_naming_key_value_and_fix(overrides, message):
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(overrides))
    text = str(info.value)
    assert message in text and "\n" not in text


@pytest.mark.parametrize("overrides", [
    ["method=dgl", "method.aux.type=gru"], ["method=dgl", "method.last_gradient_weight=2", "method.direct_global=true"],
    ["method=fa", "method.feedback.init=gaussian"], ["method=dfa", "method.injection=middle"],
    ["method=sign_symmetry", "method.variant=xsf"], ["method=dni", "method.synthesizer.type=rnn"],
])
def test_schema_and_rule_constructors_refuse_the_same_options(overrides):
    """Rules built from code (tests, notebooks) skip the schema; they must still refuse what it refuses."""
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError):
        validate(cfg)
    with pytest.raises(ConfigError):
        build_rule(cfg.method)


def test_targets_outside_layerwise_and_torch_are_refused_anywhere():
    check_targets({"a": {"_target_": "layerwise.reporting.report.RunReportCallback"},
                   "b": [{"_target_": "torch.nn.ReLU"}]})
    with pytest.raises(ConfigError, match=r"b\[1\].c._target_='subprocess.run' is not allowed"):
        check_targets({"b": [{}, {"c": {"_target_": "subprocess.run"}}]})
    with pytest.raises(ConfigError, match="torchvision.models.resnet18"):
        check_targets({"_target_": "torchvision.models.resnet18"})  # a prefix of the name is not enough


def test_debug_true_adds_the_traceback_to_a_config_error(tmp_path: Path):
    res = run_cli(["optimizer.lr=-1", "logger=none", "debug=true"], tmp_path, timeout=180)
    assert res.returncode == 2
    assert "optimizer.lr=-1 is out of range" in res.stderr
    assert "Traceback" in res.stderr and "ConfigError" in res.stderr

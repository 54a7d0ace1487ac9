"""The command line: legacy flags translate, and bad input gets one clear error and a non-zero exit."""
import pytest

from conftest import TINY, read_summary, run_cli, run_cli_forked, run_dirs
from layerwise.cli import LegacyFlagError, translate


def test_legacy_flags_translate_to_overrides():
    argv, produced = translate(["--dgl", "--device", "cuda:1", "--model", "VGG16", "--epochs", "100",
                                "--batch_size=64", "--learning_rate", "0.01", "--optimizer_type", "Adam",
                                "--momentum", "0.8", "--weight_decay", "1e-4", "--dropout_prob", "0.2",
                                "--padding_mode", "circular", "--pred_aux_type", "cnn", "--aux_mlp_n_hidden_layers",
                                "2", "--aux_mlp_hidden_dim", "512", "--path", "/runs", "--log_interval", "10",
                                "--disable_random_crop", "--enable_random_erasing", "seed=3"])
    assert argv[0] == "seed=3"
    assert produced == [
        "method=dgl", "trainer.accelerator=gpu", "trainer.devices=[1]", "model=vgg16", "trainer.max_epochs=100",
        "data.batch_size=64", "optimizer.lr=0.01", "optimizer=adam", "optimizer.momentum=0.8",
        "optimizer.weight_decay=1e-4", "model.dropout=0.2", "model.padding_mode=circular", "method.aux.type=cnn",
        "method.aux.n_hidden_layers=2", "method.aux.hidden_dim=512", "paths.output_root=/runs",
        "trainer.log_every_n_steps=10", "data.augment.random_crop=false", "data.augment.random_erasing=true"]


@pytest.mark.parametrize("argv, produced", [
    (["--dni"], ["method=dni"]),
    (["--cdni"], ["method=cdni"]),
    (["--fa"], ["method=fa"]),
    (["--dfa"], ["method=dfa"]),
    (["--sign_symmetry"], ["method=sign_symmetry"]),
    (["--ssl", "--shift_ssl_labels", "--upsample", "--pred_loss_weight", "0.3", "--ssl_loss_weight", "0.7"],
     ["method=ssl", "method.shift=true", "method.upsample=bilinear", "method.pred_weight=0.3",
      "method.ssl_weight=0.7"]),
    (["--dgl", "--is_direct_global", "--last_gradient_weight", "0.5"],
     ["method=dgl", "method.direct_global=true", "method.last_gradient_weight=0.5"]),
    (["--use_last_gradient"], ["method=dgl", "method.direct_global=true"]),  # the rule is implied
    (["--shift_ssl_labels"], ["method=ssl", "method.shift=true"]),
    (["--first_trainable_block", "2", "--ssl"], ["method.first_trainable_block=2", "method=ssl"]),
])
def test_rule_flags_translate_and_imply_their_rule(argv, produced):
    assert translate(argv) == (produced, produced)


def test_rule_flags_leave_a_method_sweep_alone():
    assert translate(["-m", "method=dgl,ssl", "--first_trainable_block", "1"])[1] == ["method.first_trainable_block=1"]


def test_hydra_flags_pass_through_untouched():
    args = ["-m", "method=bp,dgl", "--cfg", "job", "--config-name", "config", "hydra/launcher=basic"]
    assert translate(args) == (args, [])


@pytest.mark.parametrize("argv, message", [
    (["--epoch", "3"], "did you mean --epochs"),
    (["--fa_"], "did you mean --fa"),
    (["--bp", "--is_direct_global"], "--is_direct_global does not apply to method=bp; use it with --dgl"),
    (["--ssl", "--use_last_gradient"], "does not apply to method=ssl"),
    (["method=predsim", "--upsample"], "--upsample does not apply to method=predsim; use it with --ssl"),
    (["--model", "resnet50"], "unknown model"),
    (["--device", "tpu"], "expected cpu, cuda or cuda:N"),
    (["--epochs"], "needs a value"),
])
def test_bad_legacy_flags(argv, message):
    with pytest.raises(LegacyFlagError, match=message):
        translate(argv)


def test_legacy_ssl_flags_run_end_to_end(tmp_path):
    res = run_cli(["--ssl", "--shift_ssl_labels", "--upsample", "--pred_loss_weight", "0.4", *TINY,
                   "model=basic_cnn", "model.channels=[8,8,8]", "model.padding_mode=circular"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    assert read_summary(run)["method"] == "ssl"
    assert (run / "images" / "ssl_block0_epoch001.png").is_file()


def test_legacy_dgl_on_cpu_runs_end_to_end(tmp_path):
    res = run_cli(["--dgl", "--device", "cpu", "--epochs", "1", "--batch_size", "64", *TINY[:-4],
                   "model=mlp", "model.widths=[32,32]", "logger=csv"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "legacy flags -> overrides: method=dgl trainer.accelerator=cpu" in res.stderr
    (run,) = run_dirs(tmp_path)
    assert read_summary(run)["method"] == "dgl" and read_summary(run)["status"] == "completed"


@pytest.mark.parametrize("args, message", [
    (["method=foo"], "Could not find 'method/foo'"),
    (["data=cifar11"], "Available options in 'data'"),
    # Any trainer.<name> may be a lightning.Trainer argument: the schema, not Hydra, refuses a name that is neither.
    (["trainer.max_epoch=3"], "trainer.max_epoch is not an option of the trainer config nor an argument of "
                              "lightning.Trainer; did you mean trainer.max_epochs?"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs must be an integer"),
    (["optimizer.lr=-1"], "optimizer.lr=-1 is out of range"),
    (["--epoch", "3"], "unknown flag --epoch; did you mean --epochs?"),
    (["--device", "cuda:99"], "GPU cuda:99 was requested"),
    (["data=cifar10", "data.root=nodata", "data.download=false"], "CIFAR10 is not in"),
    (["data=npz", "data.path=missing.npz"], "data.path="),
    (["method=ssl", "method.direct_global=true"], "method=ssl cannot use direct_global"),
    (["method=ssl", "model=mlp", *TINY], "method=ssl needs conv blocks"),
    (["--ssl", "--is_direct_global"], "--is_direct_global does not apply to method=ssl"),
    (["method=infopro", "method.num_modules=2", "model.blocks=2"], "method.num_modules"),
    (["model.activation=sign"], "model.activation=sign has zero derivative, so method=bp cannot train through it; "
                                "use model.activation=relu, or method=dfa method.injection=pre"),
    (["model.activation=swish", *TINY], "model.activation='swish' is not known"),
    (["method=fa", "method.feedback.init=gaussian"], "method.feedback.init='gaussian' is not known"),
    (["method=sign_symmetry", "method.variant=xsf"], "choose one of usf, brsf, frsf"),
    (["method=dfa", "method.injection=middle"], "method.injection='middle' is not known"),
    (["method=forward_forward", *TINY], "forward_forward needs blocks without batch norm; set model.batch_norm=false"),
    (["optimized_metric=acc"], "optimized_metric='acc' is not known; choose one of"),
    (["optimized_metric=val/acc"], "set data.val_fraction=0.1"),
    (["data.val_fraction=1.5"], "data.val_fraction"),
    (["diagnostics=alignment", "diagnostics.alignment.every_n_steps=0"], "every_n_steps=0 must be >= 1"),
    (["hparams_search=optuna_aux", "method=bp"], "use hparams_search=optuna"),
    (["data.batch_size=0"], "data.batch_size=0 is out of range"),
    (["model=basic_cnn", "model.blocks=[1,1]", *TINY], "must be positive group sizes summing to the 3 layers"),
    (["--model", "resnet50"], "--model resnet50: unknown model"),
    (["optimizer.lr=abc"], "optimizer.lr must be a number, got 'abc', e.g. optimizer.lr=0.05"),
    (["model.dropout=1.5"], "model.dropout=1.5 is out of range; it must be in [0, 1)"),
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0 must be a fraction in (0, 1]"),
    (["method=dgl", "method.aux.hidden_dim=0"], "method.aux.hidden_dim=0 is out of range; it must be >= 1"),
    (["method=infopro", "method.num_modules=2", "method.split=[2,1]"], "method.num_modules and method.split both set"),
    (["method=dgl", "+method.aux_typ=cnn"],
     "method.aux_typ is not an option of method=dgl; did you mean method.aux.type?"),
    (["+optimizer._target_=os.system"], "optimizer._target_='os.system' is not allowed"),
    (["+hydra.callbacks.log._target_=hydra.experimental.callbacks.LogJobReturnCallback"],
     "hydra.callbacks.log._target_='hydra.experimental.callbacks.LogJobReturnCallback' is not allowed"),
], ids=["group-option", "typo-group", "unknown-key", "bad-type", "range", "legacy-flag", "cuda", "dataset-offline",
        "npz-missing", "ssl-direct-global", "ssl-mlp", "legacy-ssl-direct-global", "infopro-double-split",
        "zero-derivative-activation", "unknown-activation", "fa-init", "sign-variant", "dfa-injection", "ff-batch-norm",
        "search-metric", "val-metric-without-split", "val-fraction", "diagnostics-every", "optuna-aux-bp",
        "batch-size", "blocks-sum", "legacy-model", "schema-type", "schema-range-model", "schema-range-trainer",
        "schema-range-rule", "schema-rule-pair", "schema-unknown-key", "schema-target", "schema-hydra-callback-target"])
def test_bad_input_exits_non_zero_with_one_clear_line(args, message, tmp_path):
    full = [*args, "logger=none"] if args[0] not in ("--epoch", "--model") else args
    res = run_cli_forked(full, tmp_path, timeout=120)
    assert res.returncode != 0
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_legacy_feedback_alignment_flag_runs_end_to_end(tmp_path):
    res = run_cli(["--sign_symmetry", "--device", "cpu", *TINY, "model=mlp", "model.widths=[32,32]"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "legacy flags -> overrides: method=sign_symmetry" in res.stderr
    (run,) = run_dirs(tmp_path)
    assert read_summary(run)["method"] == "sign_symmetry"


def test_help_lists_choices_and_legacy_flags_without_importing_torch(tmp_path):
    from layerwise.cli import SWITCH_FLAGS, VALUE_FLAGS

    res = run_cli(["--help"], tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"}, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    groups = res.stdout.split("== Configuration groups ==")[1].split("==")[0]
    assert "method: auglocal, bp, cdni, deep_supervision" in groups and "trainer: ddp, default" in groups
    assert "shared" not in groups  # conf/shared: pieces other configs include, not a choice
    catalog = res.stdout.split("== What they are ==")[1].split("== Legacy flags ==")[0]
    lines = {line.split()[0]: line.split(None, 1)[1] for line in catalog.splitlines()
             if line.startswith("  ") and len(line.split()) > 1}
    assert lines["dgl"].startswith("Decoupled Greedy Learning (Belilovsky")  # rules/dgl.py's docstring, not imported
    assert lines["cdni"].startswith("Conditional DNI")                       # a preset's first comment line
    assert lines["resnet20"].startswith("CIFAR ResNet-20") and lines["digits"].startswith("scikit-learn's")
    assert lines["quickstart"].startswith("Offline CPU quickstart") and "@package" not in catalog
    for heading in ("Learning rules (method=)", "Models (model=)", "Datasets (data=)", "Presets (experiment=)"):
        assert heading in catalog
    for group in ("method", "model", "data", "experiment"):  # every option has its line, with a description
        options = groups.split(f"\n{group}: ")[1].split("\n")[0].split(", ")
        assert set(options) <= set(lines), (group, set(options) - set(lines))
    assert "--epochs <value>" in res.stdout and "trainer.max_epochs=<value>" in res.stdout
    for flag in [*SWITCH_FLAGS, *VALUE_FLAGS]:
        assert f"\n{flag} " in res.stdout, flag
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time")}
    assert "hydra" in imported and not {"torch", "lightning"} & imported

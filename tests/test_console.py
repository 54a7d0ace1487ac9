"""What a run prints: no escape codes where no terminal reads them, nothing said twice, no library chatter."""
from __future__ import annotations

import io

import pytest
from loguru import logger

from conftest import TINY, run_cli, run_dirs
from layerwise.runlog import add_run_log, use_color

NO_COLOR_ENV = {"NO_COLOR": "", "FORCE_COLOR": ""}  # empty = unset (no-color.org, force-color.org)


@pytest.fixture(scope="module")
def fa_run(tmp_path_factory):
    """One tiny feedback-alignment run with an offline wandb run, output piped (as in CI or a Slurm log), under the
    environment GitHub Actions sets, in which loguru on its own colours even a pipe."""
    out = tmp_path_factory.mktemp("fa_run")
    env = {**NO_COLOR_ENV, "WANDB_MODE": "offline", "CI": "true", "GITHUB_ACTIONS": "true"}
    res = run_cli([*TINY, "logger=wandb", "method=fa", "model=mlp", "model.widths=[32,32]"], out, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = run_dirs(out)
    return res, run


def test_no_escape_codes_when_output_is_piped(fa_run):
    res, run = fa_run
    assert "completed after 1 epochs" in res.stderr and "run summary" in res.stdout
    for name, text in (("stderr", res.stderr), ("stdout", res.stdout), ("run.log", (run / "run.log").read_text())):
        assert "\x1b" not in text, f"escape codes in {name}"


def test_wandb_does_not_warn_about_the_anonymous_setting(fa_run):
    res, _ = fa_run
    assert "wandb offline (no API key)" in res.stderr  # wandb did start
    assert "anonymous" not in res.stderr


def test_feedback_conversion_said_once(fa_run):
    res, _ = fa_run
    assert res.stderr.count("converted 3 layers (3 Linear)") == 1, res.stderr


def test_force_color_colours_the_console_but_never_run_log(tmp_path):
    # An error found once the run owns its directory (data missing offline): one error line on the console and in
    # run.log. (A config error is refused before any run directory exists.)
    missing = ["data=cifar10", f"data.root={tmp_path / 'no_data'}", "data.download=false", "model=mlp",
               "model.widths=[16]", "trainer.accelerator=cpu", "logger=none", "trainer.progress_bar=false"]
    res = run_cli(missing, tmp_path, env={"NO_COLOR": "", "FORCE_COLOR": "1"}, timeout=120)
    assert res.returncode == 2
    assert "\x1b[" in res.stderr and "data.download=false" in res.stderr
    (log,) = tmp_path.rglob("run.log")
    assert "data.download=false" in log.read_text() and "\x1b" not in log.read_text()


def test_run_log_drops_escape_codes_a_message_carries(tmp_path):
    sink = add_run_log(tmp_path)
    try:
        logger.info("\x1b[31mred\x1b[0m text \x1b]8;;https://x.org\x1b\\link\x1b]8;;\x1b\\")
    finally:
        logger.remove(sink)
    text = (tmp_path / "run.log").read_text()
    assert "red text link" in text and "\x1b" not in text


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize("tty, env, expected", [
    (True, {}, True),
    (False, {}, False),
    (False, {"CI": "true", "GITHUB_ACTIONS": "true"}, False),  # loguru's own rule would colour this pipe
    (False, {"PYCHARM_HOSTED": "1"}, False),
    (False, {"FORCE_COLOR": "1"}, True),
    (True, {"NO_COLOR": "1"}, False),
    (False, {"NO_COLOR": "1", "FORCE_COLOR": "1"}, False),  # NO_COLOR wins
    (True, {"NO_COLOR": ""}, True),  # set but empty: not set
])
def test_colour_only_for_a_terminal_unless_the_environment_says(tty, env, expected, monkeypatch):
    for key in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert use_color(_Stream(tty)) is expected


def test_progress_bar_counts_epochs_like_the_log_and_draws_on_stderr(capfd):
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from layerwise.runs.progress import EpochProgressBar

    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=[EpochProgressBar()])
    trainer.fit(BoringModel())
    out, err = capfd.readouterr()
    assert "Epoch 2/2" in err and "Epoch 1/1" not in err  # Lightning's own bar: "Epoch 1/1" in the last epoch
    assert "Epoch" not in out

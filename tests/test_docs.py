"""The commands in README.md and docs/ compose and validate, the quick ones run, and every rule has a complete page.

Commands: every `python main.py ...`, `python -m layerwise ...` and `layerwise ...` in a fenced code block (a line,
with its `\\` continuations; the text after `#` is a comment) or in inline code (which may wrap over lines). Each
goes through what the CLI does before a job starts: the legacy flags are translated (`layerwise.cli.translate`),
Hydra's flags are read (`-m`, `--cfg`, `--help`, `--config-dir`, ...), the overrides are composed in-process
with Hydra's compose API on the package's conf/ (the layerwise config source is found as a Hydra plugin in
src/hydra_plugins), and the job config is checked as a run checks it (`check_config`: the typed schema and the
rule's checks; `check_optimized_metric`). A sweep (`-m`, or a preset whose `hydra.mode` is MULTIRUN) is composed
once per swept value (`jobs`); a sweep without `-m` must come from a preset that makes the run a multirun. Jobs
shared by several commands are checked once. Commands that need a dataset download or
a GPU are composed and validated the same way, never run.

Quick commands also run for real, in a subprocess, in a temporary directory (LAYERWISE_OUTPUT_ROOT there, wandb
off): the rule is `is_quick` — data=digits or data=synthetic, trainer.max_epochs <= 2 (given on the command
line), a small network (model=mlp, or model.channels no wider than 32: BasicCNN's default 128 channels take two
minutes an epoch on digits on a loaded 2-core machine), the default trainer (trainer=ddp, trainer=pipeline,
trainer.compile and trainer.precision have their own tests: test_ddp, test_pipeline, test_precision), not a
sweep, no resume= and no hydra.run.dir (a sequence of commands on one directory: test_resume covers it).
Each must exit 0 and leave a completed summary.json. A fresh interpreter costs 10-40 s a command here, so `make test`
runs the README's quick commands and `make test-all` the docs' too (marked slow: the device loader, channels_last
and a plain run each have a cheaper test of their own).

A command holding a placeholder (`<run dir>`, `...`, `SWEEP`) cannot run as written: it must be listed, exactly, in
PLACEHOLDERS, with why; a new one fails until it is listed. `test_a_planted_bad_key_fails` shows the check fails on
a bad key, a bad value, an unknown legacy flag and a sweep without -m.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from conftest import ROOT
from layerwise.cli import LegacyFlagError, lightning_trainer_overrides, translate
from layerwise.errors import LayerwiseError

DOCS = ROOT / "docs"
CONF = Path(os.path.realpath(ROOT / "src" / "layerwise" / "conf"))  # what __main__.CONF_DIR resolves to
PROGRAMS = (("python", "main.py"), ("python", "-m", "layerwise"), ("layerwise",), (".venv/bin/python", "main.py"))
#: Hydra's flags that take no value, and those that take one (`--cfg` takes an optional word).
HYDRA_SWITCHES = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--resolve", "--version", "--shell-completion",
                  "-sc"}
HYDRA_VALUED = {"--cfg", "-c", "--info", "-i", "--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp",
                "--package", "-p", "--experimental-rerun"}
#: Commands that cannot run as written, exactly as they appear (whitespace collapsed), and why.
PLACEHOLDERS = {
    "python main.py <overrides> --cfg job": "stands for any command",
    ".venv/bin/python main.py ...": "stands for any command",
    "python main.py allowed_targets=[<your package>] +callbacks.mine._target_=<your package>.<a callback class>":
        "a class of the reader's own package",
}
#: Commands a page shows failing without an `ERROR` line under them, and (part of) their error.
FAILS_ON_PURPOSE = {
    "python main.py optimizer.lr=-1 debug=true": "optimizer.lr=-1 is out of range",
    # docs/safety.md times these config errors
    "python main.py seed=-1": "seed=-1 is out of range",
    "python main.py method=dgl method.aux.type=bogus": "method.aux.type='bogus' is not known",
    "python main.py model.activation=sign method=bp": "model.activation=sign has zero derivative",
}
#: Commands whose program or config is not this repository's: they are run elsewhere.
ELSEWHERE = {
    "docs/extending.md": "the lab's own package and --config-dir (docs/examples/mylab): tests/test_extension.py runs "
                         "these commands from outside the repository",
}
PLACEHOLDER = re.compile(r"<[^<>]+>|\.\.\.|\bSWEEP\b")


# ------------------------------------------------------------------------------------------------ extraction

def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "examples" not in p.relative_to(DOCS).parts)]


def _program(words: list[str]) -> int:
    """How many words the program takes (after any VAR=value prefix), or 0 when it is not this CLI."""
    for program in PROGRAMS:
        if tuple(words[:len(program)]) == program:
            return len(program)
    return 0


def commands_in(text: str) -> list[tuple[str, str | None]]:
    """The CLI's command lines in a markdown text, each as one line, with the error the page shows it failing with
    (a `$ command` line of a code block followed by an `ERROR   message` line), else None."""
    found: list[list] = []
    in_fence, fence_lang, pending = False, "", ""
    prose: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence, fence_lang = not in_fence, line.strip()[3:]
            continue
        if not in_fence:
            prose.append(line)
            continue
        if fence_lang not in ("", "bash", "sh", "shell", "console"):
            continue
        if line.startswith("ERROR") and found and found[-1][1] is None:
            found[-1][1] = line.removeprefix("ERROR").strip()
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        found.append([pending.strip().removeprefix("$ "), None])
        pending = ""
    for span in re.findall(r"`([^`]+)`", "\n".join(prose)):
        found.append([" ".join(span.split()), None])
    out = []
    for line, error in found:
        words = line.split()
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words = words[1:]
        if _program(words):
            out.append((" ".join(re.sub(r"(^|\s)#.*$", "", line).split()), error))  # a shell comment starts a word
    return out


@functools.lru_cache(maxsize=None)
def all_commands() -> list[tuple[str, str, str | None]]:
    """(file relative to the repository, command, the error it is shown failing with) for every command of every
    page, once per page."""
    out = []
    for path in doc_files():
        rel = str(path.relative_to(ROOT))
        for command, error in dict.fromkeys(commands_in(path.read_text(encoding="utf-8"))):
            out.append((rel, command, FAILS_ON_PURPOSE.get(command, error)))
    return out


# ------------------------------------------------------------------------------------------------ checking

@dataclasses.dataclass
class Parsed:
    overrides: list[str]
    multirun: bool
    config_dir: str | None = None


def parse(command: str) -> Parsed:
    """The command's Hydra overrides, as the CLI passes them to Hydra (legacy flags translated)."""
    words = shlex.split(command, comments=True)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    args = words[_program(words):]
    try:
        args = lightning_trainer_overrides(translate(args)[0])
    except LegacyFlagError as err:
        raise LayerwiseError(f"legacy flags: {err}") from None
    overrides, multirun, config_dir, i = [], False, None, 0
    while i < len(args):
        arg = args[i]
        flag = arg.split("=", 1)[0]
        if flag in ("-m", "--multirun"):
            multirun = True
        elif flag in HYDRA_SWITCHES:
            pass
        elif flag in HYDRA_VALUED:
            if "=" not in arg and i + 1 < len(args) and not (flag in ("--cfg", "-c", "--info", "-i")
                                                             and ("=" in args[i + 1] or args[i + 1].startswith("-"))):
                config_dir = args[i + 1] if flag in ("--config-dir", "-cd") else config_dir
                i += 1
        elif arg.startswith("-"):
            raise LayerwiseError(f"{arg}: not a flag the CLI knows")
        else:
            overrides.append(arg)
        i += 1
    return Parsed(overrides, multirun, config_dir)


def jobs(overrides: list[str]) -> list[list[str]]:
    """One list of overrides per job to check: each swept value once (job i takes value i of every key, cycling):
    composing costs ~0.2 s a job, and every combination of `-m method=bp,dgl seed=0,1,2` checks nothing the
    three jobs (bp 0, dgl 1, bp 2) do not."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    axes = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            if o.is_interval_sweep():
                raise LayerwiseError(f"{key}: an interval sweep needs an Optuna search (hparams_search=...)")
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    if not axes:
        return [[]]
    return [[axis[i % len(axis)] for axis in axes] for i in range(max(len(a) for a in axes))]


def compose_job(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def check_job(overrides: list[str]) -> None:
    """Compose one job and check it as a run does before it loads any data."""
    from layerwise.config.checks import check_config
    from layerwise.config.search import check_optimized_metric

    cfg = compose_job(overrides)
    direction = OmegaConf.select(cfg, "hydra.sweeper.direction", default=None)  # an Optuna search's
    with open_dict(cfg):
        del cfg["hydra"]
    check_config(cfg)
    check_optimized_metric(cfg, direction=None if direction is None else str(direction))


def check_command(command: str) -> int:
    """Compose and validate every job of `command`; the number of jobs checked. LayerwiseError or a Hydra error
    (unknown group option, bad override) on the first problem."""
    parsed = parse(command)
    if parsed.config_dir is not None:
        raise LayerwiseError(f"--config-dir {parsed.config_dir}: another config tree (list the page in ELSEWHERE)")
    is_sweep = any(o.is_sweep_override() for o in OverridesParser.create().parse_overrides(parsed.overrides))
    if is_sweep and not parsed.multirun:
        mode = OmegaConf.select(compose_job([o for o in parsed.overrides if "," not in o]), "hydra.mode",
                                default=None)
        if str(mode) != "RunMode.MULTIRUN":
            raise LayerwiseError(f"{command}: a sweep without -m (Hydra refuses it: add -m)")
    all_jobs = jobs(parsed.overrides)
    for job in all_jobs:
        _check_once(tuple(job))
    return len(all_jobs)


@functools.lru_cache(maxsize=None)
def _check_once(job: tuple[str, ...]) -> None:  # an exception is not cached: a failing job fails every command
    check_job(list(job))


def _cases():
    return [(rel, command, error) for rel, command, error in all_commands()
            if rel not in ELSEWHERE and command not in PLACEHOLDERS]


def test_every_page_has_its_commands_found():
    """The extraction finds the commands the pages are known to have (a format change would silently find none)."""
    commands = [c for _, c, _ in all_commands()]
    assert len(commands) > 100
    assert "python main.py -m method=bp,dgl seed=0,1,2" in commands
    assert any(c.startswith("python main.py trainer=ddp trainer.accelerator=cpu trainer.devices=2") for c in commands)
    assert any(c.startswith("layerwise ") for c in commands)
    assert "python main.py --dgl --device cuda:0 --model VGG16 --epochs 100" in commands


def test_placeholders_are_listed():
    """A command with a placeholder is listed in PLACEHOLDERS (with why), and every listed one is still in a page."""
    commands = {c for rel, c, _ in all_commands() if rel not in ELSEWHERE}
    unlisted = sorted(c for c in commands if PLACEHOLDER.search(c) and c not in PLACEHOLDERS)
    assert not unlisted, f"commands with a placeholder: list them in PLACEHOLDERS or make them runnable: {unlisted}"
    stale = sorted(set(PLACEHOLDERS) - commands)
    assert not stale, f"PLACEHOLDERS no page has any more: {stale}"


def test_commands_compose_and_validate():
    """Every command of every page (one test: composing shares Hydra's start-up, ~0.1 s a job)."""
    failures, checked, shown_failing = [], 0, 0
    for rel, command, error in _cases():
        try:
            checked += check_command(command)
        except Exception as err:  # noqa: BLE001 - every failing command in one report
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            if error is None:
                failures.append(f"{rel}: {command}\n    -> {type(err).__name__}: {message}")
            elif error not in str(err):
                failures.append(f"{rel}: {command}\n    -> the page shows: {error}\n    -> the error is: {message}")
            else:
                shown_failing += 1
        else:
            if error is not None:
                failures.append(f"{rel}: {command}\n    -> the page shows it failing ({error}), but it validates")
    assert not failures, f"{len(failures)} documented commands fail:\n" + "\n".join(failures)
    assert checked > 100 and shown_failing >= 5


@pytest.mark.parametrize("bad", [
    "python main.py method=dgl method.aux.typ=cnn",          # a key that does not exist
    "python main.py method=dgl optimizer.lr=abc",            # a value of the wrong type
    "python main.py data=cifar11",                           # an option that does not exist
    "python main.py --epoch 3",                              # an unknown legacy flag
    "python main.py method=bp,dgl seed=0,1",                 # a sweep without -m
    "python main.py -m method=bp,dgl model.dropout=1.5",     # a bad value in a sweep
    "python main.py trainer.devices=[1] trainer.accelerator=cpu",  # a GPU index on CPU
])
def test_a_planted_bad_key_fails(bad):
    """The checks fail on bad commands, also when one is planted in a page among good ones."""
    page = (f"Some prose with `python main.py method=dgl`.\n\n```bash\npython main.py data=digits\n"
            f"{bad}   # comment\n```\n")
    commands = [command for command, _ in commands_in(page)]
    assert commands == ["python main.py data=digits", bad, "python main.py method=dgl"]
    check_command(commands[0])
    with pytest.raises(Exception) as err:
        check_command(commands[1])
    assert not isinstance(err.value, AssertionError)


# ------------------------------------------------------------------------------------------------ running

def _value(overrides: list[str], key: str) -> str | None:
    values = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == key]
    return values[-1] if values else None


def _small_model(overrides: list[str]) -> bool:
    channels = _value(overrides, "model.channels")
    widths = re.findall(r"\d+", channels or "")
    return _value(overrides, "model") == "mlp" or bool(widths and max(int(w) for w in widths) <= 32)


def is_quick(command: str) -> bool:
    parsed = parse(command)
    o = parsed.overrides
    epochs = _value(o, "trainer.max_epochs")
    return (_value(o, "data") in ("digits", "synthetic") and epochs is not None and epochs.isdigit()
            and int(epochs) <= 2 and _small_model(o) and _value(o, "trainer") in (None, "default")
            and not any(_value(o, k) for k in ("trainer.compile", "trainer.precision", "resume", "hydra.run.dir",
                                               "experiment"))
            and not parsed.multirun and len(jobs(o)) == 1)


def _quick_cases():
    first = {}  # a command on several pages runs once
    for rel, command, error in _cases():
        if error is None and is_quick(command):
            first.setdefault(command, rel)
    return [pytest.param(c, id=f"{rel}: {c[:90]}", marks=[] if rel == "README.md" else [pytest.mark.slow])
            for c, rel in first.items()]


@pytest.mark.parametrize("command", _quick_cases())
def test_quick_commands_run(command, tmp_path):
    words = shlex.split(command, comments=True)
    env = {**os.environ, "LAYERWISE_OUTPUT_ROOT": str(tmp_path), "WANDB_MODE": "disabled"}
    while re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    args = words[_program(words):]
    res = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summaries = list(tmp_path.rglob("summary.json"))
    assert len(summaries) == 1 and json.loads(summaries[0].read_text())["status"] == "completed"


# ------------------------------------------------------------------------------------------------ the pages

def _option_keys(cls, prefix: str = "") -> list[str]:
    """The dotted keys of an options dataclass (nested dataclasses expanded)."""
    keys = []
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        key = f"{prefix}{field.name}"
        keys += _option_keys(type(default), f"{key}.") if dataclasses.is_dataclass(default) else [key]
    return keys


def _documented(key: str, text: str) -> bool:
    """`key` (or `method.key`) is named on the page, or its node with a wildcard (`aux.*`), or its last part on a
    line that names its node (`synthesizer.channels` / `kernel_size`)."""
    if f"`{key}`" in text or f"`method.{key}`" in text or re.search(rf"`(method\.)?{re.escape(key)}[=` ]", text):
        return True
    parts = key.split(".")
    for i in range(1, len(parts)):
        node = ".".join(parts[:i])
        if f"`{node}.*`" in text or any(f"`{node}." in line and f"`{parts[-1]}`" in line for line in text.splitlines()):
            return True
    return False


def test_every_rule_has_a_complete_page():
    """docs/rules/<name>.md for every rule and method preset, in the manual's nav and the rules overview, naming its
    paper (or source), with a section on this implementation or its deviations, and every option of the rule's
    Options beyond the common ones."""
    from layerwise.rules import rule_class, rule_names
    from layerwise.rules.base import RuleOptions

    nav = (ROOT / "mkdocs.yml").read_text()
    overview = (DOCS / "rules" / "index.md").read_text()
    common = {f.name for f in dataclasses.fields(RuleOptions)}
    missing = []
    for name in sorted({*rule_names(), *(p.stem for p in (CONF / "method").glob("*.yaml"))}):
        page = DOCS / "rules" / f"{name}.md"
        if not page.is_file():
            missing.append(f"{name}: no docs/rules/{name}.md")
            continue
        text = page.read_text()
        if f"rules/{name}.md" not in nav:
            missing.append(f"{name}: not in mkdocs.yml's nav")
        if f"({name}.md)" not in overview:
            missing.append(f"{name}: not linked from docs/rules/index.md")
        if not re.search(r"\*\*(Paper|Papers|Source)\.?\*\*|^## (The )?[Pp]aper|^## Origin", text, re.M):
            missing.append(f"{name}: no paper or source named")
        if not re.search(r"^#+ .*(this implementation|differ|[Dd]eviation)|\*\*What differs", text, re.M | re.I):
            missing.append(f"{name}: no section on what this implementation does or where it differs")
        if name not in rule_names():
            continue
        for key in _option_keys(rule_class(name).Options):
            if key.split(".")[0] not in common and not _documented(key, text):
                missing.append(f"{name}: option {key} not on its page")
    assert not missing, "\n".join(missing)


def test_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    broken = [link for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
              if not link.startswith(("http://", "https://")) and not (ROOT / link).exists()]
    assert not broken, broken


def test_readme_lists_every_rule_model_and_dataset():
    """The README's lists are written by hand: they name exactly what conf/ and the rule registry offer."""
    from layerwise.rules import rule_names

    readme = (ROOT / "README.md").read_text()
    rules = set(re.findall(r"^\| `(\w+)`(?:, `(\w+)`)? \|", readme, re.M))
    listed_rules = {name for pair in rules for name in pair if name}
    assert listed_rules == {*rule_names(), *(p.stem for p in (CONF / "method").glob("*.yaml"))}
    models = re.search(r"^Models: (.*?)\(\[models\]", readme, re.M | re.S).group(1)
    assert set(re.findall(r"`(\w+)`", models)) == {p.stem for p in (CONF / "model").glob("*.yaml")}
    data = re.search(r"Data: (.*?)\(\[data and offline use\]", readme, re.S).group(1)
    assert set(re.findall(r"`(\w+)`", data)) == {p.stem for p in (CONF / "data").glob("*.yaml")}


def test_legacy_flags_table_matches_the_cli():
    """Every legacy flag the CLI translates is in the table of docs/usage/running.md, and the table has no other."""
    from layerwise import cli

    text = (DOCS / "usage" / "running.md").read_text()
    table = "\n".join(line for line in text[text.index("## Legacy flags"):].splitlines() if line.startswith("| `--"))
    assert set(re.findall(r"(--[a-z_]+)", table)) == set(cli.VALUE_FLAGS) | set(cli.SWITCH_FLAGS)


def test_the_reference_names_every_option():
    """The generated configuration reference (scripts/config_reference.py, run by mkdocs) has a row for every key of
    every rule's Options, with the allowed values its checks enforce."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from config_reference import reference_markdown
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    from layerwise.rules import rule_class, rule_names

    text = reference_markdown()
    missing = [f"method.{key}" for name in rule_names() for key in _option_keys(rule_class(name).Options)
               if f"| `method.{key}` |" not in text]
    assert not missing, missing
    assert "| `trainer.nonfinite` | `str` | `stop` | one of stop \\| skip |" in text
    assert "| `model.dropout` | `float` | `0.0` | in [0, 1) |" in text

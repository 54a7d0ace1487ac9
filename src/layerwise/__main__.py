"""`layerwise ...` / `python -m layerwise ...` (and the repository's main.py): legacy flags -> Hydra overrides,
checks before Hydra starts, the composed config's checks (layerwise.runs.gate, torch-free: a config error returns
before torch, Lightning or wandb are imported), then `layerwise.runs.train.run(cfg)`.

The configs are the package's `conf/` (in the repository a symlink to the top-level conf/, in the wheel real
files), so the command works from any directory.
"""
from __future__ import annotations

import math
import os
import sys

import hydra
from omegaconf import DictConfig

from layerwise import preflight
from layerwise.cli import register_help_resolvers, translate_argv
from layerwise.errors import ConfigError

# An absolute directory, not config_path="conf": imported (console script, main.py) Hydra would turn a relative
# path into pkg://layerwise/conf, a source that needs an __init__.py inside conf/; run as `python -m` it would
# be a file path instead. An absolute path is one file:// source, as main.py's own conf/ was; resolved, so in the
# repository Hydra's messages name the top-level conf/ the user edits, not the symlink.
CONF_DIR = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_main(cfg: DictConfig):
    from layerwise.runs.gate import config_is_valid, run_dir

    if not config_is_valid(cfg, run_dir(cfg)):  # exits 2 for a single run; a sweep job is marked failed
        return math.nan
    from layerwise.runs.train import run  # heavy imports (torch, lightning) only when a job runs

    return run(cfg, config_checked=True)


def main() -> None:
    """The command: leaves the process when done (see `_exit`), so call it as a program, not as a function."""
    try:
        _main()
    except SystemExit as stop:
        code = stop.code
    else:
        code = 0
    _exit(code)


def _exit(code) -> None:
    """Exit as the interpreter would (atexit handlers, flushed streams, the same code) without its module teardown,
    which after torch, torchvision and Lightning takes 2-2.5 s of a small run (measured; `import torch` alone 0.9 s).
    With a non-daemon thread still running the interpreter's own exit waits for it, as always."""
    import atexit
    import threading

    if isinstance(code, str):  # SystemExit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    code = 0 if code is None else code
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if others or not isinstance(code, int) or "torch" not in sys.modules:  # without torch the teardown is quick
        raise SystemExit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to deliver
            pass
    os._exit(code)


def _main() -> None:
    args = translate_argv(sys.argv[1:])
    try:
        args += preflight.prepare(args)  # resume= continues in the run's own dir
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.argv = [sys.argv[0], *args]
    register_help_resolvers(args)  # for --help (conf/hydra/help/layerwise.yaml)
    hydra_main()  # the options' defaults come from layerwise.config.source, which Hydra finds as a plugin


if __name__ == "__main__":
    main()

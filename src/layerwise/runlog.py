"""Console and per-run log files with loguru; stdlib logging (Lightning, Hydra) is routed into it.

Colour (ANSI escape codes) only where a person reads a terminal: the console is coloured when stderr is a TTY,
never when it is piped or a file (CI, Slurm logs), unless FORCE_COLOR asks for it; NO_COLOR always wins
(no-color.org). run.log never holds escape codes. Under data parallel training only process 0 talks: the other
processes print nothing but their own errors, prefixed with their rank.
"""
from __future__ import annotations

import inspect
import logging
import netrc
import os
import re
import sys
import warnings
from pathlib import Path

from loguru import logger

from layerwise.hydra_job import process_rank

CONSOLE_FORMAT = "<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}"
FILE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {name}:{line} | {message}"
# Processes other than rank 0 repeat rank 0's lines; they print only their own errors, marked with their rank.
WORKER_FORMAT = "<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> [rank RANK] {message}"
WORKER_LEVEL = "ERROR"
_console_sink: int | None = None
_console_rank: int | None = None
# Library chatter that says nothing about the run.
QUIET_MESSAGES = ("Tip: For seamless cloud logging", "TPU available", "HPU available")
QUIET_WARNINGS = (
    r".*exists and is not empty.*",  # CSVLogger writes metrics.csv into the (non-empty) run directory on purpose
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*smaller than the logging interval.*",
    r".*does not have many workers.*",
)


# Secrets never reach a log: the values of secret-looking environment variables (WANDB_API_KEY, *_TOKEN, ...) and
# the wandb password in ~/.netrc are replaced wherever they appear, and so is whatever follows `api_key=`,
# `WANDB_API_KEY: `, `token=`, `password=`, `Authorization: Bearer`.
REDACTED = "***"
_SECRET_ENV = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)(\b(?:wandb_api_key|api[_-]?key|access[_-]?token|auth[_-]?token|token|secret|password|passwd)\b['\"]?\s*[=:]\s*"
    r"['\"]?|\bbearer\s+)([^\s'\",;}\]]+)")
_MIN_SECRET_LEN = 8  # shorter values (flags, "1", "true") are not secrets and would redact ordinary words
_netrc_secrets: list[str] | None = None


def wandb_netrc_entry() -> tuple | None:
    """(login, account, password) that `wandb login` stored for api.wandb.ai in ~/.netrc (or $NETRC), or None."""
    try:
        return netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc"))).authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return None


def _netrc_passwords() -> list[str]:
    global _netrc_secrets
    if _netrc_secrets is None:
        auth = wandb_netrc_entry()
        _netrc_secrets = [auth[2]] if auth and auth[2] else []
    return _netrc_secrets


def secret_values() -> list[str]:
    """The literal secrets to hide: secret-looking environment variables' values and the wandb netrc password."""
    values = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= _MIN_SECRET_LEN}
    values.update(_netrc_passwords())
    return sorted(values, key=len, reverse=True)  # longest first: a key that contains another is hidden whole


def redact(text: str) -> str:
    """`text` with every secret replaced by ***."""
    for value in secret_values():
        if value in text:
            text = text.replace(value, REDACTED)
    return _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED, text)


# CSI sequences (colours, cursor moves) and OSC sequences (titles, hyperlinks).
ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    return ANSI_ESCAPE.sub("", text)


def use_color(stream) -> bool:
    """Whether output to `stream` may carry colour codes: NO_COLOR (set, non-empty) never, FORCE_COLOR (set,
    non-empty) always, otherwise only a terminal. The same rules rich follows, so the log and the tables agree
    (loguru alone would also colour a pipe under CI=true GITHUB_ACTIONS=... or PYCHARM_HOSTED)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class _RedactingStream:
    """A loguru stream sink that redacts each formatted message (tracebacks included) before writing it, and
    drops escape codes (a library's coloured text included) from a stream that is not to be coloured."""

    def __init__(self, stream, close: bool = False, color: bool = False):
        self._stream, self._close, self._color = stream, close, color

    def write(self, message: str) -> None:
        message = redact(message)
        self._stream.write(message if self._color else strip_ansi(message))

    def flush(self) -> None:
        self._stream.flush()

    def stop(self) -> None:
        if self._close:
            self._stream.close()


class InterceptHandler(logging.Handler):
    """The handler loguru's docs recommend for sending stdlib records to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        if any(noise in record.getMessage() for noise in QUIET_MESSAGES):
            return
        frame, depth = inspect.currentframe(), 0
        while frame and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame, depth = frame.f_back, depth + 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def setup_console(level: str = "INFO", rank: int | None = None) -> None:
    """One console sink for the process (idempotent: multirun jobs share it). `rank`: this process's rank under
    data parallel training (default: from the environment, as Lightning's launcher sets it); any rank but 0 gets
    a console that shows only its own errors."""
    global _console_sink, _console_rank
    rank = process_rank() if rank is None else rank
    if _console_sink is not None and _console_rank == rank:
        return
    # Also drops sinks a forked worker inherited from its parent (rank 0's run.log): only rank 0 writes it.
    logger.remove()
    color = use_color(sys.stderr)
    if rank == 0:
        _console_sink = logger.add(_RedactingStream(sys.stderr, color=color), level=level, format=CONSOLE_FORMAT,
                                   colorize=color)
    else:
        _console_sink = logger.add(_RedactingStream(sys.stderr, color=color), level=WORKER_LEVEL,
                                   format=WORKER_FORMAT.replace("RANK", str(rank)), colorize=color)
        warnings.simplefilter("ignore")  # the same warnings as rank 0's, which shows them once
    _console_rank = rank
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.basicConfig(handlers=[InterceptHandler()], level=logging.INFO, force=True)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers = [InterceptHandler()]
        lib_logger.propagate = False


def add_run_log(run_dir: Path) -> int:
    """A sink writing this job's run.log; remove it with `logger.remove(id)` when the job ends."""
    stream = open(run_dir / "run.log", "a", encoding="utf-8")  # noqa: SIM115 - closed by the sink's stop()
    return logger.add(_RedactingStream(stream, close=True), level="DEBUG", format=FILE_FORMAT, enqueue=False,
                      colorize=False)

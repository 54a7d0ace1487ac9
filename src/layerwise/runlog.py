"""Console and per-run log files with loguru; stdlib logging (Lightning, Hydra) is routed into it."""
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

CONSOLE_FORMAT = "<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}"
FILE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {name}:{line} | {message}"
_console_sink: int | None = None
# Library chatter that says nothing about the run.
QUIET_MESSAGES = ("Tip: For seamless cloud logging", "TPU available", "HPU available")
QUIET_WARNINGS = (
    r".*exists and is not empty.*",  # CSVLogger writes metrics.csv into the (non-empty) run directory on purpose
    r".*anonymous setting has no effect.*",
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


class _RedactingStream:
    """A loguru stream sink that redacts each formatted message (tracebacks included) before writing it."""

    def __init__(self, stream, close: bool = False):
        self._stream, self._close = stream, close

    def write(self, message: str) -> None:
        self._stream.write(redact(message))

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:  # loguru colours the console only for a terminal
        return bool(getattr(self._stream, "isatty", lambda: False)())

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


def setup_console(level: str = "INFO") -> None:
    """One console sink for the process (idempotent: multirun jobs share it)."""
    global _console_sink
    if _console_sink is not None:
        return
    logger.remove()
    _console_sink = logger.add(_RedactingStream(sys.stderr), level=level, format=CONSOLE_FORMAT,
                               colorize=_colorize(sys.stderr))
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


def _colorize(stream) -> bool | None:
    """What loguru decides for `stream` itself (the redacting wrapper would hide that it is sys.stderr)."""
    try:
        from loguru._colorama import should_colorize

        return should_colorize(stream)
    except Exception:  # noqa: BLE001 - private helper; fall back to a plain terminal check
        return None

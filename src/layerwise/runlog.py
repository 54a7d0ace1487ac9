"""Console and per-run log files with loguru; stdlib logging (Lightning, Hydra) is routed into it."""
from __future__ import annotations

import inspect
import logging
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
    _console_sink = logger.add(sys.stderr, level=level, format=CONSOLE_FORMAT, colorize=None)
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.basicConfig(handlers=[InterceptHandler()], level=logging.INFO, force=True)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers = [InterceptHandler()]
        lib_logger.propagate = False


def add_run_log(run_dir: Path) -> int:
    """A sink writing this job's run.log; remove it with `logger.remove(id)` when the job ends."""
    return logger.add(run_dir / "run.log", level="DEBUG", format=FILE_FORMAT, enqueue=False, encoding="utf-8")

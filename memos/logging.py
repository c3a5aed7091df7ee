"""structlog set-up: JSON lines with the fields every syscall binds (trace_id, principal, syscall, cube,
duration_ms). Call ``configure_logging`` once per process (CLI, Ray actor); libraries only call ``get_logger``."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

_configured = False


def configure_logging(level: str | None = None, *, stream: TextIO | None = None, json: bool = True) -> None:
    """Route structlog to ``stream`` (stderr by default) as JSON lines (or console text with ``json=False``)."""
    global _configured
    level_name = (level or os.environ.get("MEMOS_LOG_LEVEL", "WARNING")).upper()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.WARNING)),
        logger_factory=structlog.PrintLoggerFactory(file=stream or _Stderr()),
        cache_logger_on_first_use=False,
    )
    _configured = True


class _Stderr:
    """``sys.stderr`` as it is when a line is written, not when logging was configured: a process that swaps it
    (pytest's capture, a CLI run inside a test) never leaves the loggers writing to a closed stream."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def get_logger(name: str = "memos") -> Any:
    if not _configured:
        configure_logging()
    return structlog.get_logger(name)

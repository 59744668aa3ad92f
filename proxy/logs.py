"""Logging set-up: one structlog pipeline for our events and for stdlib loggers (aiohttp, uvicorn).

Our own events go through structlog's fast path (a filtering bound logger writing straight to
stdout). Records from stdlib loggers (``aiohttp.server``, ``uvicorn.error``, ...) are rendered by
a ``ProcessorFormatter`` that shares the same timestamp, level and renderer, so every line on
stdout looks alike. The canonical request line, emitted on every request, is rendered by
``proxy.logline`` as this JSON pipeline would, without running it; both write through one
``proxy.logstream.LogStream``, which batches those lines and keeps stdout in order.
"""

from __future__ import annotations

import atexit
import logging
import sys
from typing import Literal, TextIO, cast

import structlog
from structlog.typing import Processor

from proxy import logline
from proxy.logstream import LogStream

LogFormat = Literal["json", "console"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "console")


def _renderer(log_format: LogFormat) -> Processor:
    if log_format == "console":
        return structlog.dev.ConsoleRenderer(colors=False)
    return structlog.processors.JSONRenderer()


def configure_logging(
    log_format: LogFormat = "json", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog and the stdlib root logger once, at start-up.

    ``level`` filters both pipelines; ``stream`` defaults to stdout (twelve-factor: the process
    writes its event stream, the platform collects it).
    """
    output = LogStream(stream if stream is not None else sys.stdout)
    # The interpreter flushes its own stdout at exit, but not lines still waiting in ``output``.
    atexit.register(output.drain)
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = _renderer(log_format)
    processors: list[Processor] = [*shared, structlog.processors.format_exc_info, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # WriteLogger only calls write and flush, which LogStream has.
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, output)),
        cache_logger_on_first_use=True,
    )
    # Only the JSON line has a fast path; the console format is for people, not for speed.
    fast = log_format == "json"
    logline.install(logline.LineWriter(output, numeric_level, processors) if fast else None)

    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # uvicorn installs its own handlers on these when given a log config; we pass none, and make
    # sure they propagate to the root handler above instead of printing in their own format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aiohttp"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True

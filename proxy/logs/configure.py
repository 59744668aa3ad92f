"""Logging set-up: one structlog pipeline for our events and for stdlib loggers (aiohttp, uvicorn).

Our own events go through structlog's fast path (a filtering bound logger writing straight to
stdout). Records from stdlib loggers (``aiohttp.server``, ``uvicorn.error``, ...) are rendered by
a ``ProcessorFormatter`` that shares the same timestamp, level and renderer, so every line on
stdout looks alike. The canonical request line, emitted on every request, is rendered by
``proxy.logs.logline`` as this JSON pipeline would, without running it; both write through one
``proxy.logs.logstream.LogStream``, which batches those lines and keeps stdout in order.
"""

from __future__ import annotations

import atexit
import logging
import sys
from typing import Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from proxy.logs import logline
from proxy.logs.logstream import LogStream

LogFormat = Literal["json", "console"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "console")

CONSOLE_LEADING_FIELDS = ("status", "method", "path", "duration_ms")
"""The console format writes these first, after the time, level and event; then the rest."""


def lead_with_request_fields(event_dict: EventDict) -> EventDict:
    """Put what a person scans a request line for first, the other fields after it, sorted.

    ``ConsoleRenderer`` sorts every field by name, which leaves ``status`` somewhere after
    ``client`` and ``outcome`` (issue 14). It keeps the event dict's order when told not to sort,
    so the order is made here. The time, level and event are its own columns, wherever they are.
    """
    leading = {key: event_dict.pop(key) for key in CONSOLE_LEADING_FIELDS if key in event_dict}
    return {**leading, **dict(sorted(event_dict.items()))}


class _ConsoleRenderer:
    """structlog's console renderer, uncoloured, with the fields in ``lead_with_request_fields``'s
    order."""

    def __init__(self) -> None:
        self._render = structlog.dev.ConsoleRenderer(colors=False, sort_keys=False)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        return self._render(logger, method_name, lead_with_request_fields(event_dict))


def _renderer(log_format: LogFormat) -> Processor:
    if log_format == "console":
        return _ConsoleRenderer()
    return structlog.processors.JSONRenderer()


_copy_record_extras = structlog.stdlib.ExtraAdder()


def event_from_record(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A stdlib record that names its ``event`` (an ``extra``) becomes that event with its fields.

    The convention of ``demo_backend.canceller``: a library logs a readable message through
    ``logging``, and passes the snake_case event name and the fields as ``extra``. Here the line
    gets the event name, not the message, and the extras as fields, exactly as if it had been
    logged through structlog. Records without an ``event`` (uvicorn's, aiohttp's) are left as they
    are: uvicorn's ``color_message`` extra is not for the JSON line.
    """
    record = event_dict.get("_record")
    if record is not None and isinstance(getattr(record, "event", None), str):
        return _copy_record_extras(logger, method_name, event_dict)
    return event_dict


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
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared, event_from_record],
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

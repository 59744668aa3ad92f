"""The canonical request line's fast path: the same JSON line, without structlog's processor chain.

One line per request made the chain the proxy's largest cost after aiohttp itself. For that one
event, ``LineWriter`` does what the JSON pipeline configured in ``proxy.logs.configure`` does, in
the same order and with the same result: the level filter of the bound logger,
``merge_contextvars``, ``add_log_level``, ``TimeStamper(fmt="iso", utc=True)``, ``JSONRenderer``,
then stdout (batched: ``proxy.logs.logstream``). Measured per line on the benchmark machine
(``python -m benchmarks.logline``, best of 7 timeit runs, output to /dev/null; each step on top of
the one before):

- structlog's processor chain, a write and a flush per line (before): 16.1 µs
- the same event dict rendered here, without the chain: 10.7 µs
- the timestamp from ``UtcTimestamps`` (0.6 µs) instead of ``datetime.now().isoformat()``
  (1.5 µs): 9.1 µs
- lines batched per loop turn (16 a turn; ``proxy.logs.logstream``): 8.0 µs
- the usual request's fields written by one f-string (a ``FieldsRenderer``; 1.0 µs) instead of
  the JSON encoder (3.7 µs): 5.8 µs

Under wrk load (``benchmarks/run``'s 1 KiB case) the proxy's CPU time per request went from
288 µs to 250 µs, and req/s from 3,480 to 4,015; with no canonical line at all they are 227 µs
and 4,426 (README, "Where hangup's time goes", has three such runs).

Whenever the chain is not the one ``configure_logging`` installed (``structlog.testing``'s
``capture_logs`` swaps it, in place, for its capture), the event goes through structlog, so a
capture sees it exactly as before. The console format always goes through structlog.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

from proxy.logs.logstream import LogStream

_fallback_log = structlog.get_logger("hangup.proxy")

# The levels structlog's filtering bound logger knows, as the stdlib numbers them.
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class UtcTimestamps:
    """``TimeStamper(fmt="iso", utc=True)``'s format (``2026-11-25T22:06:00.593198Z``), cheaper.

    The date and time of day are formatted once a second; each call adds only the microseconds.
    (structlog leaves the fraction out in the one microsecond a second where it is zero; here it
    is always there. Both are ISO-8601.)
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return f"{self._prefix}{nanoseconds // 1000:06d}Z"


FieldsRenderer = Callable[[dict[str, Any]], str | None]
"""Writes one event's fields as JSON object members exactly as ``json.dumps`` would (``"a": 1,
"b": "x"``), or returns ``None`` for a shape it does not know. A caller whose fields have a
fixed shape can do this with one f-string, about three times faster than the JSON encoder."""

encode_json_string = json.encoder.encode_basestring_ascii
"""A ``str`` as ``json.dumps`` writes it (quoted, escaped, ASCII only)."""


REQUEST_FIELDS = (
    "request_id",
    "method",
    "path",
    "status",
    "outcome",
    "duration_ms",
    "upstream_status",
    "client",
)
"""The fields the canonical ``request`` line gives every request, in order
(``proxy.exchange.state.Exchange.write_log_line``); the ones only some get come after them."""
_REQUEST_FIELD_COUNT = len(REQUEST_FIELDS)


def render_request_fields(fields: dict[str, Any]) -> str | None:
    """A ``FieldsRenderer`` for the canonical line of a request that ended without extras.

    That is nearly every request (no hang-up, no reason: exactly ``REQUEST_FIELDS``), and this one
    f-string costs a third of the JSON encoder's time; any other shape, or a value of another type,
    is left to the encoder.
    """
    if len(fields) != _REQUEST_FIELD_COUNT:
        return None
    request_id, method, path = fields["request_id"], fields["method"], fields["path"]
    status, outcome, duration_ms = fields["status"], fields["outcome"], fields["duration_ms"]
    upstream_status, client = fields["upstream_status"], fields["client"]
    if not (
        request_id.__class__ is method.__class__ is path.__class__ is outcome.__class__ is str
        and duration_ms.__class__ is float
        and math.isfinite(duration_ms)
        and (status is None or status.__class__ is int)
        and (upstream_status is None or upstream_status.__class__ is int)
        and (client is None or client.__class__ is str)
    ):
        return None
    string = encode_json_string
    return (
        f'"request_id": {string(request_id)}, "method": {string(method)}, '
        # The integers inline: a function call each cost as much as the rest of one (issue 16).
        f'"path": {string(path)}, "status": {"null" if status is None else int.__repr__(status)}, '
        f'"outcome": {string(outcome)}, "duration_ms": {duration_ms!r}, '
        f'"upstream_status": '
        f"{'null' if upstream_status is None else int.__repr__(upstream_status)}, "
        f'"client": {"null" if client is None else string(client)}'
    )


def _json_fallback(value: Any) -> Any:
    """What structlog's ``JSONRenderer`` does with a value JSON has no type for."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


class LineWriter:
    """Renders and queues one event as the installed JSON pipeline would have."""

    def __init__(self, stream: LogStream, min_level: int, processors: list[Processor]) -> None:
        self._stream = stream
        self._enabled = frozenset(name for name, number in LEVELS.items() if number >= min_level)
        # The list structlog.configure was given: capture_logs edits this very list.
        self._processors = processors
        self._installed = list(processors)
        # Built once: json.dumps with any keyword argument builds a new encoder per call.
        self._encoder = json.JSONEncoder(default=_json_fallback)
        self._timestamps = UtcTimestamps()

    def write(
        self,
        level: str,
        event: str,
        fields: dict[str, Any],
        render_fields: FieldsRenderer | None = None,
    ) -> None:
        """Log ``event`` with ``fields`` at ``level`` (``"info"``, ``"warning"``, ...).

        ``render_fields``, if given, may write ``fields`` as JSON members itself (see
        ``FieldsRenderer``); when it returns ``None``, the JSON encoder does.
        """
        if level not in self._enabled:
            return
        if self._processors != self._installed:
            getattr(_fallback_log, level)(event, **fields)
            return
        # The key order of structlog's event dict: the call's fields, "event", the context's
        # keys not already given, "level", "timestamp".
        members = render_fields(fields) if render_fields is not None else None
        given = len(fields)
        event_dict: EventDict = fields
        event_dict["event"] = event
        structlog.contextvars.merge_contextvars(None, level, event_dict)
        timestamp = self._timestamps.now()
        # The rendered members serve only if the context added no key ahead of "level".
        if members is None or len(event_dict) != given + 1:
            event_dict["level"] = level
            event_dict["timestamp"] = timestamp
            line = self._encoder.encode(event_dict)
        else:
            # Level names and the timestamp are plain ASCII: nothing in them needs escaping.
            tail = f'"event": {encode_json_string(event)}, "level": "{level}"'
            line = f'{{{members}, {tail}, "timestamp": "{timestamp}"}}'
        self._stream.write_soon(line + "\n")


_writer: LineWriter | None = None


def install(writer: LineWriter | None) -> None:
    """Called by ``proxy.logs.configure.configure_logging``: the JSON format gets a writer, others
    none."""
    global _writer  # noqa: PLW0603 - configured once per process, like structlog itself
    _writer = writer


def current() -> LineWriter | None:
    """The installed writer (``None``: every event goes through structlog)."""
    return _writer


def write_event(
    level: str, event: str, fields: dict[str, Any], render_fields: FieldsRenderer | None = None
) -> None:
    """Log one hot-path event; ``fields`` is used up (it becomes the event dict)."""
    if _writer is None:
        getattr(_fallback_log, level)(event, **fields)
    else:
        _writer.write(level, event, fields, render_fields)

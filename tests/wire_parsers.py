"""What crossed the wire, as three independent HTTP/1.1 parsers read it.

A smuggling bug lives in the gap between two parsers: the bytes a proxy writes mean one thing to
the proxy and another to whatever reads them next. So the bytes that reached the upstream are not
read by hangup's own view, nor only by the toy framing in ``tests.raw_upstream``, but by:

* **h11**, the pure-Python parser uvicorn's default ``h11`` protocol uses;
* **llhttp** through ``httptools``, the parser of uvicorn's ``httptools`` protocol (and of Node);
* **aiohttp's pure-Python parser** (``HttpRequestParserPy``), a third implementation; aiohttp's
  C parser is llhttp again, so it would add nothing.

``read_by_every_parser`` parses one connection's bytes with each and insists they agree, message
by message, with nothing left over: the same count, method, target and body.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import h11
import httptools
from aiohttp.http_parser import HttpRequestParserPy


@dataclass(frozen=True)
class WireMessage:
    """One request as a parser read it off the wire."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]

    @property
    def summary(self) -> tuple[str, str, str]:
        """What every parser must agree on (header spellings differ between them, legally)."""
        return (self.method, self.target, self.digest)


class WireParseError(AssertionError):
    """A parser refused the bytes, or read them differently from another parser."""


def parse_with_h11(data: bytes) -> list[WireMessage]:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 24)
    connection.receive_data(data)
    connection.receive_data(b"")  # the end: a message cut short is an error, not a wait
    messages: list[WireMessage] = []
    request: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            raise WireParseError(f"h11: {exc}") from exc
        if isinstance(event, h11.Request):
            request, body = event, bytearray()
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            messages.append(
                WireMessage(
                    request.method.decode("ascii"),
                    request.target.decode("latin-1"),
                    tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers),
                    bytes(body),
                )
            )
            connection.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            connection.send(h11.EndOfMessage())
            if connection.our_state is h11.MUST_CLOSE:
                break
            connection.start_next_cycle()
        else:  # PAUSED (after a Connection: close), NEED_DATA, or the end of the bytes
            break
    if connection.their_state not in (h11.IDLE, h11.DONE, h11.CLOSED, h11.MUST_CLOSE):
        raise WireParseError(f"h11: bytes left over in state {connection.their_state}")
    return messages


class _LlhttpRecorder:
    def __init__(self) -> None:
        self.messages: list[WireMessage] = []
        self.started = 0
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.started += 1
        self._url, self._headers, self._body = b"", [], bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii")
        self.messages.append(
            WireMessage(
                method, self._url.decode("latin-1"), tuple(self._headers), bytes(self._body)
            )
        )


def parse_with_llhttp(data: bytes) -> list[WireMessage]:
    recorder = _LlhttpRecorder()
    try:
        recorder.parser.feed_data(data)
    except httptools.HttpParserError as exc:
        raise WireParseError(f"llhttp: {exc}") from exc
    if recorder.started != len(recorder.messages):
        raise WireParseError("llhttp: a message was left incomplete")
    return recorder.messages


def parse_with_aiohttp(data: bytes) -> list[WireMessage]:
    """aiohttp's pure-Python request parser; it needs a loop only for its body streams."""
    parser = HttpRequestParserPy(
        mock.Mock(),
        _aiohttp_loop(),
        1 << 24,
        max_line_size=1 << 20,
        max_field_size=1 << 20,
        max_headers=1 << 16,
    )
    try:
        parsed, _upgraded, tail = parser.feed_data(data)
    except Exception as exc:
        raise WireParseError(f"aiohttp: {exc!r}") from exc
    if tail:
        raise WireParseError(f"aiohttp: {len(tail)} bytes left over")
    messages = []
    for message, payload in parsed:
        if not payload.is_eof():
            raise WireParseError("aiohttp: a body was left incomplete")
        headers = tuple(
            (n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in message.raw_headers
        )
        messages.append(WireMessage(message.method, message.path, headers, payload.read_nowait()))
    return messages


@functools.cache
def _aiohttp_loop() -> asyncio.AbstractEventLoop:
    """One loop for every parse: aiohttp's body streams only need one to exist, never to run."""
    return asyncio.new_event_loop()


PARSERS: dict[str, Callable[[bytes], list[WireMessage]]] = {
    "h11": parse_with_h11,
    "llhttp": parse_with_llhttp,
    "aiohttp": parse_with_aiohttp,
}


def read_by_every_parser(data: bytes) -> list[WireMessage]:
    """The messages in ``data``, which every parser must read the same way, whole.

    Returns llhttp's reading (headers lower-cased, as all three compare them).
    """
    readings = {name: parse(data) for name, parse in PARSERS.items()}
    summaries = {
        name: [message.summary for message in messages] for name, messages in readings.items()
    }
    if len({tuple(summary) for summary in summaries.values()}) != 1:
        raise WireParseError(f"the parsers disagree on {data!r}: {summaries}")
    return readings["llhttp"]


# --- answers, as a client reads them ----------------------------------------------------------


@dataclass(frozen=True)
class WireAnswer:
    status: int
    body: bytes


def answers_with_h11(data: bytes, methods: list[str]) -> list[WireAnswer]:
    connection = h11.Connection(h11.CLIENT)
    connection.receive_data(data)
    connection.receive_data(b"")
    answers: list[WireAnswer] = []
    for method in methods:
        connection.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
        connection.send(h11.EndOfMessage())
        status, body = 0, bytearray()
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as exc:
                raise WireParseError(f"h11: {exc}") from exc
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                answers.append(WireAnswer(status, bytes(body)))
                break
            elif isinstance(event, h11.InformationalResponse):
                continue
            else:
                raise WireParseError(f"h11: the answer to {method} ended early ({event})")
        if connection.our_state is h11.MUST_CLOSE:
            break
        connection.start_next_cycle()
    return answers


class _LlhttpAnswers:
    def __init__(self) -> None:
        self.answers: list[WireAnswer] = []
        self._body = bytearray()
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self._body = bytearray()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status >= 200:
            self.answers.append(WireAnswer(status, bytes(self._body)))


def answers_with_llhttp(data: bytes) -> list[WireAnswer]:
    """llhttp's reading of ``data`` (answers to requests other than HEAD)."""
    recorder = _LlhttpAnswers()
    try:
        recorder.parser.feed_data(data)
    except httptools.HttpParserError as exc:
        raise WireParseError(f"llhttp: {exc}") from exc
    return recorder.answers


def read_answers_by_every_parser(data: bytes, methods: list[str]) -> list[WireAnswer]:
    """The answers in ``data`` (to requests of ``methods``), which h11 and llhttp must agree on.

    Two parsers, as the two kinds of client a user puts in front: a Python one (h11, httpx's) and
    llhttp (Node's, and aiohttp's C parser).
    """
    by_h11 = answers_with_h11(data, methods)
    by_llhttp = answers_with_llhttp(data)
    if by_h11 != by_llhttp:
        raise WireParseError(f"the parsers disagree on {data!r}: h11 {by_h11}, llhttp {by_llhttp}")
    return by_h11

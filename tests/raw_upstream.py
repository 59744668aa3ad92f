"""A raw-socket upstream for proxy tests: it records every byte and every connection's end.

Each accepted connection reads requests (framed by Content-Length or chunked) and hands each to
the test's ``answer`` coroutine, which returns the raw bytes to send back (or ``None`` to close
without answering). While an answer is pending the connection keeps reading, so a close by the
proxy is seen at once: that is the "backend's connection_lost" the proxy must cause.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from tests.support import LOOPBACK, WAIT


@dataclass
class ReceivedRequest:
    head: bytes
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def header_names(self) -> list[str]:
        return [key for key, _ in self.headers]


@dataclass
class UpstreamConnection:
    number: int
    requests: list[ReceivedRequest] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    first_byte: asyncio.Event = field(default_factory=asyncio.Event)
    _more_bytes: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, data: bytes) -> None:
        self.received += data
        self.first_byte.set()
        self._more_bytes.set()

    async def wait_received(self, size: int) -> None:
        """Wait (bounded) until at least ``size`` bytes have arrived on this connection."""
        async with asyncio.timeout(WAIT):
            while len(self.received) < size:
                self._more_bytes.clear()
                await self._more_bytes.wait()


Answer = Callable[[ReceivedRequest, UpstreamConnection], Coroutine[Any, Any, bytes | None]]


def response_bytes(
    status: int = 200,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    reason: str = "OK",
) -> bytes:
    head = [f"HTTP/1.1 {status} {reason}"]
    fields = list(headers or [])
    if not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in fields):
        fields.append(("Content-Length", str(len(body))))
    head += [f"{name}: {value}" for name, value in fields]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


async def ok_answer(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
    return response_bytes(200, b"ok")


async def never_answer(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
    """A silent upstream: the request is read, and no answer ever comes."""
    await asyncio.Event().wait()
    return b""


def answer_with(data: bytes) -> Answer:
    """An answer that sends ``data`` as it is, whatever the request."""

    async def answer(request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        return data

    return answer


class SlowPathHeld:
    """Answers at once, except ``/slow``, which waits until the test sets ``release``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, request: ReceivedRequest, connection: UpstreamConnection) -> bytes:
        if request.target == "/slow":
            await self.release.wait()
            return response_bytes(200, b"slow answer")
        return response_bytes(200, b"fast")


class RawUpstream:
    def __init__(self, answer: Answer = ok_answer) -> None:
        self.answer = answer
        self.connections: list[UpstreamConnection] = []
        self.requests: list[ReceivedRequest] = []
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=WAIT)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def wait_requests(self, count: int) -> list[ReceivedRequest]:
        await self.wait_until(lambda: len(self.requests) >= count)
        return self.requests[:count]

    def closed_count(self) -> int:
        return sum(connection.closed.is_set() for connection in self.connections)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = UpstreamConnection(len(self.connections))
        self.connections.append(connection)
        await self._notify()
        try:
            await self._serve_requests(connection, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            connection.closed.set()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            await self._notify()
            self._tasks.discard(task)

    async def _serve_requests(
        self,
        connection: UpstreamConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        recording = _RecordingReader(reader, connection)
        while True:
            request = await _read_request(recording)
            if request is None:
                return
            connection.requests.append(request)
            self.requests.append(request)
            await self._notify()
            answer = asyncio.create_task(self.answer(request, connection))
            eof = asyncio.create_task(recording.wait_eof())
            done, _ = await asyncio.wait({answer, eof}, return_when=asyncio.FIRST_COMPLETED)
            if eof in done and answer not in done:
                answer.cancel()
                return
            eof.cancel()
            await asyncio.wait({eof})
            data = answer.result()
            if data is None:
                return
            writer.write(data)
            await writer.drain()


class _RecordingReader:
    """Reads from the stream while recording every byte; ``wait_eof`` peeks for a close."""

    def __init__(self, reader: asyncio.StreamReader, connection: UpstreamConnection) -> None:
        self._reader = reader
        self._connection = connection
        self._pending = bytearray()

    def _record(self, data: bytes) -> None:
        if data:
            self._connection.record(data)

    async def readuntil(self, separator: bytes) -> bytes:
        while separator not in self._pending:
            data = await self._reader.read(65536)
            if not data:
                raise asyncio.IncompleteReadError(bytes(self._pending), None)
            self._record(data)
            self._pending += data
        index = self._pending.index(separator) + len(separator)
        chunk = bytes(self._pending[:index])
        del self._pending[:index]
        return chunk

    async def readexactly(self, size: int) -> bytes:
        while len(self._pending) < size:
            data = await self._reader.read(65536)
            if not data:
                raise asyncio.IncompleteReadError(bytes(self._pending), size)
            self._record(data)
            self._pending += data
        chunk = bytes(self._pending[:size])
        del self._pending[:size]
        return chunk

    async def wait_eof(self) -> None:
        """Return when the peer closes; bytes that arrive meanwhile are kept for the next read."""
        while True:
            data = await self._reader.read(65536)
            if not data:
                return
            self._record(data)
            self._pending += data


async def _read_request(reader: _RecordingReader) -> ReceivedRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    lowered = {name.lower(): value for name, value in headers}
    body = b""
    chunked = lowered.get("transfer-encoding", "").lower() == "chunked"
    if chunked:
        body = await _read_chunked_body(reader)
    elif "content-length" in lowered:
        body = await reader.readexactly(int(lowered["content-length"]))
    return ReceivedRequest(head, method, target, headers, body, chunked)


async def _read_chunked_body(reader: _RecordingReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)

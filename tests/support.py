"""Shared test machinery: raw client sockets, hang-ups, the console scripts as processes, logs.

Everything here talks to 127.0.0.1 only and bounds every wait with ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from structlog.testing import capture_logs

from demo_backend.canceller import LOGGER_NAME as CANCEL_LOGGER_NAME
from demo_backend.child_process import LogLines, spawn_with_log_lines

LOOPBACK = "127.0.0.1"
HangupKind = Literal["fin", "rst"]
HANGUP_KINDS: tuple[HangupKind, ...] = ("fin", "rst")
WAIT = 10.0  # the bound on any single wait in a test, in seconds


def script_path(name: str) -> str:
    """The console script installed next to the running interpreter (the venv's bin/)."""
    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        raise FileNotFoundError(f"console script {name!r} not installed next to {sys.executable}")
    return str(candidate)


def proxy_argv(upstream_url: str, *extra: str) -> list[str]:
    """The real ``hangup-proxy`` on ephemeral loopback ports, with an admin listener."""
    return [
        script_path("hangup-proxy"),
        "--listen",
        f"{LOOPBACK}:0",
        "--admin",
        f"{LOOPBACK}:0",
        "--upstream",
        upstream_url,
        *extra,
    ]


# --- raw client connections -------------------------------------------------------------------


@dataclass
class RawConnection:
    """One client TCP connection driven byte by byte, so a test controls exactly how it ends."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(
        cls, port: int, host: str = LOOPBACK, *, receive_buffer: int | None = None
    ) -> RawConnection:
        """Connect; ``receive_buffer`` shrinks the socket's receive buffer (set before the
        connect, so the window it advertises is small too): a client that does not read then
        stops the proxy's writes after a few KiB."""
        async with asyncio.timeout(WAIT):
            if receive_buffer is None:
                reader, writer = await asyncio.open_connection(host, port)
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
                reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        async with asyncio.timeout(WAIT):
            await self.writer.drain()

    def hang_up(self, kind: HangupKind) -> None:
        """Close the connection: a FIN (plain close) or a RST (``SO_LINGER`` with zero timeout)."""
        sock = self.writer.get_extra_info("socket")
        if kind == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.close()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def read_response(self, *, head: bool = False) -> RawResponse:
        """Read one response: status line, headers, and a body framed by CL, chunked or close."""
        async with asyncio.timeout(WAIT):
            return await read_response(self.reader, head=head)


@dataclass
class RawResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes
    chunked: bool = False

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> RawResponse:
    raw_head = await reader.readuntil(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    version, status, *reason = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    response = RawResponse(
        version, int(status), reason[0] if reason else "", headers, b"", raw_head
    )
    if response.status == 100:
        return await read_response(reader, head=head)
    if head or response.status in (204, 304) or 100 <= response.status < 200:
        return response
    length = response.header("content-length")
    if length is not None:
        response.body = await reader.readexactly(int(length))
    elif (response.header("transfer-encoding") or "").lower() == "chunked":
        response.chunked = True
        response.body = await _read_chunked(reader)
    else:
        response.body = await reader.read()
    return response


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailer fields
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def exchange(port: int, data: bytes, *, head: bool = False) -> RawResponse:
    """Send ``data`` on a new connection to ``port``, read one answer, close."""
    client = await RawConnection.open(port)
    await client.send(data)
    response = await client.read_response(head=head)
    await client.close()
    return response


def request_bytes(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    host: str = "test.local",
) -> bytes:
    """A request written byte for byte; ``Content-Length`` is added when there is a body."""
    lines = [f"{method} {target} {version}", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body and not any(
        name.lower() in ("content-length", "transfer-encoding") for name, _ in headers
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def run_python(code: str, *argv: str) -> list[str]:
    """Run ``code`` in a fresh interpreter (bounded); its stdout lines. Anything on stderr fails."""
    finished = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert finished.stderr == ""
    return finished.stdout.splitlines()


# --- the project's console scripts as processes ------------------------------------------------


class ScriptProcess:
    """A console script started as a child process whose stdout is JSON log lines.

    Every line is kept in ``lines`` (``demo_backend.child_process.LogLines``); ``wait_for``
    waits (bounded) for a line that matches.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.output = LogLines(process)

    @classmethod
    async def start(cls, argv: Sequence[str], env: dict[str, str] | None = None) -> ScriptProcess:
        return cls(await spawn_with_log_lines(argv, {**os.environ, **(env or {})}))

    @property
    def lines(self) -> list[dict[str, Any]]:
        return self.output.lines

    @property
    def raw_lines(self) -> list[str]:
        return self.output.raw_lines

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> dict[str, Any]:
        """The first log line (old or new) for which ``predicate`` is true."""
        async with asyncio.timeout(timeout):
            line = await self.output.first(predicate)
        if line is None:
            raise self._ended_early()
        return line

    def _ended_early(self) -> AssertionError:
        return AssertionError(
            "process ended before the expected line:\n" + "\n".join(self.raw_lines)
        )

    async def wait_for_event(self, event: str, **fields: Any) -> dict[str, Any]:
        return await self.wait_for(
            lambda line: (
                line.get("event") == event
                and all(line.get(key) == value for key, value in fields.items())
            )
        )

    async def listening_port(self, event: str) -> int:
        line = await self.wait_for_event(event)
        return int(line["port"])

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == event]

    async def wait_for_text(self, predicate: Callable[[str], bool], timeout: float = WAIT) -> str:
        """The first output line, JSON or not (uvicorn's own CLI), that ``predicate`` accepts."""
        async with asyncio.timeout(timeout):
            text = await self.output.first_text(predicate)
        if text is None:
            raise self._ended_early()
        return text

    def send_signal(self, signum: int) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signum)

    async def wait_exit(self, timeout: float = WAIT) -> int:
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            await self.output.pump
        return code

    async def stop(self) -> int:
        """SIGTERM by PID, then SIGKILL if it has not exited within the bound."""
        self.send_signal(signal.SIGTERM)
        try:
            return await self.wait_exit()
        except TimeoutError:
            self.send_signal(signal.SIGKILL)
            return await self.wait_exit()


@contextlib.asynccontextmanager
async def running_script(
    argv: Sequence[str], listening_event: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[ScriptProcess, int]]:
    """Start a console script, wait for its listening line, yield it with its port, stop it."""
    started = await ScriptProcess.start(argv, env)
    try:
        line = await started.wait_for_event(listening_event)
        # A server on a unix socket has no port: its line names the path instead.
        yield started, int(line.get("port", 0))
    finally:
        await started.stop()


# --- in-process structlog events ---------------------------------------------------------------


class LogWatch:
    """structlog events captured in this process, with bounded waits for the ones a test expects."""

    def __init__(self) -> None:
        self.entries: list[MutableMapping[str, Any]] = []
        self._waiters: list[asyncio.Future[None]] = []

    def _processor(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        # Runs just before capture_logs appends the entry; waiters resume on a later loop turn.
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        return event_dict

    def events(self, event: str, **fields: Any) -> list[MutableMapping[str, Any]]:
        return [
            entry
            for entry in self.entries
            if entry.get("event") == event
            and all(entry.get(key) == value for key, value in fields.items())
        ]

    async def wait_for(self, event: str, count: int = 1, **fields: Any) -> MutableMapping[str, Any]:
        """The ``count``-th matching event, waiting (bounded by ``WAIT``) until it is logged."""
        async with asyncio.timeout(WAIT):
            while len(self.events(event, **fields)) < count:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
        return self.events(event, **fields)[count - 1]


class _EventRecords(logging.Handler):
    """The protocol's stdlib records as entries like structlog's
    (``proxy.logs.configure.event_from_record`` does the same in production): the ``event`` extra
    and the other extras as fields."""

    _STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)

    def __init__(self, watch: LogWatch) -> None:
        super().__init__(logging.DEBUG)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        extras = {k: v for k, v in record.__dict__.items() if k not in self._STANDARD}
        entry = {"event": extras.pop("event", record.getMessage())}
        entry |= {"log_level": record.levelname.lower(), **extras}
        self.watch.entries.append(self.watch._processor(None, record.levelname.lower(), entry))


@contextlib.contextmanager
def watch_logs() -> Iterator[LogWatch]:
    """structlog events and the cancelling protocol's ``logging`` records, in one transcript."""
    watch = LogWatch()
    handler = _EventRecords(watch)
    cancel_logger = logging.getLogger(CANCEL_LOGGER_NAME)
    level = cancel_logger.level
    cancel_logger.addHandler(handler)
    cancel_logger.setLevel(logging.INFO)
    try:
        with capture_logs(processors=[watch._processor]) as entries:
            watch.entries = entries
            yield watch
    finally:
        cancel_logger.removeHandler(handler)
        cancel_logger.setLevel(level)


# --- the two console scripts together -----------------------------------------------------------


@dataclass
class Stack:
    """``hangup-demo-backend`` behind ``hangup-proxy``, both real processes on loopback."""

    backend: ScriptProcess
    backend_port: int
    proxy: ScriptProcess
    port: int

    async def get_json(self, target: str) -> Any:
        """GET through the proxy; the answer must be 200 JSON."""
        client = await RawConnection.open(self.port)
        await client.send(request_bytes("GET", target))
        response = await client.read_response()
        await client.close()
        assert response.status == 200, response
        return response.json()

    @property
    def output(self) -> list[str]:
        return self.backend.raw_lines + self.proxy.raw_lines


@contextlib.asynccontextmanager
async def running_stack(
    backend_args: Sequence[str] = ("--port", "0"),
    upstream: str | None = None,
    proxy_args: Sequence[str] = (),
) -> AsyncIterator[Stack]:
    """Start the backend, then the proxy in front of it (``upstream`` overrides the TCP URL;
    ``proxy_args`` are added to the proxy's flags)."""
    backend_argv = [script_path("hangup-demo-backend"), *backend_args]
    async with running_script(backend_argv, "backend_listening") as (backend, backend_port):
        proxy_argv = [
            script_path("hangup-proxy"),
            "--listen",
            f"{LOOPBACK}:0",
            "--upstream",
            upstream or f"http://{LOOPBACK}:{backend_port}",
            *proxy_args,
        ]
        async with running_script(proxy_argv, "proxy_listening") as (proxy, port):
            yield Stack(backend, backend_port, proxy, port)

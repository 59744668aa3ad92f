"""The smallest correct-enough reverse proxy on aiohttp's low-level server: a reference ceiling.

``python -m benchmarks.bare_aiohttp_proxy --listen HOST:PORT --upstream HOST:PORT``

``benchmarks/run`` measures it next to nginx and hangup so that every run shows how many requests
a second aiohttp's server itself leaves to *any* proxy built on it, on this machine. hangup's front
is the same server, set up the same way (``aiohttp.web.Server`` with ``handler_cancellation=True``
and no access log, on uvloop): where this proxy stays below a target ratio to nginx, hangup cannot
reach that target without another server. It is a measuring stick, not a product.

What it does: each request goes out on a pooled keep-alive connection to the origin (newest
first, unbounded), whose answer a minimal httptools protocol reads whole; it comes back as one
``web.Response``. A request body with a ``Content-Length`` (the POST case's small JSON body) is
read whole first and written with the head in one write, as hangup forwards a body that came in
the same read as its head, so the POST case has a ceiling too (issue 16). A connection that the
origin closed, or whose answer said ``Connection: close``, leaves the pool; an exchange whose
connection is lost answers 502.

What it deliberately lacks (all that hangup adds): no log line, no metrics, no header rewriting
beyond dropping hop-by-hop and framing headers (no ``X-Forwarded-*``, no headers listed in
``Connection``), no chunked request bodies and no HEAD or CONNECT (501), no streaming either way
(bodies are buffered whole: fine for ``/1k``, ``/100k`` and a 1.5 KiB POST), no interim (1xx)
answers (``Expect`` is dropped, and the client gets no ``100 Continue``: curl waits a second,
then sends its body anyway), no answers that end at the close of the connection, no timeouts or
limits, no graceful shutdown (SIGTERM ends it). A client that hangs up mid-exchange only closes
the upstream connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from dataclasses import dataclass
from typing import cast

import httptools
import uvloop
from aiohttp import web

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    }
)
"""Header names (lower case) never copied across: hop-by-hop (RFC 9110 §7.6.1), framing that
each side sets for itself (``request_head`` writes the body's length, and aiohttp frames the
answer), and ``Expect``: the body is read whole before the request goes out, and the origin's
``100 Continue`` (nginx sends one) would be read as the answer."""

UNFORWARDED_METHODS = frozenset({"HEAD", "CONNECT"})
"""Answered 501: the answer to HEAD has a length but no body, which the upstream parser is not
told of (it would wait for the body), and CONNECT is not a request for the origin."""


class UpstreamLostError(Exception):
    """The origin's connection ended, or spoke out of turn, before the answer was whole."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the origin, carrying one exchange at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        # Set by connection_made, which runs before create_connection returns this protocol.
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[Answer] | None = None
        """Set only while ``exchange`` awaits it, so a failure is always somebody's to read."""
        self._busy = False
        """From the request's write to the answer's end: a cancelled exchange leaves it set."""
        self._keep_alive = True
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []

    @property
    def is_reusable(self) -> bool:
        transport = self._transport
        return (
            transport is not None
            and not transport.is_closing()
            and self._keep_alive
            and not self._busy
        )

    async def exchange(self, head: bytes) -> Answer:
        """Write a request head and return the whole answer; UpstreamLostError if it cannot."""
        transport = self._transport
        # uvloop raises RuntimeError ("the handler is closed") on a write to a closed transport.
        if transport is None or transport.is_closing():
            raise UpstreamLostError("the connection closed while idle")
        self._busy = True
        self._answer = asyncio.get_running_loop().create_future()
        transport.write(head)
        try:
            return await self._answer
        finally:
            self._answer = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # TCP: a stream transport

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            # Bytes nobody asked for: the next answer on this connection could not be trusted.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.close()
            self._fail(UpstreamLostError(f"the origin's answer did not parse: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._keep_alive = False
        self._fail(UpstreamLostError("the origin closed the connection"))

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP_BY_HOP:
            self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        # Asked now: llhttp forgets the message's keep-alive state once it is complete. False
        # after ``Connection: close`` (nginx's keepalive_requests), so the pool lets it go.
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._busy = False
        answer = Answer(self._parser.get_status_code(), self._headers, b"".join(self._body))
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(answer)

    def _fail(self, error: UpstreamLostError) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)


class Pool:
    """Idle connections to one origin; the newest first out, so few of them stay warm."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._idle: list[Upstream] = []

    async def acquire(self) -> Upstream:
        while self._idle:
            upstream = self._idle.pop()
            # The origin may have closed it while it waited here.
            if upstream.is_reusable:
                return upstream
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(Upstream, self._host, self._port)
        return upstream

    def release(self, upstream: Upstream) -> None:
        """Keep a connection for the next request, or close it (lost, closing, or cancelled
        mid-answer, whose rest would be read as the next request's answer)."""
        if upstream.is_reusable:
            self._idle.append(upstream)
        else:
            upstream.close()


class BareProxy:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def handle(self, request: web.BaseRequest) -> web.Response:
        if request.method in UNFORWARDED_METHODS:
            return web.Response(
                status=501, text=f"this reference proxy forwards no {request.method}"
            )
        if request.body_exists and request.content_length is None:
            return web.Response(status=501, text="this reference proxy forwards no chunked bodies")
        body = await request.read() if request.body_exists else b""
        try:
            upstream = await self._pool.acquire()
        except OSError:
            return web.Response(status=502)
        try:
            answer = await upstream.exchange(request_head(request, body))
        except UpstreamLostError:
            return web.Response(status=502)
        finally:
            # On cancellation too (the client hung up): the half-read connection is closed.
            self._pool.release(upstream)
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)


def request_head(request: web.BaseRequest, body: bytes) -> bytes:
    """The request line, the client's headers minus hop-by-hop and framing ones, the body's
    length if the client sent one (``Content-Length: 0`` included), and the body."""
    target = request.raw_path.encode("utf-8", "surrogateescape")
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1\r\n"]
    lines += [
        name + b": " + value + b"\r\n"
        for name, value in request.raw_headers
        if name.lower() not in HOP_BY_HOP
    ]
    if request.content_length is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode("ascii") + b"\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    # As hangup sets up its front (proxy.serving.server.build_server), minus its gate and limits.
    server = web.Server(
        BareProxy(Pool(*upstream)).handle, handler_cancellation=True, access_log=None
    )
    runner = web.ServerRunner(server)
    await runner.setup()
    try:
        await web.TCPSite(runner, *listen).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bare_aiohttp_proxy", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--listen", type=host_port, required=True, help="HOST:PORT to serve")
    parser.add_argument("--upstream", type=host_port, required=True, help="the origin's HOST:PORT")
    args = parser.parse_args(argv)
    # Ctrl-C by hand ends it quietly; the benchmark stops it with SIGTERM.
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.listen, args.upstream))


if __name__ == "__main__":
    main()

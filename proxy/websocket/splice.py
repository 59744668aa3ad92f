"""The open tunnel: bytes both ways until one side's connection ends, then the other is ended.

This is step 3 and 4 of ``proxy.websocket.tunnels``'s theory of operation. Nothing here decodes
messages; ``proxy.websocket.frames`` follows frame boundaries in each direction only so that a side
that vanished can be answered for with a Close frame (RFC 6455 §7.1.7) that lands between frames,
and only when no Close went that way already (§5.5.1).

How a session ends, decided in one place (``splice``'s ``finally``) before any further await, so
that a second cancellation cannot skip it:

* the client's connection is lost → ``completed`` if a Close frame passed, else ``client_hangup``:
  1001 to the upstream, its socket closed (the backend's handler sees its connection end);
* the upstream's connection ends → ``completed`` if a Close frame passed, else ``upstream_error``:
  1011 to the client; the client connection is closed;
* the proxy drains (``going_away``) → 1001 to both, both closed (``completed``,
  ``proxy_going_away``); cancelled by the drain's deadline instead → ``drain_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy.exchange.state import Exchange, PhaseEvent
from proxy.upstream.connection import ResponseHead
from proxy.websocket.frames import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, FrameTracker, close_frame
from proxy.websocket.handshake import switching_protocols_head

CHUNK_SIZE = 65536
"""Bytes read at once from the upstream; unsent bytes towards it past which the client pauses."""


async def splice(
    request: web.BaseRequest,
    exchange: Exchange,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    head: ResponseHead,
    *,
    going_away: asyncio.Event,
) -> web.StreamResponse:
    """Copy bytes both ways until one side's connection ends, then end the other (step 4)."""
    client = request.transport
    if client is None:
        raise asyncio.CancelledError  # the client left while the upstream was answering
    exchange.advance(PhaseEvent.RESPONSE_STARTED)
    client.write(switching_protocols_head(head.reason, head.raw_headers))
    closes: list[str] = []  # who sent a Close frame, in the order they passed
    client_frames = FrameTracker()  # the upstream's frames, on their way to the client
    to_upstream = _ClientToUpstream(request.protocol, writer, closes)
    # set_parser is typed for aiohttp's WebSocketReader; it only calls feed_data and feed_eof.
    request.protocol.set_parser(to_upstream)  # type: ignore[arg-type]
    request.protocol.keep_alive(False)
    tasks = {
        asyncio.create_task(_pump_to_client(reader, request, client_frames, closes)),
        asyncio.create_task(to_upstream.relieve_back_pressure()),
        asyncio.create_task(to_upstream.client_gone.wait()),
        asyncio.create_task(going_away.wait()),
    }
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # Decided before any further await, so that a second cancellation cannot skip it.
        if request.transport is None:
            _client_left(exchange, writer, to_upstream.frames, closes)
        elif not _is_cancelled() and (reader.at_eof() or not going_away.is_set()):
            _upstream_left(exchange, client, client_frames, closes)
        else:
            # The proxy is draining (or, cancelled, its drain ran out): RFC 6455 §7.4.1 1001,
            # "a server going down", to both ends.
            if _is_cancelled():
                exchange.cut_by_drain()
            exchange.tunnel_going_away()
            _say_going_away(client, client_frames, masked=False)
            _say_going_away(writer.transport, to_upstream.frames, masked=True)
            client.close()
        await asyncio.wait(tasks)
    return _Tunnelled()


def _is_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _client_left(
    exchange: Exchange,
    writer: asyncio.StreamWriter,
    upstream_frames: FrameTracker,
    closes: list[str],
) -> None:
    if closes:
        exchange.tunnel_closed(closes[0])
        writer.close()
        return
    exchange.tunnel_client_vanished()  # and so its upstream connection is closed, just below
    _say_going_away(writer.transport, upstream_frames, masked=True)
    writer.close()


def _upstream_left(
    exchange: Exchange, client: asyncio.Transport, client_frames: FrameTracker, closes: list[str]
) -> None:
    if closes:
        exchange.tunnel_closed(closes[0])
    else:
        exchange.tunnel_upstream_vanished()
        if client_frames.at_boundary:
            # RFC 6455 §7.4.1: 1011, the server side failed; a server's frames are not masked.
            client.write(close_frame(CLOSE_INTERNAL_ERROR, masked=False))
    client.close()


def _note_close(frames: FrameTracker, sender: str, closes: list[str]) -> None:
    """Record ``client_close_1000``-style facts: who sent a Close frame, and its code."""
    if frames.close_seen and not any(close.startswith(sender) for close in closes):
        code = frames.close_code if frames.close_code is not None else 1005  # RFC 6455 §7.1.5
        closes.append(f"{sender}_close_{code}")


def _say_going_away(
    transport: asyncio.WriteTransport, frames: FrameTracker, *, masked: bool
) -> None:
    """Send 1001 unless a Close already went that way or a frame is half sent (RFC 6455 §5.5.1)."""
    if frames.at_boundary and not frames.close_seen:
        transport.write(close_frame(CLOSE_GOING_AWAY, masked=masked))


async def _pump_to_client(
    reader: asyncio.StreamReader, request: web.BaseRequest, frames: FrameTracker, closes: list[str]
) -> None:
    """Upstream → client, until the upstream's connection ends or the client's is lost."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(CHUNK_SIZE):
            transport = request.transport
            if transport is None:
                return
            frames.feed(data)
            _note_close(frames, "upstream", closes)
            transport.write(data)
            # Back-pressure: a client that stops reading stalls the upstream, not our memory.
            await request.writer.drain()


class _ClientToUpstream:
    """Client → upstream: what ``RequestHandler.set_parser`` is fed after the upgrade.

    Bytes are written upstream the moment they arrive (in ``data_received``), so whatever the
    client sent before it left, its Close frame included, is upstream before ``connection_lost``
    ends the session. Back-pressure: past ``CHUNK_SIZE`` unsent towards the upstream, reading from
    the client pauses until the upstream socket drains.
    """

    def __init__(
        self, protocol: RequestHandler, writer: asyncio.StreamWriter, closes: list[str]
    ) -> None:
        self._protocol = protocol
        self._writer = writer
        self._closes = closes
        self._blocked = asyncio.Event()
        self.frames = FrameTracker()
        self.client_gone = asyncio.Event()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._writer.transport.is_closing():
            return False, b""  # the upstream is gone; the session is ending
        self.frames.feed(data)
        _note_close(self.frames, "client", self._closes)
        self._writer.write(data)
        if (
            self._writer.transport.get_write_buffer_size() > CHUNK_SIZE
            and not self._blocked.is_set()
        ):
            self._blocked.set()
            self._protocol.pause_reading()
        # aiohttp's protocol: (the message is complete, bytes past it); a tunnel never completes.
        return False, b""

    def feed_eof(self) -> None:
        self.client_gone.set()

    async def relieve_back_pressure(self) -> None:
        """Resume reading from the client whenever the upstream has drained; ends if it is lost."""
        with contextlib.suppress(ConnectionError):
            while True:
                await self._blocked.wait()
                await self._writer.drain()
                self._blocked.clear()
                self._protocol.resume_reading()


class _Tunnelled(web.StreamResponse):
    """The handler's return value once the connection has been spliced: nothing more to write."""

    def __init__(self) -> None:
        super().__init__(status=101)
        self.force_close()

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None

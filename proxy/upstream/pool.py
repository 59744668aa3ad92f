"""The idle keep-alive connections to the upstream, and making new ones
(``proxy.upstream.connection``)."""

from __future__ import annotations

import asyncio
import contextlib

from proxy.edge.coalesce import EndOfTurn
from proxy.upstream.address import Upstream
from proxy.upstream.connection import UpstreamConnectError, UpstreamConnection


class UpstreamPool:
    """Idle keep-alive connections to the upstream, most recently used first.

    The number of connections is bounded by the forwarder, which refuses a request past
    ``--upstream-max-connections`` before asking for one; the pool never queues. An idle connection
    is closed after ``--upstream-keepalive-timeout``, which should be below the backend's own idle
    timeout, or a request races the backend closing the socket (and is answered 502: it is never
    retried). The upstream's name is resolved on each new connection, so a backend that moves to a
    new address (a restarted container) is found again.

    The keep-alive timer of a connection is not made and cancelled for every exchange it carries
    (a ``call_later`` and a ``cancel`` per request, measured at about 1 % of the proxy's
    instructions, issue 16): it is set once, when the connection first goes idle, and when it
    fires it looks at when the connection last went idle (``idle_since``). A connection that is
    busy then gets a new timer on its next release; one that went idle again later gets a new
    timer for then; only one idle for the whole timeout is closed, exactly when it would have been.
    """

    def __init__(
        self,
        upstream: Upstream,
        *,
        connect_timeout: float,
        read_timeout: float,
        keepalive_timeout: float,
    ) -> None:
        """``read_timeout`` is ``--upstream-timeout``: the wait for each head and body chunk."""
        self._upstream = upstream
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive_timeout = keepalive_timeout
        self._idle: list[UpstreamConnection] = []
        self._closed = False
        self._heads: EndOfTurn | None = None

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    async def acquire(self) -> UpstreamConnection:
        """An idle connection, or a new one (``UpstreamConnectError`` when none can be made)."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            # Its keep-alive timer, if any, stays set: it finds the connection busy (``_expire``).
            connection.pooled = False
            # A connection just broken is closing before its connection_lost has run.
            if not connection.lost and not connection.closing:
                return connection
        return await self.connect()

    def release(self, connection: UpstreamConnection) -> None:
        """Pool a connection whose exchange ended cleanly, without it; close any other."""
        if self._closed or not connection.reusable:
            connection.close()
            return
        connection.end_exchange()
        if self._keepalive_timeout > 0:
            loop = asyncio.get_running_loop()
            connection.idle_since = now = loop.time()
            if connection.idle_timer is None:
                connection.idle_timer = loop.call_at(
                    now + self._keepalive_timeout, self._expire, connection
                )
        connection.pooled = True
        self._idle.append(connection)

    async def close(self) -> None:
        """Close every idle connection; connections in use are closed by their exchanges."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def _expire(self, connection: UpstreamConnection) -> None:
        connection.idle_timer = None
        if not connection.pooled:
            return  # busy: its next release sets a timer again
        expires = connection.idle_since + self._keepalive_timeout
        loop = asyncio.get_running_loop()
        if loop.time() < expires:
            # Used and pooled again since this timer was set: idle for less than the timeout.
            connection.idle_timer = loop.call_at(expires, self._expire, connection)
            return
        connection.pooled = False
        with contextlib.suppress(ValueError):
            self._idle.remove(connection)
        connection.close()

    async def connect(self) -> UpstreamConnection:
        """A new connection, never an idle one: for a WebSocket tunnel, which is never pooled.

        ``UpstreamConnectError`` when none can be made within ``--connect-timeout``.
        """
        loop = asyncio.get_running_loop()
        if self._heads is None:
            self._heads = EndOfTurn(loop)
        heads = self._heads

        def protocol() -> UpstreamConnection:
            return UpstreamConnection(self._read_timeout, heads)

        upstream = self._upstream
        try:
            async with asyncio.timeout(self._connect_timeout):
                if upstream.unix_path is not None:
                    _, connection = await loop.create_unix_connection(protocol, upstream.unix_path)
                else:
                    _, connection = await loop.create_connection(
                        protocol, upstream.host, upstream.port
                    )
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectError("upstream_connect_failed") from exc
        return connection

"""The client side of the proxy: one ``ClientSession`` to the upstream, configured to be invisible.

Each setting below undoes a default of aiohttp's client that would make the proxy visible or
unsafe (cancellation-facts §4).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

from aiohttp import (
    BaseConnector,
    ClientSession,
    ClientTimeout,
    DummyCookieJar,
    TCPConnector,
    UnixConnector,
    hdrs,
)
from aiohttp.connector import Connection

from proxy.config import ProxyConfig

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace


class UpstreamClaim:
    """The upstream connection one exchange holds, so a hang-up can close it synchronously.

    Cancelling the exchange's task closes the connection too, but only when the task next runs:
    under load that is one whole turn of the event loop later (about 18 ms with 64 busy clients,
    benchmarks/). ``cut`` is called from the client connection's ``connection_lost`` itself.
    """

    __slots__ = ("connection",)

    def __init__(self) -> None:
        self.connection: Connection | None = None

    def cut(self) -> bool:
        """Close the claimed connection (never to the pool); True when there was one."""
        connection, self.connection = self.connection, None
        if connection is None or connection.closed:
            return False
        connection.close()
        return True


CLAIM: ContextVar[UpstreamClaim | None] = ContextVar("hangup_upstream_claim", default=None)
"""Set by an exchange before it sends; the connector records the connection it hands out."""


def _record(connection: Connection) -> Connection:
    claim = CLAIM.get()
    if claim is not None:
        claim.connection = connection
    return connection


class _ClaimingTCPConnector(TCPConnector):
    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: ClientTimeout,  # noqa: ASYNC109 - aiohttp's own signature, overridden
    ) -> Connection:
        return _record(await super().connect(req, traces, timeout))


class _ClaimingUnixConnector(UnixConnector):
    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: ClientTimeout,  # noqa: ASYNC109 - aiohttp's own signature, overridden
    ) -> Connection:
        return _record(await super().connect(req, traces, timeout))


# aiohttp adds these unless told not to; a proxy must forward only what the client sent.
_SKIP_AUTO_HEADERS = (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE)


def _connector(config: ProxyConfig) -> BaseConnector:
    # Below the backend's idle timeout, or a request races the backend closing the socket.
    keepalive_timeout = config.upstream_keepalive_timeout
    if config.upstream.unix_path is not None:
        return _ClaimingUnixConnector(
            path=config.upstream.unix_path,
            limit=config.upstream_max_connections,
            keepalive_timeout=keepalive_timeout,
        )
    return _ClaimingTCPConnector(
        limit=config.upstream_max_connections,
        limit_per_host=0,
        keepalive_timeout=keepalive_timeout,
        # The upstream is one fixed address; resolve it once rather than per connection.
        ttl_dns_cache=None,
        use_dns_cache=True,
    )


def open_upstream_session(config: ProxyConfig) -> ClientSession:
    session = ClientSession(
        connector=_connector(config),
        # The default total=300 would cut every long request at five minutes.
        timeout=ClientTimeout(
            total=None,
            sock_connect=config.connect_timeout,
            sock_read=config.upstream_timeout,
        ),
        # The default jar would store one client's Set-Cookie and replay it to the next.
        cookie_jar=DummyCookieJar(),
        # Forwarding decompressed bytes under the original Content-Encoding corrupts them
        # (aio-libs/aiohttp#4462).
        auto_decompress=False,
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        # HTTP_PROXY and friends belong to the operator's shell, not to the sidecar's upstream.
        trust_env=False,
        # Forward whatever the upstream sends, as the client would have seen it.
        raise_for_status=False,
        max_line_size=65536,
        max_field_size=65536,
    )
    # aiohttp retries an idempotent request (PUT and DELETE included) once when the server drops
    # the connection; that would run a write twice. There is no public switch: the test client
    # (aiohttp.test_utils.TestClient) turns it off the same way. Pinned by a test.
    session._retry_connection = False
    return session

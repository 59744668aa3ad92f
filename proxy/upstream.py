"""The client side of the proxy: one ``ClientSession`` to the upstream, configured to be invisible.

Each setting below undoes a default of aiohttp's client that would make the proxy visible or
unsafe (cancellation-facts §4).
"""

from __future__ import annotations

from aiohttp import (
    BaseConnector,
    ClientSession,
    ClientTimeout,
    DummyCookieJar,
    TCPConnector,
    UnixConnector,
    hdrs,
)

from proxy.config import ProxyConfig

# aiohttp adds these unless told not to; a proxy must forward only what the client sent.
_SKIP_AUTO_HEADERS = (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE)


def _connector(config: ProxyConfig) -> BaseConnector:
    # Below the backend's idle timeout, or a request races the backend closing the socket.
    keepalive_timeout = config.upstream_keepalive_timeout
    if config.upstream.unix_path is not None:
        return UnixConnector(
            path=config.upstream.unix_path,
            limit=config.upstream_max_connections,
            keepalive_timeout=keepalive_timeout,
        )
    return TCPConnector(
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

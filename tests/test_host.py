"""Host as RFC 9112 §3.2 says, and absolute-form targets (§3.2.2), on real sockets.

One table: each request goes raw through the proxy. A refused one must leave the upstream without
a byte; an accepted one must reach it, as h11, llhttp and aiohttp all read it, with the Host and
origin-form target the table names.
"""

from __future__ import annotations

import pytest

from tests.conftest import ProxyFactory
from tests.raw_upstream import RawUpstream
from tests.support import exchange
from tests.wire_parsers import read_by_every_parser

REFUSED = None


def get(target: str, *hosts: str, version: str = "HTTP/1.1") -> bytes:
    fields = "".join(f"Host: {host}\r\n" for host in hosts)
    return f"GET {target} {version}\r\n{fields}\r\n".encode("latin-1")


# (request, the Host the upstream reads or REFUSED, the target it reads)
HOST_TABLE = [
    pytest.param(get("/p", "a"), "a", "/p", id="plain"),
    pytest.param(get("/p", "a:8080"), "a:8080", "/p", id="with-port"),
    pytest.param(get("/p", "a:"), "a:", "/p", id="empty-port-is-in-the-grammar"),
    pytest.param(get("/p", "127.0.0.1:80"), "127.0.0.1:80", "/p", id="ipv4"),
    pytest.param(get("/p", "[::1]:8080"), "[::1]:8080", "/p", id="ipv6-literal"),
    pytest.param(get("/p", "[v1.fe]"), "[v1.fe]", "/p", id="ipvfuture-literal"),
    pytest.param(get("/p", "ex%41mple.org"), "ex%41mple.org", "/p", id="pct-encoded"),
    pytest.param(get("/p"), REFUSED, "", id="no-host-in-http11"),
    pytest.param(get("/p", "a", "b"), REFUSED, "", id="two-hosts"),
    pytest.param(get("/p", "a", "a"), REFUSED, "", id="two-equal-hosts"),
    pytest.param(get("/p", ""), REFUSED, "", id="empty-host"),
    pytest.param(get("/p", "a b"), REFUSED, "", id="space-inside"),
    pytest.param(get("/p", "a/b"), REFUSED, "", id="slash-inside"),
    pytest.param(get("/p", "user@a"), REFUSED, "", id="userinfo"),
    pytest.param(get("/p", "a:x"), REFUSED, "", id="port-not-digits"),
    pytest.param(get("/p", "a:1:2"), REFUSED, "", id="two-ports"),
    pytest.param(get("/p", "[::1"), REFUSED, "", id="unclosed-literal"),
    pytest.param(get("/p", "[::g]"), REFUSED, "", id="bad-ipv6"),
    pytest.param(get("/p", "[fe80::1%25eth0]"), REFUSED, "", id="ipv6-zone"),
    pytest.param(get("/p", "a\x7f"), REFUSED, "", id="control-character"),
    # HTTP/1.0 may omit Host: the upstream's own authority is sent in its place.
    pytest.param(get("/p", version="HTTP/1.0"), "upstream", "/p", id="no-host-in-http10"),
    pytest.param(get("/p", "a", "b", version="HTTP/1.0"), REFUSED, "", id="two-hosts-in-http10"),
    # Absolute form: the target's authority replaces Host; the target goes on in origin form.
    pytest.param(get("http://b.example/x?y", "a"), "b.example", "/x?y", id="absolute-form"),
    pytest.param(get("HTTP://b.example:81?q", "a"), "b.example:81", "/?q", id="absolute-no-path"),
    pytest.param(get("https://b.example", "a"), "b.example", "/", id="absolute-https"),
    pytest.param(get("http://b.example/x", "a", "c"), REFUSED, "", id="absolute-two-hosts"),
    pytest.param(get("http://b.example/x", "a b"), REFUSED, "", id="absolute-bad-host"),
    pytest.param(get("http://b.example/x"), REFUSED, "", id="absolute-no-host"),
    pytest.param(get("http:///x", "a"), REFUSED, "", id="absolute-empty-authority"),
    pytest.param(get("http://u@b.example/x", "a"), REFUSED, "", id="absolute-userinfo"),
    pytest.param(get("ftp://b.example/x", "a"), REFUSED, "", id="absolute-other-scheme"),
    pytest.param(get("b.example/x", "a"), REFUSED, "", id="neither-form"),
]


@pytest.mark.parametrize(("request_bytes", "upstream_host", "upstream_target"), HOST_TABLE)
async def test_host_and_absolute_form_reach_the_upstream_as_rfc_9112_says(
    upstream: RawUpstream,
    start_proxy: ProxyFactory,
    request_bytes: bytes,
    upstream_host: str | None,
    upstream_target: str,
) -> None:
    async with start_proxy(upstream.url) as proxy:
        response = await exchange(proxy.address.port, request_bytes)
        if upstream_host is not REFUSED:
            await upstream.wait_requests(1)
    if upstream_host is REFUSED:
        assert response.status == 400
        assert b"".join(bytes(c.received) for c in upstream.connections) == b""
        return
    assert response.status == 200
    [connection] = upstream.connections
    [message] = read_by_every_parser(bytes(connection.received))
    expected_host = f"127.0.0.1:{upstream.port}" if upstream_host == "upstream" else upstream_host
    assert message.target == upstream_target
    assert message.header_values("host") == [expected_host]
    assert message.headers[0] == ("host", expected_host)  # RFC 9112 §3.2: Host comes first

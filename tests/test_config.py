"""Table tests for the value parsers in ``proxy.settings.config``."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.settings.config import format_size, parse_count, parse_seconds, parse_size
from proxy.upstream.address import Upstream, parse_upstream
from proxy.wire.address import HostPort, parse_host_port

# --- parse_host_port -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("127.0.0.1:8080", HostPort("127.0.0.1", 8080), id="ipv4"),
        pytest.param("0.0.0.0:80", HostPort("0.0.0.0", 80), id="ipv4-wildcard"),
        pytest.param("localhost:65535", HostPort("localhost", 65535), id="name-highest-port"),
        pytest.param("127.0.0.1:0", HostPort("127.0.0.1", 0), id="port-0-picks-a-free-port"),
        pytest.param("[::1]:8080", HostPort("::1", 8080), id="ipv6-in-brackets"),
        pytest.param("[::]:0", HostPort("::", 0), id="ipv6-wildcard"),
        pytest.param("  127.0.0.1:8080\n", HostPort("127.0.0.1", 8080), id="surrounding-space"),
        pytest.param("127.0.0.1:08080", HostPort("127.0.0.1", 8080), id="leading-zero"),
    ],
)
def test_parse_host_port(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("127.0.0.1", "expected HOST:PORT", id="missing-port-separator"),
        pytest.param("127.0.0.1:", "port must be a number from 0 to 65535", id="empty-port"),
        pytest.param(":8080", "expected HOST:PORT", id="missing-host"),
        pytest.param("[]:8080", "expected HOST:PORT", id="empty-brackets"),
        pytest.param("", "expected HOST:PORT", id="empty"),
        pytest.param("127.0.0.1:65536", "from 0 to 65535", id="port-too-high"),
        pytest.param("127.0.0.1:-1", "from 0 to 65535", id="negative-port"),
        pytest.param("127.0.0.1:http", "from 0 to 65535, got 'http'", id="non-numeric-port"),
        pytest.param("127.0.0.1:80.5", "from 0 to 65535", id="fractional-port"),
        pytest.param("127.0.0.1:\u00b2", "from 0 to 65535", id="superscript-digit"),
        pytest.param("127.0.0.1:\u0663", "from 0 to 65535", id="arabic-indic-digit"),
        pytest.param("::1", "or [IPV6]:PORT, got '::1'", id="bare-ipv6-without-port"),
        pytest.param("::1:8080", "or [IPV6]:PORT", id="bare-ipv6-with-port"),
        pytest.param("[::1]", "or [IPV6]:PORT", id="bracketed-ipv6-without-port"),
    ],
)
def test_parse_host_port_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_host_port(text)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param(HostPort("127.0.0.1", 8080), "127.0.0.1:8080", id="ipv4"),
        pytest.param(HostPort("::1", 8080), "[::1]:8080", id="ipv6-gets-brackets"),
    ],
)
def test_host_port_prints_as_it_is_written(address: HostPort, expected: str) -> None:
    assert str(address) == expected


hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True),
)


@given(hosts, st.integers(0, 65535))
def test_a_printed_host_port_parses_back_to_itself(host: str, port: int) -> None:
    address = HostPort(host, port)

    assert parse_host_port(str(address)) == address


# --- parse_upstream ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "origin"),
    [
        pytest.param(
            "http://127.0.0.1:8000",
            Upstream("127.0.0.1", 8000),
            "http://127.0.0.1:8000",
            id="ipv4-and-port",
        ),
        pytest.param(
            "http://backend", Upstream("backend", 80), "http://backend:80", id="default-port-80"
        ),
        pytest.param(
            "http://backend:", Upstream("backend", 80), "http://backend:80", id="empty-port-is-80"
        ),
        pytest.param(
            "http://127.0.0.1:8000/",
            Upstream("127.0.0.1", 8000),
            "http://127.0.0.1:8000",
            id="trailing-slash",
        ),
        pytest.param(
            "http://[::1]:8000", Upstream("::1", 8000), "http://[::1]:8000", id="ipv6-in-brackets"
        ),
        pytest.param(
            "HTTP://Backend:8000",
            Upstream("backend", 8000),
            "http://backend:8000",
            id="scheme-and-host-in-any-case",
        ),
        pytest.param(
            " http://127.0.0.1:8000 ",
            Upstream("127.0.0.1", 8000),
            "http://127.0.0.1:8000",
            id="surrounding-space",
        ),
    ],
)
def test_parse_upstream(text: str, expected: Upstream, origin: str) -> None:
    upstream = parse_upstream(text)

    assert upstream == expected
    assert upstream.origin == origin


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("https://127.0.0.1:8443", "must be an http:// URL", id="https"),
        pytest.param("127.0.0.1:8000", "must be an http:// URL", id="no-scheme"),
        pytest.param("ws://127.0.0.1:8000", "must be an http:// URL", id="other-scheme"),
        pytest.param("", "must be an http:// URL", id="empty"),
        pytest.param("http://", "has no host", id="no-host"),
        pytest.param("http://:8000", "has no host", id="port-without-host"),
        pytest.param("http://127.0.0.1:8000/api", "must be only http://HOST:PORT", id="path"),
        pytest.param("http://127.0.0.1:8000?x=1", "must be only http://HOST:PORT", id="query"),
        pytest.param("http://127.0.0.1:8000#top", "must be only http://HOST:PORT", id="fragment"),
        pytest.param(
            "http://user:secret@127.0.0.1:8000", "must be only http://HOST:PORT", id="user-info"
        ),
        pytest.param("http://127.0.0.1:http", "has an invalid port", id="non-numeric-port"),
        pytest.param("http://127.0.0.1:65536", "has an invalid port", id="port-too-high"),
        pytest.param("http://127.0.0.1:-1", "has an invalid port", id="negative-port"),
        pytest.param("http://127.0.0.1:0", "has an invalid port", id="port-0-reaches-nothing"),
    ],
)
def test_parse_upstream_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_upstream(text)


# --- parse_seconds and parse_count ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("60", 60.0, id="whole"),
        pytest.param("0.25", 0.25, id="fraction"),
        pytest.param(".5", 0.5, id="no-leading-zero"),
        pytest.param("1e-3", 0.001, id="exponent"),
        pytest.param(" 5 ", 5.0, id="surrounding-space"),
    ],
)
def test_parse_seconds(text: str, expected: float) -> None:
    assert parse_seconds(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("abc", id="word"),
        pytest.param("5s", id="unit-suffix"),
        pytest.param("0", id="zero"),
        pytest.param("-1", id="negative"),
        pytest.param("nan", id="nan"),
        pytest.param("inf", id="infinity"),
        pytest.param("1e400", id="overflows-to-infinity"),
        pytest.param("1e-400", id="underflows-to-zero"),
    ],
)
def test_parse_seconds_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_seconds(text)


@given(st.floats(min_value=0, exclude_min=True, allow_infinity=False))
def test_every_positive_finite_number_of_seconds_is_accepted(seconds: float) -> None:
    parsed = parse_seconds(repr(seconds))

    assert math.isfinite(parsed)
    assert parsed == seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1", 1, id="one"),
        pytest.param("1024", 1024, id="many"),
        pytest.param(" 8 ", 8, id="surrounding-space"),
    ],
)
def test_parse_count(text: str, expected: int) -> None:
    assert parse_count(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("0", id="zero"),
        pytest.param("-1", id="negative"),
        pytest.param("+1", id="explicit-sign"),
        pytest.param("1.5", id="fraction"),
        pytest.param("1e3", id="exponent"),
        pytest.param("1_000", id="underscore"),
        pytest.param("many", id="word"),
        pytest.param("\u00b2", id="superscript-digit"),
        pytest.param("\u0663", id="arabic-indic-digit"),
    ],
)
def test_parse_count_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"at least 1, got {text!r}")):
        parse_count(text)


# --- format_size (how --help shows a size default) ------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        pytest.param(65536, "64k", id="kibibytes"),
        pytest.param(10 * 1024**2, "10m", id="mebibytes"),
        pytest.param(1024**3, "1g", id="gibibytes"),
        pytest.param(1000, "1000", id="no-whole-unit"),
        pytest.param(1536, "1536", id="not-a-whole-kibibyte"),
    ],
)
def test_format_size(size: int, expected: str) -> None:
    assert format_size(size) == expected


@given(st.integers(1, 2**40))
def test_a_formatted_size_parses_back_to_itself(size: int) -> None:
    assert parse_size(format_size(size)) == size

"""The gate's pure rules: parse errors named with the right status, and what aiohttp lets by."""

from __future__ import annotations

import pytest
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from hypothesis import given
from hypothesis import strategies as st

from proxy.edge.gate import Limits, check_request, rejection_for_parse_error

LIMITS = Limits()
HOST = [(b"Host", b"x")]


@pytest.mark.parametrize(
    ("exc", "status", "reason"),
    [
        pytest.param(LineTooLong(b"/aaaa...", 8192), 414, "uri_too_long", id="long-uri"),
        pytest.param(
            LineTooLong(b"aaaa...", 16384), 431, "header_field_too_large", id="long-field"
        ),
        pytest.param(
            BadHttpMessage("Too many headers received"), 431, "too_many_headers", id="too-many"
        ),
        pytest.param(BadHttpMethod("\x16\x03"), 400, "bad_method", id="tls-on-http-port"),
        pytest.param(BadStatusLine("GET / HTTP/1.2"), 400, "bad_request_line", id="version"),
        pytest.param(InvalidURLError("/a\x00"), 400, "bad_request_target", id="nul-in-target"),
        pytest.param(
            BadHttpMessage("Content-Length can't be present with Transfer-Encoding"),
            400,
            "bad_content_length",
            id="cl-and-te",
        ),
        pytest.param(
            TransferEncodingError("Not enough data to satisfy transfer length header."),
            400,
            "bad_chunked_body",
            id="short-chunked",
        ),
        pytest.param(BadHttpMessage("Invalid header token"), 400, "bad_header", id="header-token"),
        pytest.param(None, 400, "bad_request", id="no-exception"),
    ],
)
def test_parse_errors_get_a_named_status(
    exc: BaseException | None, status: int, reason: str
) -> None:
    rejection = rejection_for_parse_error(exc, LIMITS)
    assert (rejection.status, rejection.reason) == (status, reason)
    assert rejection.body.startswith(f"{status} ")


def test_equal_uri_and_field_limits_are_told_apart_by_the_line() -> None:
    limits = Limits(max_uri_size=4096, max_header_field_size=4096)
    assert rejection_for_parse_error(LineTooLong(b"/x...", 4096), limits).status == 414
    assert rejection_for_parse_error(LineTooLong(b"xxx...", 4096), limits).status == 431


@pytest.mark.parametrize(
    ("method", "version", "target", "headers", "status", "reason"),
    [
        pytest.param("GET", (2, 0), "/", HOST, 505, "http_version_not_supported", id="http2-line"),
        pytest.param("GET", (0, 9), "/", HOST, 505, "http_version_not_supported", id="http09"),
        pytest.param("CONNECT", (1, 1), "x:443", HOST, 405, "connect_not_supported", id="connect"),
        pytest.param("OPTIONS", (1, 1), "*", HOST, 501, "asterisk_form_not_supported", id="star"),
        pytest.param(
            "POST",
            (1, 0),
            "/",
            [*HOST, (b"Transfer-Encoding", b"chunked")],
            400,
            "transfer_encoding_on_http10",
            id="te-on-http10",
        ),
        pytest.param(
            "POST",
            (1, 1),
            "/",
            [*HOST, (b"Transfer-Encoding", b"gzip, chunked")],
            501,
            "unsupported_transfer_coding",
            id="gzip-then-chunked",
        ),
        pytest.param(
            "POST",
            (1, 1),
            "/",
            [*HOST, (b"Transfer-Encoding", b"gzip"), (b"Transfer-Encoding", b"chunked")],
            501,
            "unsupported_transfer_coding",
            id="codings-split-over-two-fields",
        ),
        pytest.param(
            "POST",
            (1, 1),
            "/",
            [*HOST, (b"Transfer-Encoding", b"chunked, gzip")],
            400,
            "bad_transfer_encoding",
            id="chunked-not-final",
        ),
        pytest.param(
            "POST",
            (1, 1),
            "/",
            [*HOST, (b"Transfer-Encoding", b"chunked, chunked")],
            400,
            "bad_transfer_encoding",
            id="chunked-twice",
        ),
        pytest.param(
            "GET",
            (1, 1),
            "/",
            [*HOST, *[(b"X-%d" % n, b"v" * 1000) for n in range(70)]],
            431,
            "header_block_too_large",
            id="block-over-64k",
        ),
    ],
)
def test_requests_aiohttp_accepts_but_the_gate_refuses(
    method: str,
    version: tuple[int, int],
    target: str,
    headers: list[tuple[bytes, bytes]],
    status: int,
    reason: str,
) -> None:
    rejection = check_request(method, version, target, headers, LIMITS)
    assert rejection is not None
    assert (rejection.status, rejection.reason) == (status, reason)


@pytest.mark.parametrize(
    ("version", "headers"),
    [
        pytest.param((1, 1), HOST, id="plain"),
        pytest.param((1, 0), HOST, id="http10"),
        pytest.param((1, 1), [*HOST, (b"Transfer-Encoding", b"Chunked")], id="chunked-any-case"),
        pytest.param((1, 1), [*HOST, (b"Content-Length", b"10")], id="content-length"),
        pytest.param((1, 1), [*HOST, (b"X", b"v" * 60000)], id="block-under-64k"),
    ],
)
def test_ordinary_requests_pass_the_gate(
    version: tuple[int, int], headers: list[tuple[bytes, bytes]]
) -> None:
    assert check_request("POST", version, "/", headers, LIMITS) is None


@pytest.mark.parametrize(
    ("length", "limit", "refused"),
    [
        pytest.param(b"100", None, False, id="no-limit"),
        pytest.param(b"100", 100, False, id="at-limit"),
        pytest.param(b"101", 100, True, id="over-limit"),
    ],
)
def test_declared_body_over_the_limit_is_refused_with_413(
    length: bytes, limit: int | None, refused: bool
) -> None:
    rejection = check_request(
        "POST", (1, 1), "/", [*HOST, (b"Content-Length", length)], Limits(max_body_size=limit)
    )
    assert (rejection is not None) == refused
    if rejection is not None:
        assert (rejection.status, rejection.reason) == (413, "body_too_large")


header_names = st.sampled_from(
    [b"Host", b"Transfer-Encoding", b"Content-Length", b"X-A", b"transfer-encoding"]
)
header_values = st.binary(max_size=40)


@given(st.lists(st.tuples(header_names, header_values), max_size=8))
def test_any_transfer_coding_but_a_single_final_chunked_is_refused(
    headers: list[tuple[bytes, bytes]],
) -> None:
    rejection = check_request("POST", (1, 1), "/", headers, LIMITS)
    codings = [
        coding.strip().lower()
        for name, value in headers
        if name.lower() == b"transfer-encoding"
        for coding in value.decode("latin-1").split(",")
        if coding.strip()
    ]
    if codings and codings != ["chunked"]:
        assert rejection is not None
        assert rejection.status in (400, 501)
    elif not codings:
        assert rejection is None or rejection.reason != "unsupported_transfer_coding"


@given(
    st.lists(st.tuples(st.binary(min_size=1, max_size=30), st.binary(max_size=3000)), max_size=40)
)
def test_header_block_limit_is_exact(headers: list[tuple[bytes, bytes]]) -> None:
    safe = [*HOST, *[(b"X-" + name.hex().encode(), value) for name, value in headers]]
    size = sum(len(name) + len(value) + 4 for name, value in safe)
    rejection = check_request("GET", (1, 1), "/", safe, Limits(max_header_block_size=20000))
    assert (rejection is not None) == (size > 20000)

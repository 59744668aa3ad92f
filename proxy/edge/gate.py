"""The gate: which requests are refused before anything reaches the upstream, and with what status.

The backend behind hangup is often lenient (uvicorn + h11 accepts Content-Length together with
Transfer-Encoding, 17 KB header fields and 16 KB URIs), so hangup must be at least as strict as
nginx and Envoy. aiohttp's parser already refuses most malformed framing and syntax (RFC 9112
§6.1, §6.3; RFC 9110 §5.5); this module names those refusals with the right status, and adds the
rules aiohttp leaves to the application. Everything here is pure: no I/O, table-tested.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentLengthError,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)

from proxy.wire.headers import request_target


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes a request may not exceed. Defaults follow nginx and Envoy."""

    max_uri_size: int = 8192
    """Longest request target in bytes (→ 414). nginx: 8 KiB."""
    max_header_field_size: int = 16384
    """Longest single header field, name or value, in bytes (→ 431)."""
    max_header_block_size: int = 65536
    """Most bytes of all header fields together (→ 431). Envoy: 60 KiB."""
    max_headers: int = 100
    """Most header fields (→ 431). Envoy: 100."""
    max_body_size: int | None = None
    """Largest request body in bytes (→ 413); None means no limit, as in Envoy."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refusal: the status, a snake_case reason for logs and metrics, and a short text."""

    status: int
    reason: str
    text: str

    @property
    def body(self) -> str:
        return f"{self.status} {self.text}\n"


# Every refusal the proxy makes has its reason here (the metrics' label values and the log's
# ``reason``); those that depend on a limit are built by the function next to their check.

# The request line and Host (RFC 9112 §3.2).
BAD_TARGET = Rejection(400, "bad_request_target", "the request target is malformed")
MISSING_HOST = Rejection(400, "missing_host", "an HTTP/1.1 request must carry Host")
MULTIPLE_HOSTS = Rejection(400, "multiple_hosts", "the request carries more than one Host")
BAD_HOST = Rejection(400, "bad_host", "the Host value is not host[:port]")
# The client connection (``proxy.edge.frontend``).
HEADER_TIMEOUT = Rejection(408, "header_timeout", "request headers not received in time")
CONNECTION_LIMIT = Rejection(503, "client_connection_limit", "too many client connections")
# The exchange (``proxy.serving``): its body, its Expect, the upstream slots.
BODY_TIMEOUT = Rejection(408, "body_timeout", "the request body did not arrive in time")
BAD_BODY = Rejection(400, "bad_request_body", "the request body could not be read")
UPSTREAM_BUSY = Rejection(503, "upstream_connection_limit", "too many upstream requests at once")
UNSUPPORTED_EXPECTATION = Rejection(
    417, "unsupported_expectation", "only the 100-continue expectation is supported"
)
# A WebSocket handshake (``proxy.websocket.tunnels``).
HANDSHAKE_WITH_BODY = Rejection(
    400, "websocket_handshake_with_body", "a WebSocket handshake carries no body"
)


def rejection_for_parse_error(exc: BaseException | None, limits: Limits) -> Rejection:
    """Name what aiohttp's parser refused; it answers every parse failure with a bare 400."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        line = exc.args[0] if exc.args else b""
        is_uri = limit == limits.max_uri_size and (
            limits.max_uri_size != limits.max_header_field_size or _looks_like_target(line)
        )
        if is_uri:
            return Rejection(
                414, "uri_too_long", f"request target over {limits.max_uri_size} bytes"
            )
        return Rejection(
            431,
            "header_field_too_large",
            f"a header field is over {limits.max_header_field_size} bytes",
        )
    message = getattr(exc, "message", "") or ""
    if isinstance(exc, BadHttpMessage) and "Too many headers" in message:
        return Rejection(431, "too_many_headers", f"more than {limits.max_headers} header fields")
    if isinstance(exc, BadHttpMethod):
        return Rejection(400, "bad_method", "the request method is not a valid token")
    if isinstance(exc, BadStatusLine):
        return Rejection(400, "bad_request_line", "the request line is malformed")
    if isinstance(exc, TransferEncodingError):
        return Rejection(400, "bad_chunked_body", "the chunked request body is malformed")
    if isinstance(exc, ContentLengthError):
        return Rejection(400, "bad_content_length", "the request body is shorter than declared")
    if isinstance(exc, InvalidURLError):
        return BAD_TARGET
    if isinstance(exc, BadHttpMessage):
        return Rejection(400, _reason_from_message(message), "the request is malformed")
    return Rejection(400, "bad_request", "the request is malformed")


def _looks_like_target(line: object) -> bool:
    prefix = bytes(line[:8]) if isinstance(line, bytes | bytearray) else str(line)[:8].encode()
    return prefix.startswith((b"/", b"http:", b"https:", b"*"))


_MESSAGE_REASONS = (
    ("Content-Length", "bad_content_length"),
    ("Transfer-Encoding", "bad_transfer_encoding"),
    ("chunk", "bad_chunked_body"),
    ("Host", "bad_host"),
    ("header", "bad_header"),
)


def _reason_from_message(message: str) -> str:
    lowered = message.lower()
    for needle, reason in _MESSAGE_REASONS:
        if needle.lower() in lowered:
            return reason
    return "bad_request"


def check_request(
    method: str,
    version: tuple[int, int],
    raw_target: str,
    raw_headers: Sequence[tuple[bytes, bytes]],
    limits: Limits,
) -> Rejection | None:
    """Refuse what aiohttp accepts but a careful gate must not forward; None to let it through."""
    if version not in ((1, 0), (1, 1)):
        # RFC 9110 §15.6.6; aiohttp parses "HTTP/2.0" in a request line and would answer in kind.
        return Rejection(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served")
    if method == "CONNECT":
        return Rejection(405, "connect_not_supported", "CONNECT is not proxied")
    if raw_target == "*":
        return Rejection(501, "asterisk_form_not_supported", "OPTIONS * is not forwarded")
    target = request_target(raw_target)
    if not target.well_formed:
        return BAD_TARGET
    block = 0
    codings: list[str] = []
    hosts: list[bytes] = []
    for name, value in raw_headers:
        block += len(name) + len(value) + 4  # ": " and CRLF, as on the wire
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.decode("latin-1").split(",") if c.strip()]
        elif lowered == b"host":
            hosts.append(value)
        elif lowered == b"content-length" and limits.max_body_size is not None:
            length = value.strip()
            if length.isdigit() and int(length) > limits.max_body_size:
                return body_too_large(limits.max_body_size)
    host_refused = _host_rejection(version, hosts, target.authority)
    if host_refused is not None:
        return host_refused
    if block > limits.max_header_block_size:
        return Rejection(
            431,
            "header_block_too_large",
            f"header fields total over {limits.max_header_block_size} bytes",
        )
    return _coding_rejection(version, codings)


def _coding_rejection(version: tuple[int, int], codings: Sequence[str]) -> Rejection | None:
    """RFC 9112 §6.1 on the request's transfer codings, in order, lower-cased."""
    if not codings:
        return None
    if version == (1, 0):
        # RFC 9112 §6.1: a server MUST treat Transfer-Encoding in an HTTP/1.0 message as faulty
        # framing, since an HTTP/1.0 intermediary may have passed it on blindly.
        return Rejection(
            400, "transfer_encoding_on_http10", "Transfer-Encoding is not valid in HTTP/1.0"
        )
    if codings[-1] != "chunked" or codings.count("chunked") > 1:
        # RFC 9112 §6.1: chunked must be final, and applied once.
        return Rejection(400, "bad_transfer_encoding", "the final transfer coding must be chunked")
    if len(codings) > 1:
        # RFC 9112 §6.1: a coding the server does not understand → 501. We decode only chunked
        # and forward bodies as they are, so any other coding would be passed on mislabelled.
        return Rejection(
            501, "unsupported_transfer_coding", "only the chunked transfer coding is supported"
        )
    return None


# RFC 9112 §3.2: Host = uri-host [ ":" port ], from RFC 3986 §3.2.2-3.2.3: an IP-literal in
# brackets, or a reg-name (which an IPv4 address also matches), then any digits as the port.
_REG_NAME = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+"
_HOST = re.compile(rf"(?:\[(?P<literal>[^\]]*)\]|{_REG_NAME})(?::[0-9]*)?")
_IPV_FUTURE = re.compile(r"[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+")


@functools.lru_cache(maxsize=256)
def valid_host(value: str) -> bool:
    """Whether ``value`` is ``uri-host [":" port]`` with a host that is not empty.

    The grammar allows an empty reg-name, but an ``http`` URI with an empty host is invalid and
    must be rejected (RFC 9110 §4.2.1), as nginx does. An IPv6 zone (RFC 6874) is not accepted.
    Cached: nearly every request names one of a few hosts, and the match costs more than the
    rest of the gate's checks.
    """
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    literal = match["literal"]
    if literal is None:
        return True
    if _IPV_FUTURE.fullmatch(literal):
        return True
    try:
        ipaddress.IPv6Address(literal)
    except ValueError:
        return False
    return "%" not in literal


def _host_rejection(
    version: tuple[int, int], hosts: Sequence[bytes], authority: str | None
) -> Rejection | None:
    """RFC 9112 §3.2: one valid Host in HTTP/1.1 (none is allowed in HTTP/1.0), and a valid
    authority in an absolute-form target, which then takes Host's place (§3.2.2).

    A Host is checked even when the authority replaces it: a server MUST answer 400 to any
    request with more than one Host or an invalid one.
    """
    if len(hosts) > 1:
        return MULTIPLE_HOSTS
    if not hosts and version == (1, 1):
        return MISSING_HOST
    if hosts and not valid_host(hosts[0].decode("latin-1").strip(" \t")):
        return BAD_HOST
    if authority is not None and not valid_host(authority):
        return BAD_TARGET
    return None


def body_too_large(max_body_size: int) -> Rejection:
    return Rejection(413, "body_too_large", f"request body over {max_body_size} bytes")

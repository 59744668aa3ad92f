"""Pure header rewriting for both directions of the proxy (no I/O; table-tested).

The order of operations follows Go's ``httputil.ReverseProxy``: strip hop-by-hop fields (and every
field the ``Connection`` header nominates) *before* adding the proxy's own, so a client's
``Connection: X-Forwarded-For`` cannot delete what we add (golang/go#50580).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

from multidict import CIMultiDict

RawHeaders = Sequence[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 names Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and
# Upgrade; Trailer, Proxy-Authenticate and Proxy-Authorization are addressed to the proxy itself
# (RFC 9110 §11.7.1, §11.7.2). Transfer-Encoding is re-created by our own framing.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

# Fields the proxy owns on the way to the upstream: Expect is answered here (we send
# `100 Continue` when we start reading the body, as nginx does), and the forwarding fields are
# rewritten below.
_REQUEST_OWNED = frozenset({"expect", "x-forwarded-proto", "x-forwarded-host", "x-request-id"})

REQUEST_ID_HEADER = "X-Request-ID"
# A client-supplied id is kept only when it is short and plain, so it can be trusted in logs
# and in the upstream's own headers; anything else is replaced by a generated one.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def nominated_by_connection(values: Iterable[str]) -> frozenset[str]:
    """Field names listed in ``Connection`` header values (RFC 9110 §7.6.1), lower-cased."""
    return frozenset(
        name.strip().lower() for value in values for name in value.split(",") if name.strip()
    )


# Host identifies the target (RFC 9112 §3.2) and is not the sender's to drop by nominating it
# in Connection; Go's ReverseProxy keeps it too.
_NEVER_NOMINATED = frozenset({"host"})


def _as_bytes(names: frozenset[str]) -> frozenset[bytes]:
    return frozenset(name.encode("ascii") for name in names)


_HOP_BY_HOP_BYTES = _as_bytes(HOP_BY_HOP)
_NEVER_NOMINATED_BYTES = _as_bytes(_NEVER_NOMINATED)
_REQUEST_DROPPED = _HOP_BY_HOP_BYTES | _as_bytes(_REQUEST_OWNED)


def _end_to_end(raw: RawHeaders, drop: frozenset[bytes]) -> list[tuple[str, str]]:
    """Decode raw fields and keep the end-to-end ones, in order, repeats kept.

    ``drop`` holds lower-cased names (hop-by-hop included). Names are compared as bytes and only
    the kept fields are decoded: this runs twice per request (about 2 µs for eight fields).
    Field names are tokens (RFC 9110 §5.1), plain ASCII, so ``bytes.lower`` is the right fold.
    """
    kept: list[tuple[bytes, bytes, bytes]] = []
    connection_values: list[str] = []
    for name, value in raw:
        lowered = name.lower()
        if lowered in drop:
            if lowered == b"connection":
                connection_values.append(value.decode("latin-1"))
            continue
        kept.append((lowered, name, value))
    if connection_values:
        # A name that is not latin-1 once lower-cased becomes "?", which no token equals.
        nominated = {
            name.encode("latin-1", "replace") for name in nominated_by_connection(connection_values)
        } - _NEVER_NOMINATED_BYTES
        kept = [field for field in kept if field[0] not in nominated]
    return [(name.decode("latin-1"), value.decode("latin-1")) for _, name, value in kept]


def request_id_from(raw: RawHeaders) -> str:
    """The client's ``X-Request-ID`` when it is well-formed, else a fresh random one."""
    for name, value in raw:
        if name.lower() == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if _VALID_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    # 128 random bits as 32 hex digits, like uuid4().hex without building a UUID per request.
    return os.urandom(16).hex()


def upstream_request_headers(
    raw: RawHeaders, *, client_ip: str | None, request_id: str, scheme: str = "http"
) -> CIMultiDict[str]:
    """Headers to send upstream: the client's end-to-end fields plus the forwarding fields.

    ``X-Forwarded-For`` is appended to (the client's list is kept, as nginx's
    ``$proxy_add_x_forwarded_for`` does: the backend must trust only the entries it knows were
    added by its own proxies). ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` describe this hop and
    are replaced. ``Host`` is kept as the client sent it.
    """
    kept = _end_to_end(raw, _REQUEST_DROPPED)
    headers: CIMultiDict[str] = CIMultiDict(kept)
    host = headers.get("Host")
    if client_ip is not None:
        # Empty list elements are ignored (RFC 9110 §5.6.1.2), so they are not passed on.
        previous = [
            element.strip()
            for value in headers.getall("X-Forwarded-For", [])
            for element in value.split(",")
            if element.strip()
        ]
        if "X-Forwarded-For" in headers:
            headers.popall("X-Forwarded-For")
        headers["X-Forwarded-For"] = ", ".join([*previous, client_ip])
    headers["X-Forwarded-Proto"] = scheme
    if host is not None:
        headers["X-Forwarded-Host"] = host
    headers[REQUEST_ID_HEADER] = request_id
    return headers


def downstream_response_headers(raw: RawHeaders) -> CIMultiDict[str]:
    """Headers to send the client: the upstream's end-to-end fields, in order, repeats kept.

    Several ``Set-Cookie`` fields stay separate (RFC 6265 §3: they cannot be joined).
    """
    return CIMultiDict(_end_to_end(raw, _HOP_BY_HOP_BYTES))


def expects_continue(values: Sequence[str]) -> bool | None:
    """``None`` without an expectation; True for ``100-continue``; False for anything else (→ 417).

    RFC 9110 §10.1.1: 100-continue is the only expectation defined; the token is case-insensitive.
    ``Expect`` is a list, whose empty elements a recipient must ignore (RFC 9110 §5.6.1.2), so
    ``100-continue,`` is 100-continue and an empty ``Expect`` expects nothing.
    """
    members = [
        member.strip().lower() for value in values for member in value.split(",") if member.strip()
    ]
    if not members:
        return None
    return all(member == "100-continue" for member in members)

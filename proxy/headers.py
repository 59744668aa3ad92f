"""Pure header rewriting for both directions of the proxy (no I/O; table-tested).

The order of operations follows Go's ``httputil.ReverseProxy``: strip hop-by-hop fields (and every
field the ``Connection`` header nominates) *before* adding the proxy's own, so a client's
``Connection: X-Forwarded-For`` cannot delete what we add (golang/go#50580).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Sequence

from yarl import URL

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


@functools.lru_cache(maxsize=256)
def _nominated_names(connection_values: tuple[bytes, ...]) -> frozenset[bytes]:
    """The lower-cased field names ``Connection`` values nominate, as bytes, ``Host`` aside.

    Cached: nearly every message says the same few things (``keep-alive``, ``close``,
    ``Upgrade``), and working it out costs more than the rest of the header rewrite.
    """
    values = [value.decode("latin-1") for value in connection_values]
    # A name that is not latin-1 once lower-cased becomes "?", which no token equals.
    return (
        frozenset(name.encode("latin-1", "replace") for name in nominated_by_connection(values))
        - _NEVER_NOMINATED_BYTES
    )


def _end_to_end(raw: RawHeaders, drop: frozenset[bytes]) -> list[tuple[str, str]]:
    """Decode raw fields and keep the end-to-end ones, in order, repeats kept.

    ``drop`` holds lower-cased names (hop-by-hop included). Names are compared as bytes and only
    the kept fields are decoded: this runs twice per request (about 2 µs for eight fields).
    Field names are tokens (RFC 9110 §5.1), plain ASCII, so ``bytes.lower`` is the right fold.
    """
    kept: list[tuple[str, str]] = []
    kept_names: list[bytes] = []
    connection_values: list[bytes] = []
    for name, value in raw:
        lowered = name.lower()
        if lowered in drop:
            if lowered == b"connection":
                connection_values.append(value)
            continue
        kept.append((name.decode("latin-1"), value.decode("latin-1")))
        kept_names.append(lowered)
    if connection_values:
        nominated = _nominated_names(tuple(connection_values))
        if not nominated.isdisjoint(kept_names):
            kept = [
                field for field, name in zip(kept, kept_names, strict=True) if name not in nominated
            ]
    return kept


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


def upstream_request_fields(
    raw: RawHeaders,
    *,
    client_ip: str | None,
    request_id: str,
    scheme: str = "http",
    default_host: str | None = None,
) -> list[tuple[str, str]]:
    """Fields to send upstream, in order: the client's end-to-end ones plus the forwarding ones.

    ``X-Forwarded-For`` is appended to (the client's list is kept, as nginx's
    ``$proxy_add_x_forwarded_for`` does: the backend must trust only the entries it knows were
    added by its own proxies). ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` describe this hop and
    are replaced. ``Host`` is kept as the client sent it; ``default_host``, when given, is sent
    first as ``Host`` for a client (HTTP/1.0) that sent none (RFC 9112 §3.2 requires it in
    HTTP/1.1). The forwarding fields come last.
    """
    fields = _end_to_end(raw, _REQUEST_DROPPED)
    host = next((value for name, value in fields if name.lower() == "host"), None)
    if host is None and default_host is not None:
        fields.insert(0, ("Host", default_host))
    if client_ip is not None:
        forwarded = [value for name, value in fields if name.lower() == "x-forwarded-for"]
        if forwarded:
            fields = [(name, value) for name, value in fields if name.lower() != "x-forwarded-for"]
        # Empty list elements are ignored (RFC 9110 §5.6.1.2), so they are not passed on.
        previous = [
            element.strip()
            for value in forwarded
            for element in value.split(",")
            if element.strip()
        ]
        fields.append(("X-Forwarded-For", ", ".join([*previous, client_ip])))
    fields.append(("X-Forwarded-Proto", scheme))
    if host is not None:
        fields.append(("X-Forwarded-Host", host))
    fields.append((REQUEST_ID_HEADER, request_id))
    return fields


def downstream_response_fields(raw: RawHeaders) -> list[tuple[str, str]]:
    """Fields to send the client: the upstream's end-to-end ones, in order, repeats kept.

    Several ``Set-Cookie`` fields stay separate (RFC 6265 §3: they cannot be joined).
    """
    return _end_to_end(raw, _HOP_BY_HOP_BYTES)


def origin_form(raw_target: str, url: URL) -> str:
    """The request target to send upstream, byte for byte (RFC 9112 §3.2.1 origin-form).

    ``raw_target`` is the target as the client sent it and ``url`` aiohttp's parse of it. A client
    may send absolute-form (RFC 9112 §3.2.2); it is reduced to origin-form so the upstream sees
    what it would have seen directly.
    """
    if raw_target.startswith("/"):
        return raw_target
    return url.raw_path_qs if url.raw_path else "/"


def request_head(request_line: str, fields: Iterable[tuple[str, str]], *extra: str) -> bytes:
    """A request head: the request line, ``fields``, then ``extra`` lines (``"Name: value"``).

    aiohttp decoded the target as UTF-8 with surrogateescape (aiohttp/_http_parser.pyx) and the
    fields are decoded as latin-1 (``_end_to_end``): both encodings give back the bytes.
    """
    lines = [f"{name}: {value}\r\n" for name, value in fields]
    lines += [f"{line}\r\n" for line in extra]
    lines.append("\r\n")
    return f"{request_line}\r\n".encode("utf-8", "surrogateescape") + "".join(lines).encode(
        "latin-1"
    )


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

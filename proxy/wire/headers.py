"""Pure header rewriting for both directions of the proxy (no I/O; table-tested).

The order of operations follows Go's ``httputil.ReverseProxy``: strip hop-by-hop fields (and every
field the ``Connection`` header nominates) *before* adding the proxy's own, so a client's
``Connection: X-Forwarded-For`` cannot delete what we add (golang/go#50580).

Framing is never taken from, or removed by, the header list: ``Content-Length`` and
``Transfer-Encoding`` are dropped in both directions, and the caller writes the framing of the
message hangup itself parsed (``framing_field``). A ``Connection: Content-Length`` once removed the
client's length and sent its body upstream raw, where it was read as a second request.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

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

# RFC 9112 §6: a message's framing is the sender's own, computed from the message it sends; a
# proxy that forwards a received Content-Length lets the field list (and the Connection header,
# RFC 9110 §7.6.1, which may nominate it) decide where its body ends.
_FRAMING = frozenset({"content-length", "transfer-encoding"})

# Fields the proxy owns on the way to the upstream: Expect is answered here (we send
# `100 Continue` when we start reading the body, as nginx does), the forwarding fields are
# rewritten below, and Hangup-Decision is the proxy's word to the backend
# (proxy.policy.decision_header), never a client's.
_REQUEST_OWNED = _FRAMING | {
    "expect",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "hangup-decision",
}

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
_RESPONSE_DROPPED = _HOP_BY_HOP_BYTES | _as_bytes(_FRAMING)


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


_NAMES_KEPT = 1024
"""Distinct raw field names whose facts one direction keeps (``_Direction``); past it, a new name
is worked out each time it is seen, so a client that sends endless new names costs no memory."""


class _Direction:
    """One direction's field filter, and what it learnt about each raw field name it saw.

    A name's facts (lower-cased, dropped or not, decoded) are worked out the first time it is
    seen and looked up after that: a service sends the same few names in every message, and
    lower-casing, hashing and decoding each name of each message cost more than the rest of the
    rewrite (about 40 % of it, issue 16). Field names are tokens (RFC 9110 §5.1), plain ASCII, so
    ``bytes.lower`` is the right fold.
    """

    def __init__(self, drop: frozenset[bytes]) -> None:
        self._drop = drop
        """Lower-cased names never passed on (hop-by-hop included)."""
        self._names: dict[bytes, tuple[bytes, str | None]] = {}
        """Raw name → (lower-cased, the name decoded, or ``None`` when dropped)."""

    def _learn(self, name: bytes) -> tuple[bytes, str | None]:
        lowered = name.lower()
        facts = (lowered, None if lowered in self._drop else name.decode("latin-1"))
        if len(self._names) < _NAMES_KEPT:
            self._names[name] = facts
        return facts

    def kept_with_names(self, raw: RawHeaders) -> tuple[list[tuple[str, str]], list[bytes]]:
        """The end-to-end fields, decoded, in order, repeats kept; beside them their lower-cased
        names, for look-ups by name."""
        names = self._names
        kept: list[tuple[str, str]] = []
        kept_names: list[bytes] = []
        connection_values: list[bytes] = []
        for name, value in raw:
            facts = names.get(name)
            if facts is None:
                facts = self._learn(name)
            lowered, decoded = facts
            if decoded is None:
                if lowered == b"connection":
                    connection_values.append(value)
                continue
            kept.append((decoded, value.decode("latin-1")))
            kept_names.append(lowered)
        if connection_values:
            nominated = _nominated_names(tuple(connection_values))
            if not nominated.isdisjoint(kept_names):
                pairs = [
                    (field, name)
                    for field, name in zip(kept, kept_names, strict=True)
                    if name not in nominated
                ]
                kept = [field for field, _ in pairs]
                kept_names = [name for _, name in pairs]
        return kept, kept_names


_TO_UPSTREAM = _Direction(_REQUEST_DROPPED)
_TO_CLIENT = _Direction(_RESPONSE_DROPPED)


def request_id_from(raw: RawHeaders) -> str:
    """The client's ``X-Request-ID`` when it is well-formed, else a fresh random one."""
    for name, value in raw:
        if name.lower() == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if _VALID_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return _random_ids.next_id()


class _RandomIds:
    """128 random bits as 32 hex digits per id, like ``uuid4().hex`` without a UUID per request.

    Drawn from the OS's random source 128 ids at a time: one ``getrandom`` a request cost more
    than the rest of the id's work (issue 16). A forked child starts with a fresh batch, so no two
    processes hand out the same ids.
    """

    _BATCH = 128

    def __init__(self) -> None:
        self._digits = ""
        self._next = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._digits = ""
        self._next = 0

    def next_id(self) -> str:
        start = self._next
        if start >= len(self._digits):
            self._digits = os.urandom(16 * self._BATCH).hex()
            start = 0
        self._next = start + 32
        return self._digits[start : start + 32]


_random_ids = _RandomIds()


def upstream_request_fields(
    raw: RawHeaders,
    *,
    client_ip: str | None,
    request_id: str,
    scheme: str = "http",
    default_host: str | None = None,
    authority: str | None = None,
) -> list[tuple[str, str]]:
    """Fields to send upstream, in order: the client's end-to-end ones plus the forwarding ones.

    ``X-Forwarded-For`` is appended to (the client's list is kept, as nginx's
    ``$proxy_add_x_forwarded_for`` does: the backend must trust only the entries it knows were
    added by its own proxies). ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` describe this hop and
    are replaced. ``Host`` is kept as the client sent it; ``default_host``, when given, is sent
    first as ``Host`` for a client (HTTP/1.0) that sent none (RFC 9112 §3.2 requires it in
    HTTP/1.1). ``authority``, the authority of an absolute-form target, replaces the client's
    ``Host`` (RFC 9112 §3.2.2). The forwarding fields come last. ``Content-Length`` and
    ``Transfer-Encoding`` are never among the fields: the caller adds the framing.
    """
    fields, names = _TO_UPSTREAM.kept_with_names(raw)
    # Looked up among the lower-cased names: most requests have a Host and no X-Forwarded-For.
    host = fields[names.index(b"host")][1] if b"host" in names else None
    if authority is not None:
        # RFC 9112 §3.2.2: the target's authority replaces Host; sent first, as §3.2 asks.
        fields = [(name, value) for name, value in fields if name.lower() != "host"]
        fields.insert(0, ("Host", authority))
        host = authority
    elif host is None and default_host is not None:
        fields.insert(0, ("Host", default_host))
    if client_ip is not None:
        if b"x-forwarded-for" not in names:
            fields.append(("X-Forwarded-For", client_ip))
        else:
            forwarded = [value for name, value in fields if name.lower() == "x-forwarded-for"]
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

    Several ``Set-Cookie`` fields stay separate (RFC 6265 §3: they cannot be joined). The framing
    fields are not among them: the response's length is the one hangup's parse of the upstream's
    answer found (RFC 9112 §6.3), set by the caller.
    """
    return _TO_CLIENT.kept_with_names(raw)[0]


def downstream_response_fields_with_names(
    raw: RawHeaders,
) -> tuple[list[tuple[str, str]], list[bytes]]:
    """``downstream_response_fields``, and beside them their lower-cased names."""
    return _TO_CLIENT.kept_with_names(raw)


CHUNKED_FRAMING = "Transfer-Encoding: chunked"


def framing_field(content_length: int | None, *, has_body: bool) -> str | None:
    """The one framing line of a forwarded request, from hangup's own parse (RFC 9112 §6).

    A known length is sent as canonical decimal (``int`` drops the leading zeros and the sign
    h11 and llhttp each read their own way, RFC 9110 §8.6); a body of unknown length is re-framed
    as chunked (RFC 9112 §7.1); no body and no declared length, no line (RFC 9112 §6.3 rule 6).
    """
    if content_length is not None:
        return f"Content-Length: {content_length:d}"
    return CHUNKED_FRAMING if has_body else None


class RequestTarget(NamedTuple):
    """A request target as it is forwarded: in origin form, with the authority it named, if any."""

    origin: str
    """The target to send upstream, byte for byte (RFC 9112 §3.2.1 origin-form)."""
    authority: str | None
    """An absolute-form target's authority, which replaces Host (RFC 9112 §3.2.2); else None."""
    well_formed: bool
    """False for a target in neither form: the gate refuses it with 400."""


# RFC 9112 §3.2.2 absolute-form for the two schemes a gateway to an HTTP origin serves; the
# authority ends at the first "/", "?" or "#" (RFC 3986 §3.2). A fragment is never sent.
_ABSOLUTE_FORM = re.compile(r"(?i:https?)://(?P<authority>[^/?#]*)(?P<rest>[^#]*)")


def request_target(raw_target: str) -> RequestTarget:
    """The target to forward, from ``raw_target`` as the client sent it.

    An absolute-form target is reduced to origin form from its own characters (``http://a?q``
    becomes ``/?q``: an empty path is sent as "/", RFC 9112 §3.2.1), so the upstream sees what
    it would have seen directly.
    """
    if raw_target.startswith("/"):
        # Nearly every request: made without the keyword call (half the cost, issue 16).
        return RequestTarget._make((raw_target, None, True))
    match = _ABSOLUTE_FORM.fullmatch(raw_target)
    if match is None:
        return RequestTarget(raw_target, None, well_formed=False)
    rest = match["rest"]
    origin = rest if rest.startswith("/") else f"/{rest}"
    return RequestTarget(origin, match["authority"], well_formed=True)


def request_head(request_line: str, fields: Iterable[tuple[str, str]], *extra: str) -> bytes:
    """A request head: the request line, ``fields``, then ``extra`` lines (``"Name: value"``).

    aiohttp decoded the target as UTF-8 with surrogateescape (aiohttp/_http_parser.pyx) and the
    fields are decoded as latin-1 (``_Direction``): both encodings give back the bytes.
    """
    # ": ".join over the pairs runs in C: half the time of an f-string per field (issue 16).
    lines = "\r\n".join([*map(": ".join, fields), *extra])
    block = f"{lines}\r\n\r\n" if lines else "\r\n"
    return f"{request_line}\r\n".encode("utf-8", "surrogateescape") + block.encode("latin-1")


def expects_continue(values: Sequence[str]) -> bool | None:
    """``None`` without an expectation; True for ``100-continue``; False for anything else (→ 417).

    RFC 9110 §10.1.1: 100-continue is the only expectation defined; the token is case-insensitive.
    ``Expect`` is a list, whose empty elements a recipient must ignore (RFC 9110 §5.6.1.2), so
    ``100-continue,`` is 100-continue and an empty ``Expect`` expects nothing.
    """
    if not values:
        return None  # nearly every request: no list to build (issue 16)
    members = [
        member.strip().lower() for value in values for member in value.split(",") if member.strip()
    ]
    if not members:
        return None
    return all(member == "100-continue" for member in members)

"""A grammar of client messages for the differential fuzzer, valid and hostile alike.

Each piece of a message is drawn with a flag saying whether RFC 9110/9112 allow it. A message made
only of allowed pieces has a known meaning (``Intended``): its method, its target and its body,
which is what the upstream must read. Any other message has none, and the fuzzer only checks that
the parsers and hangup agree on whatever it became.

The classes come from the public request-smuggling research, written out here from the RFCs'
point of view rather than copied from any tool: CL.TE and TE.CL (both framings at once),
TE.TE (obfuscated ``Transfer-Encoding``: case, whitespace, vertical tab, repeats, other codings,
``xchunked``), CL.CL (repeated or listed lengths), leading zeros and signs in Content-Length,
chunk-size tricks (overflow, leading zeros, extensions with quoted strings, bare LF), trailers,
obs-fold, whitespace before the colon, bare CR/LF and control bytes, absolute-form and Host
confusion, ``Expect``, and hop-by-hop abuse (``Connection`` nominating the framing, Host, or the
proxy's own fields: the hole issue 12 found), each possibly followed by a second message in the
same write.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

CRLF = b"\r\n"


@dataclass(frozen=True)
class Intended:
    """What a well-formed message means: the upstream must read exactly this."""

    method: str
    origin: str
    body: bytes


@dataclass(frozen=True)
class Message:
    data: bytes
    intended: Intended | None


@dataclass(frozen=True)
class Case:
    """One write from a client: one or two messages back to back."""

    messages: tuple[Message, ...]

    @property
    def data(self) -> bytes:
        return b"".join(message.data for message in self.messages)

    @property
    def intended(self) -> list[Intended] | None:
        """Every message's meaning, when all are well-formed; None when any is not."""
        meanings = [message.intended for message in self.messages]
        return None if any(m is None for m in meanings) else [m for m in meanings if m]


Piece = tuple[bytes, bool]  # the bytes, and whether RFC 9110/9112 allow them


def _pieces(valid: list[bytes], invalid: list[bytes]) -> st.SearchStrategy[Piece]:
    """Mostly one of ``valid``, sometimes one of ``invalid``: a message has several pieces,
    and most messages must get past the gate for the forwarding to be tested at all."""
    allowed = st.sampled_from([(v, True) for v in valid])
    refused = st.sampled_from([(v, False) for v in invalid])
    # Not one_of: Hypothesis favours the ends of a range, so the refused branch sits in the middle.
    return st.integers(0, 15).flatmap(lambda n: refused if n == 7 else allowed)


# llhttp, aiohttp's parser, knows a fixed list of methods: an unregistered token (RFC 9110 §9.1
# allows any) is refused with 400, so it counts as a piece without a guaranteed meaning.
METHODS = _pieces(
    [b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS", b"PROPFIND"],
    [b"X-Y", b"get", b"G ET", b"GET\t", b"GE\x00T", b"", b"CONNECT", b"GET/"],
)

_PATH_CHARS = st.sampled_from([*"abcXYZ019-._~!$&'()*+,;=:@/", "%2F", "%41", "%zz"])
_ORIGIN = st.builds(
    lambda path, query: "/" + "".join(path) + (f"?{''.join(query)}" if query else ""),
    st.lists(_PATH_CHARS, max_size=8),
    st.lists(_PATH_CHARS, max_size=4),
)


@st.composite
def targets(draw: st.DrawFn) -> tuple[bytes, bool, str, str | None]:
    """The raw target, whether it is allowed, its origin form, and the authority it names."""
    origin = draw(_ORIGIN)
    kind = draw(st.sampled_from(["origin", "origin", "origin", "absolute", "odd"]))
    if kind == "origin":
        return origin.encode(), "%zz" not in origin, origin, None
    if kind == "absolute":
        scheme = draw(st.sampled_from(["http", "https", "HTTP"]))
        host = draw(st.sampled_from(["b.example", "b.example:81", "[::1]", "127.0.0.1"]))
        return f"{scheme}://{host}{origin}".encode(), "%zz" not in origin, origin, host
    odd = draw(
        st.sampled_from(
            [
                b"*",
                b"/a b",
                b"/a\x00b",
                b"//x",
                b"/?a#frag",
                b"ftp://b/x",
                b"http:///x",
                b"x/y",
                b"http://u@b/x",
                b"/\xff",
                b"",
            ]
        )
    )
    return odd, False, "", None


VERSIONS = _pieces(
    [b"HTTP/1.1"], [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 "]
)

HOST_VALUES = _pieces(
    [b"a", b"a.example:8080", b"[::1]:80", b"127.0.0.1"],
    [b"", b"a b", b"a/b", b"u@a", b"a:x", b"[::1", b"a\x7f"],
)

# Ordinary end-to-end fields with odd but legal spellings, and illegal ones.
PLAIN_FIELDS = _pieces(
    [
        b"X-A: 1",
        b"x-a: 2",
        b"Accept: */*",
        b"X-Empty:",
        b"X-Tab:\tv\t",
        b"Cookie: a=1; b=2",
        b"X-Forwarded-For: 10.0.0.1",
        b"X-Request-ID: client-id",
        b"Keep-Alive: timeout=5",
        b"TE: trailers",
        b"Upgrade-Insecure-Requests: 1",
        b"X-Forwarded-Host: evil",
    ],
    [
        b"X A: 1",
        b"X-A : 1",
        b"X{}: 1",
        b": v",
        b"Novalue",
        b"X: a\rb",
        b"X: a\x00b",
        b"X: a\x01b",
        b"X-Fold: a\r\n b",
        b"X\x7f: 1",
    ],
)

# Connection nominates any field (RFC 9110 §7.6.1): framing, Host, the proxy's own, ordinary ones.
CONNECTION_VALUES = st.lists(
    st.sampled_from(
        [
            b"keep-alive",
            b"Content-Length",
            b"content-length",
            b"Transfer-Encoding",
            b"Host",
            b"X-Forwarded-For",
            b"X-Request-ID",
            b"Expect",
            b"X-A",
            b"TE",
            b"Upgrade",
            b"",
        ]
    ),
    min_size=1,
    max_size=3,
).map(lambda names: (b"Connection: " + b", ".join(names), True))

EXPECT = _pieces([b"Expect: 100-continue", b"Expect: 100-Continue"], [b"Expect: 200-ok"])

_BODY_BYTES = st.one_of(
    st.binary(max_size=64),
    st.just(b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
    st.just(b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
)


@st.composite
def content_length(draw: st.DrawFn, body: bytes) -> tuple[list[bytes], bool]:
    """Content-Length fields for ``body``: right, or one of the CL.CL and number tricks."""
    n = len(body)
    spellings = [
        b"Content-Length: %d",
        b"Content-Length:%d",
        b"content-length: %d ",
        b"Content-Length: 0%d",
    ]
    tricks = [
        b"Content-Length: %d" % (n + 5),
        b"Content-Length: %d" % max(n - 3, 0),
        b"Content-Length: +%d" % n,
        b"Content-Length: -%d" % n,
        b"Content-Length: 0x%x" % n,
        b"Content-Length: %d, %d" % (n, n),
        b"Content-Length: %d\r\nContent-Length: %d" % (n, n),
        b"Content-Length: %d\r\nContent-Length: %d" % (n, n + 1),
        b"Content-Length: 1 %d" % n,
        b"Content-Length: 99999999999999999999",
        b"Content-Length : %d" % n,
        b"Content-Length:\x0b%d" % n,
    ]
    field, valid = draw(_pieces([spelling % n for spelling in spellings], tricks))
    return [field], valid


_TE_FIELDS = _pieces(
    [
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: Chunked",
        b"transfer-encoding:chunked",
        b"Transfer-Encoding: chunked ",
    ],
    [
        b"Transfer-Encoding: xchunked",
        b"Transfer-Encoding: chunked, chunked",
        b"Transfer-Encoding: gzip",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: chunked, gzip",
        b"Transfer-Encoding: identity",
        b"Transfer-Encoding:\x0bchunked",
        b"Transfer-Encoding : chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding:\r\n chunked",
        b'Transfer-Encoding: "chunked"',
    ],
)


@st.composite
def chunked_body(draw: st.DrawFn, body: bytes) -> tuple[bytes, bool]:
    """``body`` in chunks, with sizes, extensions and trailers, some of them broken."""
    valid = True
    out = bytearray()
    rest = body
    while rest:
        size = draw(st.integers(1, max(1, len(rest))))
        chunk, rest = rest[:size], rest[size:]
        spelling, ok = draw(
            _pieces(
                [b"%x" % size, b"%X" % size, b"00%x" % size],
                [b"%x " % size, b"0x%x" % size, b"-%x" % size, b"%x" % (size + 1)],
            )
        )
        extension, ext_ok = draw(
            _pieces([b"", b"", b";a=b", b';q="x;y"', b";flag"], [b";a=b\x00", b"; a\rb"])
        )
        end, end_ok = draw(_pieces([CRLF, CRLF, CRLF], [b"\n", b"\r"]))
        valid = valid and ok and ext_ok and end_ok
        out += spelling + extension + end + chunk + CRLF
    last, last_ok = draw(_pieces([b"0", b"000"], [b"", b"0x0"]))
    trailers, trailers_ok = draw(
        _pieces([b"", b"X-Trailer: t\r\n"], [b"X Bad: t\r\n", b"Content-Length: 5\r\n: v\r\n"])
    )
    out += last + CRLF + trailers + CRLF
    return bytes(out), valid and last_ok and trailers_ok


@st.composite
def messages(draw: st.DrawFn) -> Message:
    method, method_ok = draw(METHODS)
    raw_target, target_ok, origin, _authority = draw(targets())
    version, version_ok = draw(VERSIONS)
    host_count = draw(st.sampled_from([1] * 8 + [0, 2]))
    hosts = [draw(HOST_VALUES) for _ in range(host_count)]
    hosts_ok = host_count == 1 and all(ok for _, ok in hosts)
    fields: list[bytes] = [b"Host: " + value for value, _ in hosts]
    fields_ok = True
    for field, ok in draw(st.lists(PLAIN_FIELDS, max_size=3)):
        fields.append(field)
        fields_ok = fields_ok and ok
    if draw(st.booleans()):
        fields.append(draw(CONNECTION_VALUES)[0])
    expect_ok = True
    if draw(st.integers(0, 5)) == 0:
        field, expect_ok = draw(EXPECT)
        fields.append(field)
    body = draw(_BODY_BYTES) if draw(st.integers(0, 3)) else b""
    framing = draw(st.sampled_from(["none", "length", "length", "chunked", "chunked", "both"]))
    framing_ok = True
    wire_body = b""
    if framing == "none":
        body = b""
    elif framing == "length":
        length_fields, framing_ok = draw(content_length(body))
        fields += length_fields
        wire_body = body
    else:
        te_field, te_ok = draw(_TE_FIELDS)
        wire_body, chunks_ok = draw(chunked_body(body))
        fields.append(te_field)
        framing_ok = te_ok and chunks_ok
        if framing == "both":
            fields.append(b"Content-Length: %d" % len(wire_body))
            framing_ok = False  # RFC 9112 §6.3 rule 3: a server may not trust either
    draw(st.randoms()).shuffle(fields)
    head = method + b" " + raw_target + b" " + version + CRLF + b"".join(f + CRLF for f in fields)
    allowed = (
        method_ok
        and target_ok
        and version_ok
        and hosts_ok
        and fields_ok
        and expect_ok
        and framing_ok
    )
    intended = Intended(method.decode(), origin, body) if allowed else None
    return Message(head + CRLF + wire_body, intended)


SECOND = Message(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n", Intended("GET", "/second", b""))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    first = draw(messages())
    follow = draw(st.sampled_from(["none", "none", "plain", "generated"]))
    if follow == "none":
        return Case((first,))
    return Case((first, SECOND if follow == "plain" else draw(messages())))

"""The differential fuzzer's seeds: the gate corpus, issue 12's request, the smuggling classes.

Each seed is a ``Case``; a seed whose meaning is unambiguous says so (``Intended``), and the oracle
then holds the upstream to it. The classes are written from RFC 9112 §6 and the public research
(CL.TE, TE.CL, TE.TE, CL.CL, hop-by-hop abuse), not copied from any tool.
"""

from __future__ import annotations

from tests.fuzz_grammar import Case, Intended, Message
from tests.test_gate_corpus import ACCEPTED, REFUSED

H = b"Host: a\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"


def post(target: bytes, *fields: bytes, body: bytes = b"", method: bytes = b"POST") -> bytes:
    head = method + b" " + target + b" HTTP/1.1\r\n" + H + b"".join(f + b"\r\n" for f in fields)
    return head + b"\r\n" + body


def meant(data: bytes, method: str, origin: str, body: bytes = b"") -> Message:
    return Message(data, Intended(method, origin, body))


def unknown(data: bytes) -> Message:
    return Message(data, None)


_CLASSES: list[tuple[str, tuple[Message, ...]]] = [
    # Issue 12: Connection nominating the framing once stripped it (RFC 9110 §7.6.1).
    (
        "issue-12",
        (
            meant(
                b"POST /echo?attacker=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 41\r\n"
                b"Connection: Content-Length\r\n\r\n"
                b"GET /slow?seconds=2 HTTP/1.1\r\nHost: a\r\n\r\n",
                "POST",
                "/echo?attacker=1",
                b"GET /slow?seconds=2 HTTP/1.1\r\nHost: a\r\n\r\n",
            ),
        ),
    ),
    (
        "connection-nominates-te",
        (
            meant(
                post(
                    b"/c",
                    b"Transfer-Encoding: chunked",
                    b"Connection: Transfer-Encoding",
                    body=b"3\r\nabc\r\n0\r\n\r\n",
                ),
                "POST",
                "/c",
                b"abc",
            ),
        ),
    ),
    (
        "connection-nominates-host-and-forwarding",
        (
            meant(
                post(
                    b"/h",
                    b"Content-Length: 3",
                    b"Connection: Host, X-Forwarded-For, X-Request-ID",
                    b"X-Forwarded-For: 10.0.0.1",
                    body=b"abc",
                ),
                "POST",
                "/h",
                b"abc",
            ),
        ),
    ),
    # CL.TE and TE.CL: both framings, each hiding a request for the other reading.
    (
        "cl-te",
        (
            unknown(
                post(b"/", b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\nX")
            ),
        ),
    ),
    (
        "te-cl",
        (
            unknown(
                post(
                    b"/",
                    b"Transfer-Encoding: chunked",
                    b"Content-Length: 3",
                    body=b"8\r\nSMUGGLED\r\n0\r\n\r\n",
                )
            ),
        ),
    ),
    # TE.TE: an obfuscated Transfer-Encoding one parser honours and another ignores.
    (
        "te-te-second-field",
        (
            unknown(
                post(
                    b"/", b"Transfer-Encoding: chunked", b"Transfer-encoding: x", body=b"0\r\n\r\n"
                )
            ),
        ),
    ),
    ("te-tab", (unknown(post(b"/", b"Transfer-Encoding:\tchunked", body=b"0\r\n\r\n")),)),
    (
        "te-leading-space-line",
        (unknown(post(b"/", b"X: 1", b" Transfer-Encoding: chunked", body=b"0\r\n\r\n")),),
    ),
    ("te-bare-lf", (unknown(post(b"/", b"X: X\nTransfer-Encoding: chunked", body=b"0\r\n\r\n")),)),
    ("te-name-lf", (unknown(post(b"/", b"Transfer-Encoding\n: chunked", body=b"0\r\n\r\n")),)),
    ("te-nul", (unknown(post(b"/", b"Transfer-Encoding: chunked\x00", body=b"0\r\n\r\n")),)),
    ("te-quoted", (unknown(post(b"/", b'Transfer-Encoding: "chunked"', body=b"0\r\n\r\n")),)),
    # CL.CL and number spellings.
    (
        "cl-cl",
        (unknown(post(b"/", b"Content-Length: 3", b"Content-Length: 40", body=b"abc" + SMUGGLED)),),
    ),
    (
        "cl-leading-zeros",
        (meant(post(b"/z", b"Content-Length: 0003", body=b"abc"), "POST", "/z", b"abc"),),
    ),
    ("cl-name-space", (unknown(post(b"/", b"Content-Length : 3", body=b"abc")),)),
    # Chunk sizes, extensions and trailers.
    (
        "chunk-leading-zeros",
        (
            meant(
                post(b"/k", b"Transfer-Encoding: chunked", body=b"0003\r\nabc\r\n0\r\n\r\n"),
                "POST",
                "/k",
                b"abc",
            ),
        ),
    ),
    (
        "chunk-quoted-extension",
        (
            meant(
                post(b"/q", b"Transfer-Encoding: chunked", body=b'3;a="x;y"\r\nabc\r\n0\r\n\r\n'),
                "POST",
                "/q",
                b"abc",
            ),
        ),
    ),
    (
        "chunk-extension-with-cr",
        (unknown(post(b"/", b"Transfer-Encoding: chunked", body=b"3;a=\rb\r\nabc\r\n0\r\n\r\n")),),
    ),
    (
        "chunk-size-overflow",
        (
            unknown(
                post(
                    b"/",
                    b"Transfer-Encoding: chunked",
                    body=b"10000000000000003\r\nabc\r\n0\r\n\r\n",
                )
            ),
        ),
    ),
    (
        "chunk-last-bare-lf",
        (unknown(post(b"/", b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\n\n" + SMUGGLED)),),
    ),
    # RFC 9110 §6.5.1: a framing field in a trailer may be refused; it is never honoured.
    (
        "trailer-with-content-length",
        (
            unknown(
                post(
                    b"/t",
                    b"Transfer-Encoding: chunked",
                    body=b"3\r\nabc\r\n0\r\nContent-Length: 50\r\n\r\n",
                )
            ),
        ),
    ),
    # Expect, absolute-form, GET and HEAD with bodies, and two messages in one write.
    (
        "expect-100-continue",
        (
            meant(
                post(b"/e", b"Expect: 100-continue", b"Content-Length: 3", body=b"abc"),
                "POST",
                "/e",
                b"abc",
            ),
        ),
    ),
    (
        "absolute-form",
        (meant(b"GET http://b.example/x?y HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/x?y"),),
    ),
    (
        "get-with-a-body",
        (
            meant(
                post(b"/g", b"Content-Length: 3", body=b"abc", method=b"GET"), "GET", "/g", b"abc"
            ),
        ),
    ),
    (
        "head-with-a-body",
        (
            meant(
                post(b"/h", b"Content-Length: 3", body=b"abc", method=b"HEAD"), "HEAD", "/h", b"abc"
            ),
        ),
    ),
    (
        "two-in-one-write",
        (
            meant(post(b"/1", b"Content-Length: 5", body=b"abcde"), "POST", "/1", b"abcde"),
            meant(SMUGGLED, "GET", "/smuggled"),
        ),
    ),
    ("http-0.9", (unknown(b"GET /\r\n\r\n"),)),
    ("extra-space-in-request-line", (unknown(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),)),
]


def _corpus() -> list[tuple[str, Case]]:
    seeds = [(f"corpus-refused-{name}", Case((unknown(data),))) for name, data, _ in REFUSED]
    for name, data, body, _framing in ACCEPTED:
        message = unknown(data) if body is None else meant(data, "POST", "/target", body)
        seeds.append((f"corpus-accepted-{name}", Case((message,))))
    return seeds


SEEDS: list[tuple[str, Case]] = [
    *_corpus(),
    *((name, Case(messages)) for name, messages in _CLASSES),
]

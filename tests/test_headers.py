"""Table and property tests for ``proxy.wire.headers``: what crosses the proxy, in which order."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.wire.headers import (
    RawHeaders,
    downstream_response_fields,
    expects_continue,
    framing_field,
    request_id_from,
    request_target,
    upstream_request_fields,
)

Fields = list[tuple[str, str]]

CLIENT_IP = "192.0.2.7"
REQUEST_ID = "proxy-chosen-id"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")

# RFC 9110 §7.6.1 (Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding, Upgrade) and
# the fields addressed to the proxy itself (Trailer, Proxy-Authenticate, Proxy-Authorization).
# Spelled out here rather than imported, so that shrinking the module's list fails a test.
HOP_BY_HOP = (
    "Connection",
    "Proxy-Connection",
    "Keep-Alive",
    "TE",
    "Transfer-Encoding",
    "Upgrade",
    "Trailer",
    "Proxy-Authenticate",
    "Proxy-Authorization",
)
# The fields the proxy writes itself on the way upstream, whatever the client sent.
PROXY_ADDED = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"}
)
# The fields the proxy never forwards as the client sent them.
PROXY_OWNED = PROXY_ADDED | {"expect"}


def raw(fields: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Fields as aiohttp hands them over: ``raw_headers``, bytes in wire order."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in fields]


def upstream_request_headers(
    raw: RawHeaders, *, client_ip: str | None, request_id: str, scheme: str = "http"
) -> CIMultiDict[str]:
    """``upstream_request_fields`` as a multi-dict, to look fields up by name."""
    return CIMultiDict(
        upstream_request_fields(raw, client_ip=client_ip, request_id=request_id, scheme=scheme)
    )


def downstream_response_headers(raw: RawHeaders) -> CIMultiDict[str]:
    """``downstream_response_fields`` as a multi-dict, to look fields up by name."""
    return CIMultiDict(downstream_response_fields(raw))


def upstream(
    fields: Sequence[tuple[str, str]],
    *,
    client_ip: str | None = CLIENT_IP,
    scheme: str = "http",
) -> CIMultiDict[str]:
    return upstream_request_headers(
        raw(fields), client_ip=client_ip, request_id=REQUEST_ID, scheme=scheme
    )


def forwarded_upstream(fields: Sequence[tuple[str, str]]) -> Fields:
    """The client's fields that reach the upstream, without the ones the proxy adds."""
    headers = upstream(fields)
    return [(name, value) for name, value in headers.items() if name.lower() not in PROXY_ADDED]


def forwarded_downstream(fields: Sequence[tuple[str, str]]) -> Fields:
    return list(downstream_response_headers(raw(fields)).items())


DIRECTIONS = [
    pytest.param(forwarded_upstream, id="request"),
    pytest.param(forwarded_downstream, id="response"),
]
Direction = Callable[[Sequence[tuple[str, str]]], Fields]


def spellings(name: str) -> list[str]:
    return list(dict.fromkeys([name, name.lower(), name.upper()]))


# --- hop-by-hop fields ---------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize(
    "name",
    [pytest.param(spelling, id=spelling) for name in HOP_BY_HOP for spelling in spellings(name)],
)
def test_hop_by_hop_field_is_not_forwarded_in_either_direction(
    direction: Direction, name: str
) -> None:
    fields = [("Accept", "*/*"), (name, "anything"), ("X-After", "1")]

    assert direction(fields) == [("Accept", "*/*"), ("X-After", "1")]


# RFC 9110 §7.6.1: every field a Connection header nominates is meant for this hop only.
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            [("Connection", "X-Hop"), ("X-Hop", "1"), ("X-Kept", "2")],
            [("X-Kept", "2")],
            id="one-nominated-field",
        ),
        pytest.param(
            [("X-Hop", "1"), ("Connection", "X-Hop"), ("X-Kept", "2")],
            [("X-Kept", "2")],
            id="nominated-field-before-the-connection-header",
        ),
        pytest.param(
            [("Connection", "X-One, X-Two"), ("X-One", "1"), ("X-Two", "2"), ("X-Kept", "3")],
            [("X-Kept", "3")],
            id="several-values-in-one-connection-header",
        ),
        pytest.param(
            [("Connection", "X-One"), ("X-One", "1"), ("Connection", "X-Two"), ("X-Two", "2")],
            [],
            id="several-connection-headers",
        ),
        pytest.param(
            [("Connection", " ,x-one ,,  X-TWO\t, "), ("X-One", "1"), ("x-two", "2"), ("A", "3")],
            [("A", "3")],
            id="odd-spacing-empty-elements-and-any-case",
        ),
        pytest.param(
            [("Connection", "X-Hop"), ("X-Hop", "1"), ("x-hop", "2"), ("X-Kept", "3")],
            [("X-Kept", "3")],
            id="every-repeat-of-a-nominated-field",
        ),
        pytest.param(
            [("Connection", "keep-alive, close"), ("X-Kept", "1")],
            [("X-Kept", "1")],
            id="ordinary-connection-options-remove-nothing-else",
        ),
        pytest.param(
            [("Connection", "Cache-Control"), ("Cache-Control", "no-cache")],
            [],
            id="even-a-field-meant-for-every-recipient",
        ),
    ],
)
def test_fields_nominated_by_connection_are_not_forwarded(
    direction: Direction, fields: Fields, expected: Fields
) -> None:
    assert direction(fields) == expected


# golang/go#50580: stripping must happen before the proxy adds its own fields, or a client's
# `Connection: X-Forwarded-For` deletes the X-Forwarded-For the proxy added.
@pytest.mark.parametrize(
    ("nominated", "expected"),
    [
        pytest.param("X-Forwarded-For", CLIENT_IP, id="x-forwarded-for"),
        pytest.param("X-Forwarded-Proto", "http", id="x-forwarded-proto"),
        pytest.param("X-Forwarded-Host", "app.example", id="x-forwarded-host"),
        pytest.param("X-Request-ID", REQUEST_ID, id="x-request-id"),
    ],
)
def test_client_cannot_nominate_away_a_field_the_proxy_adds(nominated: str, expected: str) -> None:
    headers = upstream(
        [("Host", "app.example"), ("Connection", nominated), (nominated, "from-the-client")]
    )

    assert headers.getall(nominated) == [expected]


# --- end-to-end fields: order and repeats --------------------------------------------------------


def test_response_fields_keep_their_order_and_repeats() -> None:
    fields = [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1; Path=/"),
        ("Vary", "Accept"),
        ("Set-Cookie", "b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT"),
        ("Vary", "Origin"),
    ]

    headers = downstream_response_headers(raw(fields))

    assert list(headers.items()) == fields
    # RFC 6265 §3: two cookies stay two fields; joined, the Expires comma would split them wrongly.
    assert headers.getall("Set-Cookie") == [
        "a=1; Path=/",
        "b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT",
    ]


def test_request_fields_keep_their_order_and_repeats() -> None:
    fields = [
        ("Host", "app.example"),
        ("Accept", "text/html"),
        ("Cookie", "a=1"),
        ("X-Custom", "x"),
        ("Accept", "application/json"),
        ("Cookie", "b=2"),
    ]

    assert forwarded_upstream(fields) == fields


def test_field_names_keep_the_case_they_were_sent_in() -> None:
    fields = [("x-lower", "1"), ("X-UPPER", "2"), ("X-Mixed-Case", "3")]

    assert forwarded_downstream(fields) == fields
    assert forwarded_upstream(fields) == fields


# --- forwarding fields ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "client_ip", "expected"),
    [
        pytest.param([], CLIENT_IP, [CLIENT_IP], id="added-when-absent"),
        pytest.param(
            [("X-Forwarded-For", "203.0.113.1")],
            CLIENT_IP,
            [f"203.0.113.1, {CLIENT_IP}"],
            id="appended-to-one-address",
        ),
        pytest.param(
            [("X-Forwarded-For", "203.0.113.1, 198.51.100.2")],
            CLIENT_IP,
            [f"203.0.113.1, 198.51.100.2, {CLIENT_IP}"],
            id="appended-to-a-list",
        ),
        pytest.param(
            [("X-Forwarded-For", "203.0.113.1"), ("x-forwarded-for", "198.51.100.2")],
            CLIENT_IP,
            [f"203.0.113.1, 198.51.100.2, {CLIENT_IP}"],
            id="several-fields-merged-in-order",
        ),
        pytest.param(
            [("X-Forwarded-For", "203.0.113.1")], "::1", ["203.0.113.1, ::1"], id="ipv6-client"
        ),
        pytest.param(
            [("X-Forwarded-For", "203.0.113.1"), ("X-Forwarded-For", "198.51.100.2")],
            None,
            ["203.0.113.1", "198.51.100.2"],
            id="left-alone-when-the-client-address-is-unknown",
        ),
    ],
)
def test_x_forwarded_for_is_appended_to(
    fields: Fields, client_ip: str | None, expected: list[str]
) -> None:
    headers = upstream([("Host", "app.example"), *fields], client_ip=client_ip)

    assert headers.getall("X-Forwarded-For") == expected


@pytest.mark.parametrize(
    ("fields", "scheme", "expected_proto", "expected_host"),
    [
        pytest.param(
            [("Host", "app.example")], "http", ["http"], ["app.example"], id="added-when-absent"
        ),
        pytest.param(
            [
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "evil.example"),
                ("Host", "app.example:8443"),
                ("X-Forwarded-Proto", "gopher"),
            ],
            "http",
            ["http"],
            ["app.example:8443"],
            id="client-values-replaced",
        ),
        pytest.param([("Host", "app.example")], "https", ["https"], ["app.example"], id="https"),
        pytest.param(
            [("X-Forwarded-Host", "evil.example")],
            "http",
            ["http"],
            [],
            id="no-host-means-no-forwarded-host",
        ),
    ],
)
def test_x_forwarded_proto_and_host_describe_this_hop_only(
    fields: Fields, scheme: str, expected_proto: list[str], expected_host: list[str]
) -> None:
    headers = upstream(fields, scheme=scheme)

    assert headers.getall("X-Forwarded-Proto") == expected_proto
    assert headers.getall("X-Forwarded-Host", []) == expected_host


def test_host_is_forwarded_as_the_client_sent_it() -> None:
    headers = upstream([("Host", "App.Example:8443"), ("Accept", "*/*")])

    assert headers.getall("Host") == ["App.Example:8443"]
    assert next(iter(headers.items())) == ("Host", "App.Example:8443")


# RFC 9110 §10.1.1: the proxy answers Expect itself (it sends 100 Continue when it starts reading
# the body), so the upstream must not see the expectation again.
@pytest.mark.parametrize("name", spellings("Expect"))
def test_expect_is_not_forwarded(name: str) -> None:
    assert forwarded_upstream([(name, "100-continue"), ("X-Kept", "1")]) == [("X-Kept", "1")]


# --- X-Request-ID --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param([("X-Request-ID", "abc")], "abc", id="short"),
        pytest.param([("X-Request-ID", "a" * 128)], "a" * 128, id="128-characters"),
        pytest.param(
            [("X-Request-ID", "req-1.2_3:4@5/6+7=8")], "req-1.2_3:4@5/6+7=8", id="punctuation"
        ),
        pytest.param([("x-request-id", "lower")], "lower", id="name-in-any-case"),
        pytest.param([("X-Request-ID", "  padded  ")], "padded", id="surrounding-spaces-trimmed"),
        pytest.param(
            [("X-Request-ID", "first"), ("X-Request-ID", "second")], "first", id="first-field-wins"
        ),
    ],
)
def test_valid_client_request_id_is_kept(fields: Fields, expected: str) -> None:
    assert request_id_from(raw(fields)) == expected


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param([], id="absent"),
        pytest.param([("X-Request-ID", "")], id="empty"),
        pytest.param([("X-Request-ID", "a" * 129)], id="too-long"),
        pytest.param([("X-Request-ID", "has space")], id="space"),
        pytest.param([("X-Request-ID", "tab\there")], id="tab"),
        pytest.param([("X-Request-ID", "bell\x07")], id="control-character"),
        pytest.param([("X-Request-ID", "del\x7f")], id="delete-character"),
        pytest.param([("X-Request-ID", "caf\xe9")], id="non-ascii"),
        pytest.param([("X-Request-ID", "a\nb")], id="newline-for-log-injection"),
        pytest.param([("X-Request-ID", "<script>")], id="markup"),
        pytest.param(
            [("X-Request-ID", "bad id"), ("X-Request-ID", "good")], id="first-field-is-invalid"
        ),
    ],
)
def test_missing_or_invalid_request_id_is_replaced_by_a_generated_one(fields: Fields) -> None:
    generated = request_id_from(raw(fields))

    assert GENERATED_ID.fullmatch(generated)


def test_generated_request_ids_differ() -> None:
    assert request_id_from([]) != request_id_from([])


def test_upstream_gets_exactly_the_request_id_the_proxy_chose() -> None:
    headers = upstream([("X-Request-ID", "from-the-client"), ("x-request-id", "another")])

    assert headers.getall("X-Request-ID") == [REQUEST_ID]


# --- Expect --------------------------------------------------------------------------------------


# RFC 9110 §10.1.1: 100-continue (case-insensitive) is the only expectation; anything else → 417.
# RFC 9110 §5.6.1.2: Expect is a list, and a recipient ignores its empty elements.
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([], None, id="absent"),
        pytest.param([""], None, id="empty-field-expects-nothing"),
        pytest.param([" , "], None, id="only-empty-elements"),
        pytest.param(["100-continue"], True, id="100-continue"),
        pytest.param(["100-Continue"], True, id="any-case"),
        pytest.param([" 100-continue "], True, id="spaces"),
        pytest.param(["100-continue,"], True, id="trailing-empty-element"),
        pytest.param(["100-continue", "100-continue"], True, id="repeated"),
        pytest.param(["100-continue, 100-continue"], True, id="repeated-in-one-field"),
        pytest.param(["102-processing"], False, id="unknown-expectation"),
        pytest.param(["100-continue", "x-other"], False, id="unknown-in-a-second-field"),
        pytest.param(["100-continue, x-other"], False, id="unknown-in-the-same-field"),
        pytest.param(["100-continue=1"], False, id="with-a-value"),
        pytest.param(["100"], False, id="status-code-only"),
    ],
)
def test_expects_continue(values: list[str], expected: bool | None) -> None:
    assert expects_continue(values) is expected


# --- properties over arbitrary header lists ------------------------------------------------------

# RFC 9110 §5.6.2: a field name is a token.
FIELD_NAME_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
COMMON_NAMES = (
    *HOP_BY_HOP,
    "Host",
    "Accept",
    "Set-Cookie",
    "Cache-Control",
    "Expect",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "X-Request-ID",
    "X-Custom",
)

field_names = st.one_of(
    st.sampled_from(COMMON_NAMES), st.text(FIELD_NAME_CHARS, min_size=1, max_size=8)
).flatmap(lambda name: st.sampled_from(spellings(name)))
field_values = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=16)
list_whitespace = st.sampled_from(["", " ", "  ", "\t"])
connection_values = st.lists(
    st.tuples(list_whitespace, st.one_of(field_names, st.just("")), list_whitespace), max_size=4
).map(lambda members: ",".join(before + name + after for before, name, after in members))
header_lists = st.lists(
    st.one_of(
        st.tuples(field_names, field_values),
        st.tuples(st.sampled_from(spellings("Connection")), connection_values),
    ),
    max_size=12,
)


def nominated(fields: Fields) -> set[str]:
    """What ``Connection`` removes: every member but Host, which identifies the target."""
    return {
        member.strip().lower()
        for name, value in fields
        if name.lower() == "connection"
        for member in value.split(",")
    } - {"host"}


def assert_forwarded_faithfully(fields: Fields, forwarded: Fields, owned: frozenset[str]) -> None:
    """No hop-by-hop or nominated field is forwarded; the rest is, in order, repeats kept."""
    hop_by_hop = {name.lower() for name in HOP_BY_HOP} | nominated(fields)
    forwarded_names = {name.lower() for name, _ in forwarded}
    assert not forwarded_names & hop_by_hop
    assert not forwarded_names & owned
    assert forwarded == [(name, value) for name, value in fields if name.lower() in forwarded_names]
    end_to_end = {name.lower() for name, _ in fields} - hop_by_hop - owned
    assert forwarded_names == end_to_end


@given(header_lists)
def test_response_forwards_exactly_the_end_to_end_fields_in_order(fields: Fields) -> None:
    assert_forwarded_faithfully(fields, forwarded_downstream(fields), frozenset())


@given(header_lists)
def test_request_forwards_exactly_the_end_to_end_fields_in_order(fields: Fields) -> None:
    headers = upstream(fields)
    forwarded = [
        (name, value) for name, value in headers.items() if name.lower() not in PROXY_OWNED
    ]

    assert_forwarded_faithfully(fields, forwarded, PROXY_OWNED)
    # Whatever the client nominated, the proxy's own fields are there, once each.
    assert headers.getall("X-Request-ID") == [REQUEST_ID]
    assert headers.getall("X-Forwarded-Proto") == ["http"]
    [forwarded_for] = headers.getall("X-Forwarded-For")
    assert forwarded_for.endswith(CLIENT_IP)


def test_connection_cannot_nominate_away_the_host() -> None:
    headers = upstream_request_headers(
        [(b"Host", b"app.example"), (b"Connection", b"Host")],
        client_ip="127.0.0.1",
        request_id="r",
    )
    assert headers.getall("Host") == ["app.example"]
    assert headers.getall("X-Forwarded-Host") == ["app.example"]


def test_empty_forwarded_for_elements_are_not_passed_on() -> None:
    headers = upstream_request_headers(
        [(b"Host", b"h"), (b"X-Forwarded-For", b""), (b"X-Forwarded-For", b" , 10.0.0.1,")],
        client_ip="127.0.0.1",
        request_id="r",
    )
    assert headers.getall("X-Forwarded-For") == ["10.0.0.1, 127.0.0.1"]


def test_a_default_host_is_sent_first_only_to_stand_in_for_a_missing_one() -> None:
    without = upstream_request_fields(
        raw([("Accept", "*/*")]), client_ip=None, request_id=REQUEST_ID, default_host="up:8000"
    )
    with_host = upstream_request_fields(
        raw([("Accept", "*/*"), ("Host", "app.example")]),
        client_ip=None,
        request_id=REQUEST_ID,
        default_host="up:8000",
    )

    assert without[0] == ("Host", "up:8000")
    # X-Forwarded-Host names what the client asked for; a stand-in is not that.
    assert "X-Forwarded-Host" not in dict(without)
    assert [value for name, value in with_host if name == "Host"] == ["app.example"]
    assert dict(with_host)["X-Forwarded-Host"] == "app.example"


FRAMING_NOMINATIONS = ["Content-Length", "content-length", "Transfer-Encoding", "keep-alive"]


@given(
    st.lists(
        st.sampled_from(
            [
                ("Content-Length", "5"),
                ("Content-Length", "05"),
                ("Transfer-Encoding", "chunked"),
                ("X-A", "1"),
                ("Host", "a"),
            ]
        ),
        max_size=6,
    ),
    st.lists(st.sampled_from(FRAMING_NOMINATIONS), max_size=3),
)
def test_framing_fields_never_come_from_the_field_list_in_either_direction(
    fields: Fields, nominated: list[str]
) -> None:
    if nominated:
        fields = [*fields, ("Connection", ", ".join(nominated))]
    for forwarded in (
        upstream_request_fields(raw(fields), client_ip=CLIENT_IP, request_id=REQUEST_ID),
        downstream_response_fields(raw(fields)),
    ):
        names = {name.lower() for name, _ in forwarded}
        assert names.isdisjoint({"content-length", "transfer-encoding", "connection"})


@pytest.mark.parametrize(
    ("length", "has_body", "line"),
    [
        pytest.param(None, False, None, id="no-body-no-length"),
        pytest.param(0, False, "Content-Length: 0", id="declared-empty"),
        pytest.param(10, True, "Content-Length: 10", id="known-length"),
        pytest.param(None, True, "Transfer-Encoding: chunked", id="unknown-length"),
    ],
)
def test_the_framing_line_comes_from_the_parsed_length(
    length: int | None, has_body: bool, line: str | None
) -> None:
    assert framing_field(length, has_body=has_body) == line


@pytest.mark.parametrize(
    ("raw_target", "origin", "authority", "well_formed"),
    [
        pytest.param("/a%2Fb?x", "/a%2Fb?x", None, True, id="origin-form-byte-for-byte"),
        pytest.param("http://b/x?y", "/x?y", "b", True, id="absolute-form"),
        pytest.param("HTTPS://b:8443", "/", "b:8443", True, id="absolute-form-no-path"),
        pytest.param("http://b?q", "/?q", "b", True, id="absolute-form-query-only"),
        pytest.param("ftp://b/x", "ftp://b/x", None, False, id="other-scheme"),
        pytest.param("http://b/x#f", "http://b/x#f", None, False, id="fragment"),
        pytest.param("b/x", "b/x", None, False, id="neither-form"),
    ],
)
def test_a_request_target_is_forwarded_in_origin_form(
    raw_target: str, origin: str, authority: str | None, well_formed: bool
) -> None:
    target = request_target(raw_target)
    assert (target.origin, target.authority, target.well_formed) == (
        origin,
        authority,
        well_formed,
    )


def test_an_absolute_form_authority_replaces_host_and_comes_first() -> None:
    fields = upstream_request_fields(
        raw([("X-A", "1"), ("Host", "a"), ("Connection", "Host")]),
        client_ip=CLIENT_IP,
        request_id=REQUEST_ID,
        authority="b.example",
    )
    assert fields[0] == ("Host", "b.example")
    assert [value for name, value in fields if name.lower() == "host"] == ["b.example"]
    assert ("X-Forwarded-Host", "b.example") in fields

"""Table tests for ``proxy.policy.methods``: which methods are cancelled when their client hangs
up."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.policy.methods import DEFAULT_CANCEL_METHODS, CancelPolicy, parse_cancel_methods

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def test_default_policy_cancels_exactly_the_safe_methods() -> None:
    # RFC 9110 §9.2.1: abandoning a safe method loses nothing on the origin.
    assert DEFAULT_CANCEL_METHODS == SAFE_METHODS
    assert CancelPolicy().methods == SAFE_METHODS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("GET,HEAD,OPTIONS,TRACE", SAFE_METHODS, id="the-default"),
        pytest.param("*", None, id="star-means-every-method"),
        pytest.param("  *  ", None, id="star-with-spaces"),
        pytest.param("GET", frozenset({"GET"}), id="one-method"),
        pytest.param("GET,HEAD", frozenset({"GET", "HEAD"}), id="two-methods"),
        pytest.param("get,Post", frozenset({"GET", "POST"}), id="lower-case-normalised"),
        pytest.param(" get , Head ", frozenset({"GET", "HEAD"}), id="spaces-and-case"),
        pytest.param(" GET , HEAD ", frozenset({"GET", "HEAD"}), id="spaces-around-methods"),
        pytest.param("GET,,HEAD,", frozenset({"GET", "HEAD"}), id="empty-elements-ignored"),
        pytest.param("GET,GET", frozenset({"GET"}), id="repeats-collapse"),
        pytest.param("PURGE,M-SEARCH", frozenset({"PURGE", "M-SEARCH"}), id="extension-methods"),
        pytest.param("", frozenset(), id="empty-never-cancels"),
        pytest.param("  ", frozenset(), id="blank-never-cancels"),
        pytest.param(",", frozenset(), id="only-commas-never-cancels"),
    ],
)
def test_parse_cancel_methods(text: str, expected: frozenset[str] | None) -> None:
    assert parse_cancel_methods(text).methods == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("GET,*", "'*' must stand alone", id="star-inside-a-list"),
        pytest.param("*,", "'*' must stand alone", id="star-with-a-trailing-comma"),
        pytest.param("GET HEAD", "'GET HEAD' is not an HTTP method token", id="space-separated"),
        pytest.param("GET;HEAD", "'GET;HEAD' is not an HTTP method token", id="semicolon"),
        pytest.param("GET,PO(ST", "'PO(ST' is not an HTTP method token", id="separator-char"),
        pytest.param("G\u00c9T", "is not an HTTP method token", id="non-ascii"),
        pytest.param("GET\x00", "is not an HTTP method token", id="control-character"),
    ],
)
def test_parse_cancel_methods_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_cancel_methods(text)


DEFAULT = CancelPolicy()
EVERY = CancelPolicy(None)
NEVER = CancelPolicy(frozenset())
WRITES = CancelPolicy(frozenset({"POST", "PUT"}))


@pytest.mark.parametrize(
    ("policy", "method", "expected"),
    [
        pytest.param(DEFAULT, "GET", True, id="default-GET"),
        pytest.param(DEFAULT, "HEAD", True, id="default-HEAD"),
        pytest.param(DEFAULT, "OPTIONS", True, id="default-OPTIONS"),
        pytest.param(DEFAULT, "TRACE", True, id="default-TRACE"),
        pytest.param(DEFAULT, "POST", False, id="default-POST"),
        pytest.param(DEFAULT, "PUT", False, id="default-PUT"),
        pytest.param(DEFAULT, "PATCH", False, id="default-PATCH"),
        pytest.param(DEFAULT, "DELETE", False, id="default-DELETE"),
        pytest.param(DEFAULT, "CONNECT", False, id="default-CONNECT"),
        # RFC 9110 §9.1: methods are case-sensitive; `get` is not GET on the wire.
        pytest.param(DEFAULT, "get", False, id="default-lower-case-get"),
        pytest.param(EVERY, "POST", True, id="star-POST"),
        pytest.param(EVERY, "PURGE", True, id="star-extension-method"),
        pytest.param(NEVER, "GET", False, id="empty-GET"),
        pytest.param(NEVER, "POST", False, id="empty-POST"),
        pytest.param(WRITES, "POST", True, id="writes-POST"),
        pytest.param(WRITES, "GET", False, id="writes-GET"),
    ],
)
def test_should_cancel(policy: CancelPolicy, method: str, expected: bool) -> None:
    assert policy.should_cancel(method) is expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(DEFAULT, "GET,HEAD,OPTIONS,TRACE", id="default"),
        pytest.param(EVERY, "*", id="every"),
        pytest.param(NEVER, "", id="never"),
        pytest.param(WRITES, "POST,PUT", id="sorted"),
    ],
)
def test_describe(policy: CancelPolicy, expected: str) -> None:
    assert policy.describe() == expected


@pytest.mark.parametrize(
    ("policy", "names"),
    [
        pytest.param(DEFAULT, SAFE_METHODS, id="default"),
        pytest.param(EVERY, frozenset({"*"}), id="star-for-every-method"),
        pytest.param(NEVER, frozenset(), id="never"),
        pytest.param(WRITES, frozenset({"POST", "PUT"}), id="a-list"),
    ],
)
def test_a_policy_as_a_set_of_names_and_back(policy: CancelPolicy, names: frozenset[str]) -> None:
    # The demo backend's form (demo_backend.cancel_methods): one set, `*` standing for all.
    assert policy.names == names
    assert CancelPolicy.from_names(names) == policy


# RFC 9110 §5.6.2: a method is a token; a lone `*` means "every method" instead.
method_tokens = st.text(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    min_size=1,
    max_size=10,
).filter(lambda method: method != "*")


@given(st.lists(method_tokens, max_size=6))
def test_a_described_policy_parses_back_to_itself(methods: list[str]) -> None:
    policy = parse_cancel_methods(",".join(methods))

    assert policy.methods == frozenset(method.upper() for method in methods)
    assert parse_cancel_methods(policy.describe()) == policy

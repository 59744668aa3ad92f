"""The backend's cancel policy: parsing ``HANGUP_CANCEL_METHODS`` and deciding per method."""

from __future__ import annotations

import pytest

from demo_backend.cancel_methods import (
    DEFAULT_CANCEL_METHODS,
    ENV_VAR,
    cancel_methods_from_env,
    describe,
    parse_cancel_methods,
    should_cancel,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("GET", {"GET"}, id="one"),
        pytest.param("GET,HEAD", {"GET", "HEAD"}, id="two"),
        pytest.param(" get , Head ", {"GET", "HEAD"}, id="spaces-and-case"),
        pytest.param("GET,,HEAD,", {"GET", "HEAD"}, id="blank-items-skipped"),
        pytest.param("*", {"*"}, id="all"),
        pytest.param(" * ", {"*"}, id="all-with-spaces"),
        pytest.param("", set(), id="empty-means-never"),
        pytest.param("PURGE", {"PURGE"}, id="unregistered-token"),
    ],
)
def test_cancel_methods_parse_like_the_proxy(text: str, expected: set[str]) -> None:
    assert parse_cancel_methods(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("GET,*", id="star-in-a-list"),
        pytest.param("GET HEAD", id="space-inside-a-name"),
        pytest.param("GET;HEAD", id="wrong-separator"),
        pytest.param("G\u00c9T", id="non-token-character"),
    ],
)
def test_invalid_cancel_methods_are_rejected_with_the_offending_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"method|alone"):
        parse_cancel_methods(text)


@pytest.mark.parametrize(
    ("method", "methods", "expected"),
    [
        pytest.param("GET", DEFAULT_CANCEL_METHODS, True, id="get-by-default"),
        pytest.param("HEAD", DEFAULT_CANCEL_METHODS, True, id="head-by-default"),
        pytest.param("POST", DEFAULT_CANCEL_METHODS, False, id="post-runs-to-completion"),
        pytest.param("DELETE", DEFAULT_CANCEL_METHODS, False, id="delete-runs-to-completion"),
        pytest.param("POST", frozenset({"*"}), True, id="star-cancels-post"),
        pytest.param("PURGE", frozenset({"*"}), True, id="star-cancels-anything"),
        pytest.param("GET", frozenset(), False, id="empty-cancels-nothing"),
        pytest.param("get", DEFAULT_CANCEL_METHODS, False, id="wire-methods-are-case-sensitive"),
    ],
)
def test_should_cancel_follows_the_method_policy(
    method: str, methods: frozenset[str], expected: bool
) -> None:
    assert should_cancel(method, methods) is expected


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, DEFAULT_CANCEL_METHODS, id="unset-means-default"),
        pytest.param({ENV_VAR: "GET,POST"}, {"GET", "POST"}, id="list"),
        pytest.param({ENV_VAR: "*"}, {"*"}, id="all"),
        pytest.param({ENV_VAR: ""}, set(), id="set-but-empty-means-never"),
    ],
)
def test_cancel_methods_come_from_the_environment(
    environ: dict[str, str], expected: set[str]
) -> None:
    assert cancel_methods_from_env(environ) == expected


def test_policy_is_described_as_an_operator_writes_it() -> None:
    assert describe(DEFAULT_CANCEL_METHODS) == "GET,HEAD,OPTIONS,TRACE"
    assert describe(frozenset({"*"})) == "*"


def test_invalid_environment_value_is_reported_under_the_variable_name() -> None:
    with pytest.raises(ValueError, match=f"^{ENV_VAR}: 'GET;POST' is not an HTTP method token"):
        cancel_methods_from_env({ENV_VAR: "GET;POST"})

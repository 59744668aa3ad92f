"""The backend's cancel policy from ``HANGUP_CANCEL_METHODS``; its parser and rule are the proxy's
(``proxy.policy.methods``, tested in ``tests/test_policy.py``)."""

from __future__ import annotations

import pytest

from demo_backend.cancel_methods import DEFAULT_CANCEL_METHODS, ENV_VAR, cancel_methods_from_env


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, DEFAULT_CANCEL_METHODS, id="unset-means-default"),
        pytest.param({ENV_VAR: "GET,POST"}, {"GET", "POST"}, id="list"),
        pytest.param({ENV_VAR: " get , Head "}, {"GET", "HEAD"}, id="spaces-and-case"),
        pytest.param({ENV_VAR: "*"}, {"*"}, id="all"),
        pytest.param({ENV_VAR: ""}, set(), id="set-but-empty-means-never"),
    ],
)
def test_cancel_methods_come_from_the_environment(
    environ: dict[str, str], expected: set[str]
) -> None:
    assert cancel_methods_from_env(environ) == expected


def test_unset_means_the_proxys_default_the_safe_methods() -> None:
    assert cancel_methods_from_env({}) == {"GET", "HEAD", "OPTIONS", "TRACE"}


def test_invalid_environment_value_is_reported_under_the_variable_name() -> None:
    with pytest.raises(ValueError, match=f"^{ENV_VAR}: 'GET;POST' is not an HTTP method token"):
        cancel_methods_from_env({ENV_VAR: "GET;POST"})

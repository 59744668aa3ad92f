"""Which request methods are cancelled when the client hangs up: a small pure policy.

The same rule as the proxy's: by default only methods that RFC 9110 §9.2.1 calls *safe* and that
carry no request content worth finishing (GET, HEAD, OPTIONS, TRACE) are cancelled; a write (POST,
PUT, PATCH, DELETE, ...) runs to completion because stopping it half-way can leave the backend's
state half-changed. ``*`` opts every method in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from demo_backend.environment import from_env
from proxy.policy import methods as proxy_policy
from proxy.policy.decision_header import TRUST_VAR
from proxy.settings.config import parse_bool

ENV_VAR = "HANGUP_CANCEL_METHODS"
ALL_METHODS = proxy_policy.ALL_METHODS
DEFAULT_CANCEL_METHODS: frozenset[str] = proxy_policy.DEFAULT_CANCEL_METHODS


def parse_cancel_methods(text: str) -> frozenset[str]:
    """``"GET,HEAD"`` -> ``{"GET", "HEAD"}``; ``"*"`` -> ``{"*"}`` (every method); ``""`` -> none.

    Both halves of hangup read ``HANGUP_CANCEL_METHODS``, so the parsing is the proxy's own
    (``proxy.policy.methods``): names upper-cased, blanks between commas skipped, empty means never.
    """
    policy = proxy_policy.parse_cancel_methods(text)
    return frozenset({ALL_METHODS}) if policy.methods is None else policy.methods


def cancel_methods_from_env(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """The methods named by ``HANGUP_CANCEL_METHODS`` when it is set, else the default."""
    return from_env(environ, ENV_VAR, parse_cancel_methods, DEFAULT_CANCEL_METHODS)


def trust_decision_header_from_env(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``HANGUP_TRUST_DECISION_HEADER`` says to follow the proxy's ``Hangup-Decision``.

    Off by default: only a backend that nothing but hangup can reach may trust it
    (``proxy.policy.decision_header``).
    """
    return from_env(environ, TRUST_VAR, parse_bool, False)


def should_cancel(method: str, cancel_methods: frozenset[str]) -> bool:
    """Whether a request with ``method`` is cancelled when its client hangs up."""
    return ALL_METHODS in cancel_methods or method in cancel_methods


def describe(cancel_methods: frozenset[str]) -> str:
    """The policy as an operator writes it, for log lines: ``GET,HEAD,OPTIONS,TRACE`` or ``*``."""
    return ",".join(sorted(cancel_methods))

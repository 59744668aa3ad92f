"""The backend's cancel policy, read from the environment: ``HANGUP_CANCEL_METHODS`` and
``HANGUP_TRUST_DECISION_HEADER``.

The rule and its parser are the proxy's (``proxy.policy.methods``), so both halves of hangup read
the variable alike: by default only methods that RFC 9110 §9.2.1 calls *safe* (GET, HEAD,
OPTIONS, TRACE) are cancelled; a write runs to completion, because stopping it half-way can leave
the backend's state half-changed. ``*`` opts every method in. The backend holds the policy as a
set of names, ``{"*"}`` for every method (``CancelPolicy.names``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from demo_backend.environment import from_env
from proxy.policy.decision_header import TRUST_VAR
from proxy.policy.methods import CancelPolicy, parse_cancel_methods
from proxy.settings.config import parse_bool

ENV_VAR = "HANGUP_CANCEL_METHODS"
DEFAULT_CANCEL_METHODS = CancelPolicy().names
"""What is cancelled while ``HANGUP_CANCEL_METHODS`` is unset: the proxy's default."""


def cancel_methods_from_env(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """The methods named by ``HANGUP_CANCEL_METHODS`` when it is set, else the default."""
    return from_env(environ, ENV_VAR, parse_cancel_methods, CancelPolicy()).names


def trust_decision_header_from_env(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``HANGUP_TRUST_DECISION_HEADER`` says to follow the proxy's ``Hangup-Decision``.

    Off by default: only a backend that nothing but hangup can reach may trust it
    (``proxy.policy.decision_header``).
    """
    return from_env(environ, TRUST_VAR, parse_bool, False)

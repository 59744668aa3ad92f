"""Per-route cancellation rules: what a hang-up does to a request, decided before it is forwarded.

A rule maps a method set and a path (a prefix, or a glob when it holds ``*``, ``?`` or ``[``) to
an action. A prefix matches whole path segments, as Envoy's ``path_separated_prefix`` does:
``/slow`` matches ``/slow`` and ``/slow/...``, never ``/slowly`` or ``/slow-delete-everything``,
so a ``cancel`` rule cannot catch a write endpoint that merely shares its first letters (issue
14). A prefix that ends in ``/`` (``/api/``, ``/``) matches everything under it. The actions:

* ``cancel`` — close the upstream connection the moment the client leaves;
* ``never`` — carry the request to the end and discard the answer;
* ``grace=S`` — give the upstream exchange S seconds to finish after the client left; an answer
  in time is discarded and the connection reused, otherwise the connection is closed then.

Rules are tried in order and the first match wins; a request no rule matches falls to the
default rule, the ``--cancel-methods`` list (with ``--cancel-grace`` applied to its cancellations).
Paths are matched as the client sent them (percent-escapes kept, query string ignored), so a rule
for ``/v1/chat/*`` is written the way clients write the URL. Pure: no I/O but ``load_policy_file``.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.policy.methods import ALL_METHODS, CancelPolicy, parse_cancel_methods

DEFAULT_RULE = "default"
_GLOB_CHARS = frozenset("*?[")


class Action(enum.StrEnum):
    CANCEL = "cancel"
    NEVER = "never"
    GRACE = "grace"


@dataclass(frozen=True, slots=True)
class Decision:
    """What a hang-up does to one request, and which rule said so (for logs and metrics)."""

    action: Action
    grace: float
    rule: str


@dataclass(frozen=True, slots=True)
class Rule:
    methods: frozenset[str] | None
    """Methods this rule applies to; None for every method."""
    path: str
    """A path prefix matched by whole segments (see the module's docstring), or a case-sensitive
    glob when it holds ``*``, ``?`` or ``[``."""
    action: Action
    grace: float = 0.0
    name: str = ""

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if _GLOB_CHARS & set(self.path):
            return fnmatch.fnmatchcase(path, self.path)
        return is_under_prefix(path, self.path)

    def decision(self) -> Decision:
        return Decision(self.action, self.grace, self.name)

    def describe(self) -> str:
        """The rule as ``--cancel-route`` takes it, e.g. ``GET,HEAD /v1/chat/*=grace=2.5``."""
        methods = "" if self.methods is None else ",".join(sorted(self.methods)) + " "
        action = f"grace={self.grace:g}" if self.action is Action.GRACE else str(self.action)
        return f"{methods}{self.path}={action}"


def is_under_prefix(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or lies under it, segment by segment.

    Envoy's ``path_separated_prefix``: the prefix must end where the path does or where a ``/``
    follows. A prefix ending in ``/`` already ends on a boundary. Per request and per rule, so it
    compares in place rather than building ``prefix + "/"``.
    """
    if not path.startswith(prefix):
        return False
    end = len(prefix)
    return end == len(path) or prefix.endswith("/") or path[end] == "/"


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    rules: tuple[Rule, ...] = ()
    default: CancelPolicy = field(default_factory=CancelPolicy)
    default_grace: float = 0.0

    def decide(self, method: str, path: str) -> Decision:
        for rule in self.rules:
            if rule.matches(method, path):
                return rule.decision()
        return self._default_decision(method)

    # Per request when no rule matches (with no rules: every request). Cached, and bounded
    # because a client chooses the method token.
    @functools.lru_cache(maxsize=64)  # noqa: B019 - one policy per process, kept for its life
    def _default_decision(self, method: str) -> Decision:
        if not self.default.should_cancel(method):
            return Decision(Action.NEVER, 0.0, DEFAULT_RULE)
        if self.default_grace > 0:
            return Decision(Action.GRACE, self.default_grace, DEFAULT_RULE)
        return Decision(Action.CANCEL, 0.0, DEFAULT_RULE)


def parse_action(text: str) -> tuple[Action, float]:
    """``cancel``, ``never`` or ``grace=SECONDS``."""
    name, _, value = text.strip().partition("=")
    name = name.strip().lower()
    if name == Action.GRACE:
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"grace needs seconds, as in grace=5, got {text!r}") from None
        if not 0 < seconds < float("inf"):
            raise ValueError(f"grace needs a positive number of seconds, got {text!r}")
        return Action.GRACE, seconds
    if name in (Action.CANCEL, Action.NEVER) and not value:
        return Action(name), 0.0
    raise ValueError(f"expected cancel, never or grace=SECONDS, got {text!r}")


def _methods(text: str) -> frozenset[str] | None:
    if text.strip() == ALL_METHODS:
        return None
    methods = parse_cancel_methods(text).methods
    if not methods:
        raise ValueError("a rule needs at least one method, or '*'")
    return methods


def parse_rule(text: str, name: str) -> Rule:
    """``[METHODS ]PATH=ACTION``, e.g. ``GET,HEAD /v1/chat/*=cancel`` or ``/upload=grace=30``."""
    target, sep, action_text = text.strip().partition("=")
    if not sep:
        raise ValueError(f"expected [METHODS ]PATH=ACTION, got {text!r}")
    parts = target.split()
    if len(parts) == 1:
        methods_text, path = ALL_METHODS, parts[0]
    elif len(parts) == 2:
        methods_text, path = parts
    else:
        raise ValueError(f"expected [METHODS ]PATH=ACTION, got {text!r}")
    if not path.startswith("/"):
        raise ValueError(f"a rule's path must start with '/', got {path!r}")
    action, grace = parse_action(action_text)
    return Rule(_methods(methods_text), path, action, grace, name)


def parse_rules(text: str) -> tuple[Rule, ...]:
    """Rules separated by ``;`` (how repeated flags and the environment variable are joined)."""
    pieces = [piece for piece in text.split(";") if piece.strip()]
    return tuple(parse_rule(piece, f"route-{number}") for number, piece in enumerate(pieces, 1))


def load_policy_file(path: str) -> tuple[Rule, ...]:
    """Rules from a TOML file: an array of ``[[route]]`` tables.

    ```toml
    [[route]]
    methods = ["GET", "HEAD"]   # optional; every method when absent
    path = "/v1/chat/*"
    action = "cancel"           # cancel | never | grace
    grace = 5                   # seconds, with action = "grace"
    ```
    """
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    routes = document.get("route", [])
    if not isinstance(routes, list) or set(document) - {"route"}:
        raise ValueError(f"{path} must hold only [[route]] tables")
    return tuple(
        _rule_from_table(table, f"{path} route {number}", f"file-{number}")
        for number, table in enumerate(routes, 1)
    )


def _rule_from_table(table: Any, where: str, name: str) -> Rule:
    if not isinstance(table, dict) or set(table) - {"methods", "path", "action", "grace"}:
        raise ValueError(f"{where}: expected keys methods, path, action, grace")
    methods = table.get("methods", ALL_METHODS)
    if isinstance(methods, list) and all(isinstance(method, str) for method in methods):
        methods = ",".join(methods)
    path, action = table.get("path"), table.get("action")
    if not isinstance(methods, str) or not isinstance(path, str) or not isinstance(action, str):
        # ValueError, not TypeError: this is the operator's file, reported as a bad value.
        raise ValueError(f"{where}: path and action are strings, methods a list of strings")  # noqa: TRY004
    if "grace" in table:
        action = f"{action}={table['grace']}"
    try:
        return parse_rule(f"{methods} {path}={action}", name)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None

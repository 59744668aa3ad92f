"""Cancellation policy: which requests are abandoned when their client hangs up.

Safe methods (RFC 9110 §9.2.1) change nothing on the origin, so abandoning them loses nothing:
they are cancelled by default. Writes are carried to the end unless the operator opts in, because
a half-done write is worse than a wasted one.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CANCEL_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
ALL_METHODS = "*"

# RFC 9110 §5.6.2: a method is a token; these are the characters a token may hold.
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


@dataclass(frozen=True, slots=True)
class CancelPolicy:
    """Which methods are cancelled on hang-up. ``methods`` is None when every method is."""

    methods: frozenset[str] | None = DEFAULT_CANCEL_METHODS

    @classmethod
    def from_names(cls, names: frozenset[str]) -> CancelPolicy:
        """The policy of a set of method names in which ``*`` stands for every method."""
        return cls(None if ALL_METHODS in names else names)

    @property
    def names(self) -> frozenset[str]:
        """``from_names``' inverse: the methods, or ``{"*"}`` (the demo backend's settings)."""
        return frozenset({ALL_METHODS}) if self.methods is None else self.methods

    def should_cancel(self, method: str) -> bool:
        """True when a hang-up during ``method`` should close the upstream exchange at once."""
        return self.methods is None or method in self.methods

    def describe(self) -> str:
        return ALL_METHODS if self.methods is None else ",".join(sorted(self.methods))


def parse_cancel_methods(text: str) -> CancelPolicy:
    """Parse ``GET,HEAD`` or ``*``; methods are case-sensitive tokens (RFC 9110 §9.1).

    An empty list is allowed and means "never cancel": the proxy then only forwards.
    """
    stripped = text.strip()
    if stripped == ALL_METHODS:
        return CancelPolicy(None)
    methods = [part.strip() for part in stripped.split(",") if part.strip()]
    for method in methods:
        if method == ALL_METHODS:
            raise ValueError("'*' must stand alone, not inside a list of methods")
        if not set(method) <= _TOKEN_CHARS:
            raise ValueError(f"{method!r} is not an HTTP method token")
    # Methods are case-sensitive, but every registered one is upper case; an operator who writes
    # `get` means GET, and nothing else could ever match.
    return CancelPolicy(frozenset(method.upper() for method in methods))

"""The argument parser of both console scripts: a bad flag is one line on stderr and exit 2.

argparse prints the whole usage block before its error; an operator (or a supervisor's log) needs
the one line that matters. ``hangup-proxy`` and ``hangup-demo-backend`` both use this parser, each
with its own ``hint`` after the message.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

USAGE_ERROR = 2
"""The exit status of a bad flag or value, argparse's own."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is ``PROG: error: MESSAGE`` + ``hint``, one line, and exit 2."""

    def __init__(
        self, *, prog: str, description: str, epilog: str | None = None, hint: str = ""
    ) -> None:
        super().__init__(prog=prog, description=description, epilog=epilog)
        self.hint = hint

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}{self.hint}\n")

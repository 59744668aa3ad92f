"""Settings read from the environment: each error names its variable (``from_env``), and a bad
value read at import can only end the process (``value_or_exit``).

``demo_backend.protocol`` reads its policy when uvicorn imports the ``--http`` class, inside
``Config.load``. An exception there reaches the operator as a traceback through uvicorn and
asyncio, with the one line that matters at the bottom. A bad value is the operator's mistake, not
a bug: it is reported as one line on stderr, with uvicorn's own status for a configuration that
cannot start (``STARTUP_FAILURE``, 3, as for an app it cannot import). That status matters under
``uvicorn --workers N``: its supervisor stops on a child that exits with it, and restarts a child
that exits with any other, which for a bad variable would be a restart loop
(uvicorn/supervisors/multiprocess.py, encode/uvicorn discussion #2440). The CLIs report a bad flag
with argparse's status 2 (``proxy.settings.command_line.USAGE_ERROR``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TypeVar

from uvicorn.config import STARTUP_FAILURE

T = TypeVar("T")


def from_env(environ: Mapping[str, str], name: str, parse: Callable[[str], T], default: T) -> T:
    """``parse`` of the variable ``name`` when it is set, else ``default``; errors name it."""
    text = environ.get(name)
    if text is None:
        return default
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def value_or_exit(read: Callable[[], T]) -> T:
    """``read()``; on ``ValueError`` (whose message names the variable), one line and exit 3."""
    try:
        return read()
    except ValueError as exc:
        # SystemExit passes through uvicorn's Config.load and asyncio.run without a traceback.
        sys.stderr.write(f"hangup: {exc}\n")
        raise SystemExit(STARTUP_FAILURE) from None

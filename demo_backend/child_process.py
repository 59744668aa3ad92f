"""A console script run as a child process whose stdout is a stream of JSON log lines.

Used by the walkthrough to start the backend and the proxy, wait for the lines that prove each
step happened, and stop them by PID. Every wait is bounded; a missed expectation raises
``ExpectationError`` saying what was awaited, from whom, and for how long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

LogLine = dict[str, Any]
_Line = TypeVar("_Line", LogLine, str)


class ExpectationError(Exception):
    """Something the walkthrough waited for did not happen within its bound."""


async def spawn_with_log_lines(
    argv: Sequence[str], env: Mapping[str, str]
) -> asyncio.subprocess.Process:
    """Start ``argv`` with stdout and stderr on one pipe and no stdin.

    Unbuffered (``PYTHONUNBUFFERED=1``) unless ``env`` says otherwise, so lines arrive as written.
    """
    return await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env={"PYTHONUNBUFFERED": "1", **env},
    )


class LogLines:
    """A child's output read line by line as it comes: every line as text, JSON objects parsed.

    Shared by the walkthrough (``ChildProcess``) and the tests (``tests.support.ScriptProcess``),
    which differ only in how they report a line that never came.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.lines: list[LogLine] = []
        self.raw_lines: list[str] = []
        self._changed = asyncio.Condition()
        self.pump = asyncio.create_task(self._read_lines(process))

    async def _read_lines(self, process: asyncio.subprocess.Process) -> None:
        if process.stdout is None:  # pragma: no cover - started with stdout=PIPE
            return
        async for raw in process.stdout:
            text = raw.decode(errors="replace").rstrip("\n")
            async with self._changed:
                self.raw_lines.append(text)
                with contextlib.suppress(json.JSONDecodeError):
                    parsed = json.loads(text)
                    if isinstance(parsed, dict):
                        self.lines.append(parsed)
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def first(self, predicate: Callable[[LogLine], bool]) -> LogLine | None:
        """The first JSON line (seen or to come) ``predicate`` accepts; None if output ended."""
        return await self._first(self.lines, predicate)

    async def first_text(self, predicate: Callable[[str], bool]) -> str | None:
        """The first line of text (JSON or not) ``predicate`` accepts; None if output ended."""
        return await self._first(self.raw_lines, predicate)

    async def _first(self, seen: list[_Line], predicate: Callable[[_Line], bool]) -> _Line | None:
        async with self._changed:
            while True:
                for line in seen:
                    if predicate(line):
                        return line
                if self.pump.done():
                    return None
                await self._changed.wait()


class ChildProcess:
    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.output = LogLines(process)

    @classmethod
    async def start(
        cls, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> ChildProcess:
        process = await spawn_with_log_lines(argv, os.environ if env is None else env)
        return cls(name, process)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def lines(self) -> list[LogLine]:
        return self.output.lines

    async def wait_for(
        self,
        what: str,
        predicate: Callable[[LogLine], bool],
        timeout: float,  # noqa: ASYNC109 - the bound is part of the expectation and its message
    ) -> LogLine:
        """The first log line (already seen or still to come) that ``predicate`` accepts."""
        try:
            async with asyncio.timeout(timeout):
                line = await self.output.first(predicate)
        except TimeoutError:
            raise ExpectationError(f"{self.name} did not log {what} within {timeout:g} s") from None
        if line is None:
            code = await self.process.wait()
            raise ExpectationError(f"{self.name} exited (status {code}) before it logged {what}")
        return line

    async def wait_for_event(
        self,
        event: str,
        timeout: float,  # noqa: ASYNC109 - passed on to wait_for
        **fields: Any,
    ) -> LogLine:
        described = " ".join([event, *(f"{key}={value}" for key, value in fields.items())])
        return await self.wait_for(
            described,
            lambda line: (
                line.get("event") == event
                and all(line.get(key) == value for key, value in fields.items())
            ),
            timeout,
        )

    def tail(self, count: int = 8) -> list[str]:
        return self.output.raw_lines[-count:]

    async def stop(self, grace: float) -> int:
        """SIGTERM by PID, then SIGKILL if it has not exited within ``grace`` seconds."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                code = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.output.pump
        return code

"""Reading profiles of hangup: py-spy's collapsed stacks and cProfile's statistics, as markdown.

The two disagree in a way worth knowing: py-spy samples wall-clock time from outside the
process and, on this kind of virtual machine, charges a much larger share to the frames that are
inside a socket ``write`` than cProfile's exact timing (or perf's CPU clock) does. cProfile in
turn slows pure-Python code about twice, so it over-weights Python against system calls. Read the
two side by side; a removal measured with wrk (the ablations in the README) settles a question.
"""

from __future__ import annotations

import pstats
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# Where a leaf frame's file lives → the area it is charged to, first match wins.
AREAS = (
    ("/proxy/", "hangup's own code (proxy/)"),
    ("structlog", "structlog (canonical log line)"),
    ("/logging/", "stdlib logging"),
    ("aiohttp/client", "aiohttp client"),
    ("aiohttp/connector", "aiohttp client"),
    ("aiohttp/web_", "aiohttp server"),
    ("aiohttp/http_", "aiohttp HTTP writer/parser"),
    ("aiohttp/", "aiohttp, other"),
    ("multidict", "multidict"),
    ("yarl", "yarl"),
    ("asyncio/runners.py", "uvloop's C code under the loop (socket reads, callback dispatch)"),
    ("asyncio", "asyncio (tasks, futures, timeouts)"),
    ("uvloop", "uvloop"),
)


@dataclass(frozen=True)
class Profile:
    """py-spy's collapsed stacks: ``{tuple of frames, root first: samples}``."""

    stacks: dict[tuple[str, ...], int]

    @property
    def total(self) -> int:
        return sum(self.stacks.values())

    def self_time(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            if stack:
                counts[stack[-1]] += n
        return counts

    def inclusive_time(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            for frame in set(stack):
                counts[frame] += n
        return counts

    def areas(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            if stack:
                counts[_area(stack[-1])] += n
        return counts


def parse_collapsed(text: str) -> Profile:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks[tuple(frames.split(";"))] += int(count)
    return Profile(dict(stacks))


def _area(frame: str) -> str:
    for needle, area in AREAS:
        if needle in frame:
            return area
    return "other (interpreter, stdlib)"


def _short(frame: str) -> str:
    """``handle (proxy/serving/forward.py:71)`` with the site-packages prefix cut."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    if "/proxy/" in where:
        # This checkout's proxy/, or a snapshot of it elsewhere (PYTHONPATH).
        where = "proxy/" + where.rsplit("/proxy/", 1)[1]
    return f"`{name}` ({where})" if where else f"`{name}`"


def render_samples(profile: Profile, top: int, expected: int) -> str:
    busy = profile.total or 1
    lines = [
        f"{profile.total} busy samples of {expected} ({100 * profile.total / expected:.0f}% busy); "
        "shares below are of the busy samples.",
        "",
        "| area (by the innermost frame) | self % |",
        "| --- | ---: |",
    ]
    lines += [f"| {area} | {100 * n / busy:.1f} |" for area, n in profile.areas().most_common()]
    lines += ["", "| function | self % |", "| --- | ---: |"]
    lines += [
        f"| {_short(frame)} | {100 * n / busy:.1f} |"
        for frame, n in profile.self_time().most_common(top)
    ]
    lines += ["", "| function | inclusive % |", "| --- | ---: |"]
    lines += [
        f"| {_short(frame)} | {100 * n / busy:.1f} |"
        for frame, n in profile.inclusive_time().most_common(top)
    ]
    return "\n".join(lines)


def render_cprofile(path: Path, top: int, requests: int) -> str:
    """Functions by own time (cProfile's tottime), with their calls per proxied request."""
    stats = pstats.Stats(str(path))
    table = stats.stats  # type: ignore[attr-defined]  # pstats keeps its table untyped
    total = sum(entry[2] for entry in table.values()) or 1.0
    rows = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:top]
    lines = [
        f"cProfile: {total:.2f} s of own time over {requests:,} requests "
        f"({1e6 * total / max(requests, 1):.0f} µs per request, profiler overhead included).",
        "",
        "A coroutine's calls count each resumption after an await.",
        "",
        "| function | own % | cumulative % | calls per request |",
        "| --- | ---: | ---: | ---: |",
    ]
    for (filename, line, name), (_, calls, own, cumulative, _) in rows:
        where = _short(f"{name} ({filename}:{line})")
        lines.append(
            f"| {where} | {100 * own / total:.1f} | {100 * cumulative / total:.1f} "
            f"| {calls / max(requests, 1):.2f} |"
        )
    return "\n".join(lines)

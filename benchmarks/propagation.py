"""Hang-up propagation: from a client closing its connection to the upstream seeing its own end.

One probe: a fresh client connection sends ``GET /hold?id=N`` through the proxy under test, waits
until the hold origin has the request, notes the time and closes its socket, by FIN or by RST
(``SO_LINGER`` on with a zero timeout makes ``close()`` send a RST); the origin notes when its
side of the proxy's upstream connection ends, by EOF or reset, whichever it sees first. Either
way what is timed is the proxy's own hang-up reaching the origin. Both clocks are
``time.perf_counter`` in this process. Probes run one after another, never overlapping; a series
alternates FIN and RST so both kinds see the same load.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import time
from dataclasses import dataclass, field
from enum import Enum

from benchmarks.hold_origin import HoldOrigin
from benchmarks.processes import LOOPBACK

PROBE_TIMEOUT = 5.0
"""Seconds for the request to reach the origin, and again for the hang-up to reach it."""

_ids = itertools.count(1)


class Hangup(Enum):
    """How the probe client hangs up: the two ways the product promises to notice."""

    FIN = "FIN"
    RST = "RST"


_LINGER_ABORT = struct.pack("ii", 1, 0)
"""``struct linger {l_onoff = 1, l_linger = 0}``: close() discards the socket and sends a RST."""


@dataclass
class ProbeSeries:
    """Propagation times in milliseconds, and how many probes never propagated in time."""

    samples_ms: list[float] = field(default_factory=list)
    missed: int = 0

    def extend(self, other: ProbeSeries) -> None:
        self.samples_ms.extend(other.samples_ms)
        self.missed += other.missed


async def probe(origin: HoldOrigin, port: int, kind: Hangup) -> float | None:
    """One hang-up through the proxy on ``port``; milliseconds, or None if it never arrived."""
    probe_id = next(_ids)
    origin.expect(probe_id)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if kind is Hangup.RST:
            # Set now, not just before close(), so the timed span holds nothing but the close.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
        async with asyncio.timeout(PROBE_TIMEOUT):
            await loop.sock_connect(sock, (LOOPBACK, port))
            request = f"GET /hold?id={probe_id} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
            await loop.sock_sendall(sock, request)
            await origin.arrived[probe_id].wait()
        # close() sends the FIN or RST inside this call, so the clock starts at the hang-up.
        closed_at = time.perf_counter()
        sock.close()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await origin.ended[probe_id].wait()
        except TimeoutError:
            return None
        return (origin.ended_at[probe_id] - closed_at) * 1000
    except TimeoutError:
        return None
    finally:
        sock.close()
        origin.forget(probe_id)


async def probe_series(
    origin: HoldOrigin, port: int, count: int, *, spacing: float = 0.02
) -> dict[Hangup, ProbeSeries]:
    """``count`` probes of each kind, FIN and RST in turn, ``spacing`` seconds apart (spread over
    a load, not bunched); alternating rather than one kind after the other, so that both kinds
    meet the same moments of the load."""
    series = {kind: ProbeSeries() for kind in Hangup}
    for _ in range(count):
        for kind in Hangup:
            result = await probe(origin, port, kind)
            if result is None:
                series[kind].missed += 1
            else:
                series[kind].samples_ms.append(result)
            await asyncio.sleep(spacing)
    return series

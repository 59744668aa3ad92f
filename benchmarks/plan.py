"""The two plans a run can follow (full, and quick for CI), and the hangup it starts."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Plan:
    name: str
    rounds: int
    seconds: int
    """Length of each measured wrk run."""
    warmup_seconds: int
    probes_per_round: int
    """Hang-ups of each kind (FIN, RST) per target per round, idle and again under load."""
    load_seconds: int
    """Length of the wrk run that loads a proxy while its loaded hang-ups run."""
    held: int
    """Idle keep-alive client connections held for the memory reading."""


FULL = Plan(
    "full", rounds=3, seconds=8, warmup_seconds=2, probes_per_round=10, load_seconds=5, held=5000
)
QUICK = Plan(
    "quick", rounds=1, seconds=1, warmup_seconds=1, probes_per_round=5, load_seconds=3, held=200
)

HANGUP_SCRIPT = Path(sys.executable).with_name("hangup-proxy")
"""The console script installed next to this interpreter (the project's venv)."""

ROOT = Path(__file__).resolve().parent.parent
"""The checkout: ``python -m benchmarks.…`` children run from here, wherever the driver runs."""
BARE_PROXY_ARGV = [sys.executable, "-m", "benchmarks.bare_aiohttp_proxy"]
"""The aiohttp-server ceiling (``benchmarks.bare_aiohttp_proxy``), on this interpreter."""

"""hangup next to nginx on this machine (issue 6): `benchmarks/run`; `--quick` is the CI smoke run.

Modules: ``run`` (the phases, in order) with ``plan`` (full and quick) → ``tools`` (wrk and nginx,
installed when missing) → ``processes`` (every child pinned to a core, recorded by PID, stopped)
→ ``nginx`` (origin and reference proxy configs) → ``post`` (the API-call case: a small JSON
POST) → ``wrk`` (load, read back from ``report.lua``)
→ ``hold_origin`` and ``propagation`` (hang-up timing) → ``client`` and ``memory`` (RSS with idle
connections held) → ``interference`` (CPU other processes took) → ``report`` and ``provenance``
(the table and where its numbers came from). ``bare_aiohttp_proxy`` is the ceiling measured beside
hangup: the least proxy aiohttp's server can run. ``profile`` runs py-spy or cProfile on hangup
under the same load; ``samples`` renders what they found.
"""

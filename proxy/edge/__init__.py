"""The client side: aiohttp's server protocol with the gate in front of it (limits, refusals,
header deadline) and the write-coalescing transport.

May import ``proxy.wire``. The layers are checked by import-linter (``pyproject.toml``).
"""

"""hangup's own llhttp upstream client: the upstream's address, one connection, the pool.

``address`` (where the backend is), ``connection`` (one connection and the exchange API callers
use; its read side in ``reader``), ``round_trip`` (the state of one exchange, dropped at its end),
``head`` (the answer's head and framing), ``errors``, ``teardown`` (a close whose FIN leaves at
once), ``pool`` (idle keep-alive connections).

May import ``proxy.wire`` and ``proxy.edge`` (the end-of-turn flush). The layers are checked by
import-linter (``pyproject.toml``).
"""

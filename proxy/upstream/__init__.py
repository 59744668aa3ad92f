"""hangup's own llhttp upstream client: the upstream's address, one connection, the pool.

May import ``proxy.wire`` and ``proxy.edge`` (the end-of-turn flush). The layers are checked by
import-linter (``pyproject.toml``).
"""

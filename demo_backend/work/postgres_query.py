"""A query on a real PostgreSQL server that is cancelled on the server when the client hangs up.

asyncpg, not psycopg 3: a ``CancelledError`` inside an awaited asyncpg query makes the driver send
PostgreSQL's cancel request (a second connection carrying the backend's key,
``Connection._cancel_current_command``) and mark the connection as cancelling. The pool's release,
which ``Pool.release`` runs under ``asyncio.shield`` so the cancel cannot skip it, waits for that
cancellation to finish and then resets the connection (``ROLLBACK`` of an open transaction,
``RESET ALL``, unlisten) before it goes back: idle, no transaction, reused by the next request.
Observed: the query left ``pg_stat_activity`` within ~50 ms of the client's FIN
(cancellation-facts §7). psycopg's async connection once left the query running after a cancel
(psycopg/psycopg#543); asyncpg has done this since its first pool.

The pool is made on first use, not at start-up, so the backend starts and serves its other
routes while the database is down; a request that finds it unreachable gets 503 with the reason,
and the next one tries again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from demo_backend.work.unavailable import WorkUnavailable

CONNECT_TIMEOUT = 5.0
NOT_CONFIGURED = "no PostgreSQL is configured: start the backend with --postgres-dsn"

# What a driver raises for a server that is down, refuses us, or drops the connection.
_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresWork:
    """One lazily made asyncpg pool for the app; ``close`` at shutdown."""

    def __init__(self, dsn: str | None, pool_size: int) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._making = asyncio.Lock()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._dsn is None:
            raise WorkUnavailable(NOT_CONFIGURED)
        async with self._making:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=self._pool_size,
                        timeout=CONNECT_TIMEOUT,
                    )
                except _UNREACHABLE as exc:
                    raise WorkUnavailable(f"PostgreSQL is unreachable: {exc}") from exc
            return self._pool

    async def sleep_on_server(self, seconds: float) -> dict[str, Any]:
        """``pg_sleep(seconds)`` on one pooled connection; its server process id with the result."""
        pool = await self._get_pool()
        try:
            async with pool.acquire(timeout=CONNECT_TIMEOUT) as connection:
                backend_pid = await connection.fetchval("SELECT pg_backend_pid()")
                await connection.execute("SELECT pg_sleep($1)", seconds)
        except _UNREACHABLE as exc:
            raise WorkUnavailable(f"PostgreSQL could not run the query: {exc}") from exc
        return {"slept": seconds, "backend_pid": backend_pid}

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

"""Recipes that make the work behind a handler stop when its client hangs up.

The cancelling protocol turns a hang-up into a cancelled request task (``demo_backend.protocol``).
That stops ``async`` code at its next ``await``, and nothing else: a query already sent to a
database, a call already made to another service and a thread already running keep going unless
the handler passes the stop on. Each module here is one recipe, behind one ``/work/<name>`` route
(``demo_backend.work.routes``), and counts its runs in ``/stats`` under ``work``:

* ``sqlite_query``: an embedded query in a worker thread, stopped with
  ``sqlite3.Connection.interrupt()``;
* ``postgres_query``: a query on a PostgreSQL server through an asyncpg pool, cancelled on the
  server;
* ``relay``: an outbound HTTP call with httpx, whose connection is closed rather than pooled, so
  the service behind it sees the hang-up too;
* ``cpu_thread``: a ``def`` endpoint in Starlette's thread pool that checks
  ``demo_backend.hangup_signal`` between steps of its work.
"""

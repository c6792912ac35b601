"""A client-side bound on every wait for PostgreSQL (psycopg 3), which libpq lacks.

``statement_timeout`` is the server's: it cannot end a wait for a server, or a proxy in
front of it, that accepts bytes and never answers. psycopg runs every blocking operation
(execute, fetch, commit) through ``Connection.wait``; this subclass gives that wait a
timeout and, when it passes, closes the connection (its state is unknown), so the caller
gets an ``OperationalError`` that SQLAlchemy takes for a disconnect and the pool drops.
"""

from __future__ import annotations

from typing import Any

import psycopg


def timed_connection_class(seconds: float) -> type[psycopg.Connection[Any]]:
    class TimedConnection(psycopg.Connection[Any]):
        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            try:
                return super().wait(gen, interval, seconds if timeout is None else timeout)
            except psycopg.OperationalError as exc:
                if type(exc).__name__ != "_WaitTimeout":
                    raise
                self.pgconn.finish()
                raise psycopg.OperationalError(
                    f"the server did not answer within {seconds} s; the connection is closed"
                ) from exc

    return TimedConnection

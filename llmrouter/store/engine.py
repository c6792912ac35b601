"""The SQLAlchemy engine for a database URL, set up for each backend's concurrency:
SQLite in WAL mode with writer transactions, MariaDB/MySQL with left-to-right SET.

Every backend gets a bound on how long one operation may wait (``timeout``: connecting,
a statement, a lock, a free pooled connection), so a database that stops answering
becomes ``StoreUnavailableError`` within seconds instead of a hung request.
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from ..errors import ConfigError

_READ_ONLY_OPTION = "llmrouter_read_only"
#: execution options of a transaction that only reads
READ_ONLY = {_READ_ONLY_OPTION: True}


def is_sqlite_memory(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:")


def create_engine_for(database_url: str, *, timeout: float = 5.0) -> Engine:
    try:
        url = make_url(database_url)
    except SQLAlchemyError as exc:
        raise ConfigError(f"'{database_url}' is not a database URL", key="database_url") from exc
    backend = url.get_backend_name()
    try:
        if backend == "sqlite":
            return _sqlite_engine(url, timeout)
        pooled: dict[str, Any] = {"pool_pre_ping": True, "pool_timeout": timeout}
        if backend in ("mysql", "mariadb"):
            engine = create_engine(
                url,
                pool_recycle=3600,
                connect_args=_mysql_timeouts(url.drivername, timeout),
                **pooled,
            )
            event.listen(engine, "connect", _mysql_left_to_right)
            return engine
        if backend == "postgresql":
            engine = create_engine(
                url, connect_args=_postgres_timeouts(url.drivername, timeout), **pooled
            )
            if url.drivername == "postgresql+psycopg":
                _bound_psycopg_waits(engine, timeout)
            return engine
        return create_engine(url, **pooled)
    except NoSuchModuleError:
        raise ConfigError(
            f"no database driver for '{url.drivername}' in '{url.render_as_string()}'",
            key="database_url",
        ) from None
    except ArgumentError as exc:
        raise ConfigError(str(exc), key="database_url") from None
    except ModuleNotFoundError as exc:
        extra = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}.get(backend)
        hint = f"; install it with: pip install 'llmrouter[{extra}]'" if extra else ""
        raise ConfigError(
            f"the database driver '{exc.name}' is not installed{hint}", key="database_url"
        ) from None


def _postgres_timeouts(driver: str, timeout: float) -> dict[str, Any]:
    """libpq's: connecting, each statement and lock wait (server side), and unacknowledged
    packets (a peer that vanished); other drivers keep their own defaults."""
    if driver not in ("postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        return {}
    ms = int(timeout * 1000)
    return {
        "connect_timeout": max(1, math.ceil(timeout)),
        "options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
        "keepalives": 1,
        "keepalives_idle": max(1, math.ceil(timeout)),
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": ms,
    }


def _bound_psycopg_waits(engine: Engine, timeout: float) -> None:
    from .postgres_wait import timed_connection_class

    # A little past the server's statement_timeout, so that a live server's own clean
    # cancellation comes first.
    connection_class = timed_connection_class(timeout + 1.0)

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return connection_class.connect(*cargs, **cparams)


def _mysql_timeouts(driver: str, timeout: float) -> dict[str, Any]:
    """PyMySQL's socket timeouts: connecting, and every read and write of a statement."""
    if driver not in ("mysql+pymysql", "mariadb+pymysql"):
        return {}
    seconds = max(1, math.ceil(timeout))
    return {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}


def _sqlite_engine(url: Any, timeout: float) -> Engine:
    memory = url.database in (None, "", ":memory:")
    engine = create_engine(
        url,
        # timeout: how long a writer waits for another's lock before giving up
        connect_args={"check_same_thread": False, "timeout": timeout},
        poolclass=StaticPool if memory else None,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, open transactions, and open them as writers
        # (BEGIN IMMEDIATE) so concurrent processes queue instead of deadlocking.
        dbapi_connection.isolation_level = None
        if not memory:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Straight to the driver: through SQLAlchemy's execution path this one statement
        # costs as much as the admission itself. Readers begin deferred: in WAL mode they
        # then never wait for writers (a long usage report does not stall requests).
        driver = conn.connection.driver_connection
        assert driver is not None  # a connection being begun is open
        read_only = conn.get_execution_options().get(_READ_ONLY_OPTION, False)
        statement = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        try:
            driver.execute(statement)
        except sqlite3.OperationalError as exc:  # locked past the timeout: as SQLAlchemy's
            raise OperationalError(statement, None, exc) from exc

    return engine


def _mysql_left_to_right(dbapi_connection: Any, _record: Any) -> None:
    # The admission statement relies on MySQL's default left-to-right SET evaluation;
    # a server running with SIMULTANEOUS_ASSIGNMENT would break it, so switch it off here.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET SESSION sql_mode = REPLACE(@@sql_mode, 'SIMULTANEOUS_ASSIGNMENT', '')")

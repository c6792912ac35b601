"""The SQLAlchemy engine of a store: made from a database URL, or the host's own, and set
up for each backend's concurrency (``prepare_engine``): SQLite in WAL mode with writer
transactions, MariaDB/MySQL with left-to-right SET.

Every backend gets a bound on how long one operation may wait (``timeout``: connecting,
a statement, a lock, a free pooled connection), so a database that stops answering
becomes ``StoreUnavailableError`` within seconds instead of a hung request.
"""

from __future__ import annotations

import math
import os
import sqlite3
import weakref
from contextvars import ContextVar
from typing import Any

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DisconnectionError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.pool import StaticPool

from ..errors import ConfigError

_READ_ONLY_OPTION = "llmrouter_read_only"
#: execution options of a transaction that only reads
READ_ONLY = {_READ_ONLY_OPTION: True}


#: the dialects whose concurrency the store knows how to set up
SUPPORTED_DIALECTS = ("sqlite", "postgresql", "mysql", "mariadb")
#: ``ConnectionRecord.info`` mark of a DBAPI connection the set-up has run on (cleared by
#: SQLAlchemy when that connection is replaced)
_PREPARED = "llmrouter_prepared"
_prepared_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def create_engine_for(database_url: str, *, timeout: float = 5.0) -> Engine:
    try:
        url = make_url(database_url)
    except SQLAlchemyError as exc:
        raise ConfigError(f"'{database_url}' is not a database URL", key="database_url") from exc
    backend = url.get_backend_name()
    try:
        if backend == "sqlite":
            return _sqlite_engine(url, timeout)
        pooled: dict[str, Any] = {"pool_timeout": timeout}
        if backend in ("mysql", "mariadb"):
            engine = create_engine(
                url,
                pool_recycle=3600,
                connect_args=_mysql_timeouts(url.drivername, timeout),
                **pooled,
            )
            _ping_when_asked(engine)
            return engine
        if backend == "postgresql":
            engine = create_engine(
                url, connect_args=_postgres_timeouts(url.drivername, timeout), **pooled
            )
            if url.drivername == "postgresql+psycopg":
                _bound_psycopg_waits(engine, timeout)
            _ping_when_asked(engine)
            return engine
        raise ConfigError(_unsupported(backend), key="database_url")
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


#: whether a connection checked out of the store's own server pool is pinged first: set by
#: ``Store.transaction`` (SQLAlchemy's path: reports, admin, key lookups); the request
#: path's driver transactions skip the round trip and run again, once, on a connection
#: that turns out dropped (see ``driver.DriverPath.run``)
PING_ON_CHECKOUT: ContextVar[bool] = ContextVar("llmrouter_ping_on_checkout", default=False)


def _ping_when_asked(engine: Engine) -> None:
    """``pool_pre_ping`` for the checkouts that ask for it (``PING_ON_CHECKOUT``): a
    connection found dropped is replaced by the pool before it is handed out."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if not PING_ON_CHECKOUT.get():
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise DisconnectionError(str(exc)) from exc  # the pool connects anew
            raise


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
    return create_engine(
        url,
        # timeout: how long a writer waits for another's lock before giving up
        connect_args={"check_same_thread": False, "timeout": timeout},
        poolclass=StaticPool if memory else None,
    )


def _unsupported(dialect: str) -> str:
    return (
        f"the '{dialect}' database is not supported: the admission statement's guarantees "
        f"are set up for {', '.join(SUPPORTED_DIALECTS)} only"
    )


def prepare_engine(engine: Engine, *, timeout: float, owned: bool) -> Engine:
    """Set up ``engine`` for the store and return the engine the store should use.

    Any engine works, the store's own (``owned``: made by ``create_engine_for``) or the
    host's (a Flask-SQLAlchemy ``db.engine``, a plain ``create_engine``):

    - SQLite: WAL for files and a busy timeout, per connection; and the store's own
      transactions (on the engine returned here) begin with driver-level transactions off,
      as ``BEGIN IMMEDIATE`` (writers queue instead of deadlocking when both upgrade a read
      lock) or a deferred ``BEGIN`` for ``READ_ONLY`` reads; the driver's own mode is put
      back when they end. The host's transactions on a shared engine keep the driver's
      behaviour: were they all writers, a host request holding its session open (a
      Flask-Login user lookup) would hold the write lock the router needs in that request.
    - MariaDB/MySQL: ``SIMULTANEOUS_ASSIGNMENT`` removed from each session's ``sql_mode``:
      the admission statement relies on left-to-right SET (see ``admission.py``).
    - PostgreSQL on a host engine: ``statement_timeout`` and ``lock_timeout`` are set
      transaction-local (``set_config(..., true)``) at the start of each of the store's
      own transactions, on the engine returned here; the host's own queries keep its
      settings (a session-wide 5 s limit would kill a host's long report). Our own engines
      have them in their connect options instead, at no cost per transaction.
      MariaDB/MySQL session variables have no transaction scope, so on a host engine the
      store adds no server-side timeout there: the host's driver timeouts apply.

    The per-connection set-up runs when a connection is checked out of the pool, once per
    DBAPI connection (a mark in its ``ConnectionRecord.info``), so connections the host's
    pool opened before the store attached get it too. (``engine.dispose()`` would not do:
    it cannot reach connections checked out at that moment, and it destroys an in-memory
    database held by a ``StaticPool``.)

    Refused, with ``ConfigError`` saying why: a dialect other than SQLite, PostgreSQL and
    MariaDB/MySQL, and an in-memory SQLite engine whose pool is not a ``StaticPool`` (each
    new connection would be a different, empty database).
    """
    dialect = engine.dialect.name
    if dialect not in SUPPORTED_DIALECTS:
        raise ConfigError(_unsupported(dialect), key="database_url")
    if dialect == "sqlite" and not isinstance(engine.pool, StaticPool) and _sqlite_memory(engine):
        raise ConfigError(
            f"an in-memory SQLite engine needs poolclass=StaticPool (and connect_args="
            f"{{'check_same_thread': False}}): with its {type(engine.pool).__name__} each "
            "new connection would be a different, empty database",
            key="database_url",
        )
    if engine not in _prepared_engines:
        setup = _sqlite_setup(timeout) if dialect == "sqlite" else None
        if dialect in ("mysql", "mariadb"):
            setup = _mysql_left_to_right

        if setup is not None:
            prepare = setup

            @event.listens_for(engine, "checkout")
            def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
                if not record.info.get(_PREPARED):
                    prepare(dbapi_connection)
                    record.info[_PREPARED] = True

        _prepared_engines.add(engine)
    if dialect == "sqlite":
        return _sqlite_store_transactions(engine)
    if dialect == "postgresql" and not owned:
        return _postgres_transaction_timeouts(engine, timeout)
    return engine


def is_sqlite_memory(engine: Engine) -> bool:
    """Whether ``engine`` holds an in-memory SQLite database (asks the database itself: a
    ``creator`` may open a file whatever the URL says)."""
    return engine.dialect.name == "sqlite" and _sqlite_memory(engine)


def _sqlite_memory(engine: Engine) -> bool:
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            cursor.execute("PRAGMA database_list")
            files = {row[1]: row[2] for row in cursor.fetchall()}
        finally:
            cursor.close()
    finally:
        connection.close()
    return not files.get("main")


def _sqlite_setup(timeout: float) -> Any:
    def setup(dbapi_connection: Any) -> None:
        dbapi_connection.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        file = {row[1]: row[2] for row in dbapi_connection.execute("PRAGMA database_list")}
        if file.get("main"):
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    return setup


_DRIVER_MODE = "llmrouter_driver_isolation_level"


def _sqlite_store_transactions(engine: Engine) -> Engine:
    """An engine on the same pool whose transactions are the store's (see _begin)."""
    store_engine = engine.execution_options(llmrouter_store=True)

    @event.listens_for(store_engine, "begin")
    def _begin(conn: Connection) -> None:
        # Let SQLAlchemy, not the driver, open this transaction, straight on the driver:
        # through SQLAlchemy's execution path this one statement costs as much as the
        # admission itself. Writers begin IMMEDIATE, so concurrent processes queue instead
        # of deadlocking; readers begin deferred: in WAL mode they then never wait for
        # writers (a long usage report does not stall requests).
        driver = conn.connection.driver_connection
        assert driver is not None  # a connection being begun is open
        conn.connection.info[_DRIVER_MODE] = driver.isolation_level
        driver.isolation_level = None  # (no transaction is open: this commits nothing)
        read_only = conn.get_execution_options().get(_READ_ONLY_OPTION, False)
        statement = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        try:
            driver.execute(statement)
        except sqlite3.OperationalError as exc:  # locked past the timeout: as SQLAlchemy's
            _restore(conn)
            raise OperationalError(statement, None, exc) from exc

    def _restore(conn: Connection) -> None:
        # Before the COMMIT/ROLLBACK itself: a string level does not end the transaction.
        # (None, the driver's own autocommit mode, stays: setting it would COMMIT now.)
        level = conn.connection.info.pop(_DRIVER_MODE, None)
        driver = conn.connection.driver_connection
        if level is not None and driver is not None:
            driver.isolation_level = level

    event.listen(store_engine, "commit", _restore)
    event.listen(store_engine, "rollback", _restore)
    return store_engine


def _mysql_left_to_right(dbapi_connection: Any) -> None:
    # The admission statement relies on MySQL's default left-to-right SET evaluation;
    # a server running with SIMULTANEOUS_ASSIGNMENT would break it, so switch it off here.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(
            "SET SESSION sql_mode = TRIM(BOTH ',' FROM "
            "REPLACE(CONCAT(',', @@sql_mode, ','), ',SIMULTANEOUS_ASSIGNMENT,', ','))"
        )
    finally:
        cursor.close()


def postgres_timeouts_statement(timeout: float) -> str:
    """What a store transaction on a host's PostgreSQL engine starts with: its own waits
    bounded, transaction-local."""
    ms = int(timeout * 1000)
    return (
        f"SELECT set_config('statement_timeout', '{ms}', true), "
        f"set_config('lock_timeout', '{ms}', true)"
    )


def _postgres_transaction_timeouts(engine: Engine, timeout: float) -> Engine:
    """An engine on the same pool whose transactions start by bounding their own waits."""
    bounded = engine.execution_options(llmrouter_store=True)
    statement = postgres_timeouts_statement(timeout)

    @event.listens_for(bounded, "begin")
    def _bound(conn: Connection) -> None:
        driver = conn.connection.driver_connection
        assert driver is not None
        cursor = driver.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()

    return bounded


def _fresh_pools_after_fork() -> None:
    """In a forked child (gunicorn ``--preload``, multiprocessing): pooled connections are
    the parent's sockets, and two processes talking on one socket corrupt each other's
    conversations. The child drops its references to them (``close=False``: the parent's
    stay open) and opens its own. An in-memory database lives in its one connection and is
    kept (the child has its own copy of the memory)."""
    for engine in list(_prepared_engines):
        if not isinstance(engine.pool, StaticPool):
            engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_pools_after_fork)

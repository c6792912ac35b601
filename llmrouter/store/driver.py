"""The request path's transactions run straight on the pooled DBAPI connection: the
admission and the settlement's statements, compiled once per store to the driver's own SQL.

Through SQLAlchemy's execution machinery (parameter construction, events, result objects,
``Connection``/``begin``) these few statements cost more than the database itself does on
SQLite. SQLAlchemy still builds every statement, runs the schema, migrations, reports and
every statement off the request path; here a statement is compiled with the engine's
dialect once (``Prepared``), and each call only binds values and calls the driver.

The transactions are the store's own, as ``engine.prepare_engine`` sets them up on
SQLAlchemy's path: a writer's ``BEGIN IMMEDIATE`` on SQLite (the driver's own transaction
handling off, and put back after), the transaction-local timeouts of a host's PostgreSQL
engine, the per-connection set-up of the pool's checkout (it runs on this path too). A
driver error is raised as SQLAlchemy would raise it (``OperationalError``, ``IntegrityError``…),
and a connection it shows broken is invalidated, never returned to the pool.
"""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

T = TypeVar("T")

#: a transaction that failed on a dropped connection within this many seconds is run
#: again; one that took longer met a server not answering, and would only wait again
RETRY_WITHIN = 1.0


class _Stale(Exception):
    """A transaction's first statement met a connection the server had dropped."""

    def __init__(self, error: DBAPIError) -> None:
        self.error = error


class Prepared:
    """One statement compiled for one dialect: its SQL text, the order (or names) its values
    bind in, the values compiled into it (literals, ``None``), and the bind processors of the
    types that have one."""

    __slots__ = ("_defaults", "_names", "_positional", "_processors", "_row", "sql")

    def __init__(self, statement: ClauseElement, engine: Engine, keys: list[str]) -> None:
        dialect = engine.dialect
        column_keys = keys if isinstance(statement, Insert) else None
        compiled: Any = statement.compile(dialect=dialect, column_keys=column_keys)  # SQLCompiler
        if compiled.insert_prefetch or compiled.update_prefetch or compiled.post_compile_params:
            raise ValueError(f"not a statement the driver path can run: {compiled}")
        self.sql = compiled.string
        self._positional = compiled.positional
        escaped = compiled.escaped_bind_names or {}
        if self._positional:
            self._names: tuple[str, ...] = tuple(compiled.positiontup or ())
        else:
            self._names = tuple(compiled.bind_names.values())
        self._defaults: dict[str, Any] = {}
        processors = []
        for bind, name in compiled.bind_names.items():
            if not bind.required:
                self._defaults[name] = bind.effective_value
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors.append((name, processor))
        self._processors = tuple(processors)
        if escaped:
            self._names = tuple(escaped.get(n, n) for n in self._names)
            self._defaults = {escaped.get(n, n): v for n, v in self._defaults.items()}
            self._processors = tuple((escaped.get(n, n), p) for n, p in self._processors)
        self._row: Any = None

    def bind(self, params: dict[str, Any]) -> Any:
        values = {**self._defaults, **params} if self._defaults else dict(params)
        for name, processor in self._processors:
            values[name] = processor(values[name])
        if self._positional:
            return tuple([values[name] for name in self._names])
        return values

    def row_class(self, description: Any) -> Any:
        if self._row is None:
            self._row = namedtuple("Row", [column[0] for column in description])  # type: ignore[misc]
        return self._row


class DriverResult:
    """What ``DriverTransaction.execute`` returns: the few answers the store reads."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rowcount: int, rows: list[Any] | None) -> None:
        self.rowcount = rowcount
        self._rows = rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None


class DriverTransaction:
    """One open transaction on a DBAPI connection; ``execute`` takes SQLAlchemy statements
    and values as ``Connection.execute`` does, for the statements the store's request path
    runs."""

    def __init__(self, driver: DriverPath, connection: Any) -> None:
        self._driver = driver
        self._connection = connection
        self.statements = 0

    def execute(self, statement: ClauseElement, params: dict[str, Any]) -> DriverResult:
        prepared = self._driver.prepared(statement, params)
        values = prepared.bind(params)
        cursor = self._connection.cursor()
        try:
            self.statements += 1
            try:
                cursor.execute(prepared.sql, values)
            except self._driver.dbapi_error as exc:
                raise self._driver.wrap(
                    exc, prepared.sql, values, self._connection, cursor
                ) from exc
            rows = None
            if cursor.description is not None:
                row = prepared.row_class(cursor.description)
                rows = [row(*values) for values in cursor.fetchall()]
            return DriverResult(cursor.rowcount, rows)
        finally:
            cursor.close()

    def begin_nested(self) -> _Savepoint:
        return _Savepoint(self)

    def _run(self, sql: str) -> None:
        cursor = self._connection.cursor()
        self.statements += 1
        try:
            try:
                cursor.execute(sql)
            except self._driver.dbapi_error as exc:
                raise self._driver.wrap(exc, sql, None, self._connection, cursor) from exc
        finally:
            cursor.close()


class _Savepoint:
    """``begin_nested()`` on the driver path: a SAVEPOINT rolled back to on an error."""

    def __init__(self, transaction: DriverTransaction) -> None:
        self._transaction = transaction

    def __enter__(self) -> None:
        self._transaction._run("SAVEPOINT llmrouter_nested")

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self._transaction._run("RELEASE SAVEPOINT llmrouter_nested")
        else:
            self._transaction._run("ROLLBACK TO SAVEPOINT llmrouter_nested")


class DriverPath:
    """The store's write transactions on the DBAPI connections of ``engine``'s pool.

    ``begin``: what a transaction starts with besides the driver's own implicit BEGIN (the
    host PostgreSQL engine's transaction-local timeouts); SQLite's writers begin IMMEDIATE.
    """

    def __init__(self, engine: Engine, *, begin: str | None = None) -> None:
        self._engine = engine
        self._dialect = engine.dialect
        self._sqlite = self._dialect.name == "sqlite"
        self._begin = begin
        self.dbapi_error: type[Exception] = self._dialect.loaded_dbapi.Error
        self._prepared: dict[tuple[int, tuple[str, ...]], tuple[Any, Prepared]] = {}
        self._lock = threading.Lock()

    def prepared(self, statement: ClauseElement, params: dict[str, Any]) -> Prepared:
        key = (id(statement), tuple(params))
        found = self._prepared.get(key)
        if found is not None:
            return found[1]
        prepared = Prepared(statement, self._engine, list(params))
        with self._lock:
            # the statement is kept with its compiled form: its id stays its own
            self._prepared[key] = (statement, prepared)
        return prepared

    def wrap(
        self, exc: Exception, sql: str | None, params: Any, connection: Any, cursor: Any
    ) -> Exception:
        """``exc`` as SQLAlchemy raises it, marked when it shows the connection broken."""
        disconnect = self._dialect.is_disconnect(exc, connection, cursor)  # type: ignore[arg-type]
        return DBAPIError.instance(
            sql,
            params,
            exc,
            self.dbapi_error,
            connection_invalidated=disconnect,
            dialect=self._dialect,
        )

    def run(self, work: Callable[[DriverTransaction], T]) -> T:
        """Run ``work`` in one write transaction and commit it; on any error roll it back
        (or invalidate a connection the error showed broken) and raise it.

        The pool does not ping a connection before handing it out (a round trip per
        transaction): a connection the server dropped while it sat in the pool fails its
        first statement at once, and then the transaction runs again, once, on a fresh
        connection. Nothing was committed (a transaction cut before its COMMIT is rolled
        back by the server), so nothing is done twice. A failure at COMMIT is never retried
        here: whether it committed is unknown, and an admission run again could admit twice
        (a settlement may be retried: it moves money only while its row is pending)."""
        started = time.monotonic()
        try:
            return self._attempt(work)
        except _Stale as stale:
            error = stale.error
        if time.monotonic() - started > RETRY_WITHIN:
            raise error  # a server that took that long to fail is not answering
        try:
            return self._attempt(work)
        except _Stale as stale:
            error = stale.error
        raise error

    def _attempt(self, work: Callable[[DriverTransaction], T]) -> T:
        try:
            fairy: Any = self._engine.raw_connection()
        except self.dbapi_error as exc:
            raise self.wrap(exc, None, None, None, None) from exc
        connection: Any = fairy.driver_connection
        transaction = DriverTransaction(self, connection)
        level = None
        ended = committing = False
        try:
            try:
                if self._sqlite:
                    # As engine._sqlite_store_transactions does: the driver's own
                    # transaction handling off while the store's writer transaction runs.
                    level = connection.isolation_level
                    connection.isolation_level = None
                    transaction._run("BEGIN IMMEDIATE")
                elif self._begin is not None:
                    transaction._run(self._begin)
                result = work(transaction)
                if self._sqlite:
                    connection.isolation_level, level = level, None
                committing = True
                try:
                    connection.commit()
                except self.dbapi_error as exc:
                    raise self.wrap(exc, "COMMIT", None, connection, None) from exc
                ended = True
            except BaseException as exc:
                if level is not None:
                    connection.isolation_level = level
                if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                    # As SQLAlchemy does on a disconnect: this connection is dropped and
                    # every other one pooled before now is replaced on its next checkout.
                    self._engine.pool._invalidate(fairy, exc)
                    fairy = None
                    if transaction.statements <= 1 and not committing:
                        raise _Stale(exc) from None
                else:
                    try:
                        connection.rollback()
                        ended = True
                    except self.dbapi_error as failure:
                        fairy.invalidate(failure)
                        fairy = None
                raise
        finally:
            if fairy is not None:
                # Ended by its COMMIT or ROLLBACK: returned without the pool's reset (one
                # more ROLLBACK round trip on a server), as SQLAlchemy's Connection does.
                close_special = getattr(fairy, "_close_special", None)
                if ended and close_special is not None:
                    close_special(transaction_reset=True)
                else:
                    fairy.close()
        return result

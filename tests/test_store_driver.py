"""The request path's transactions straight on the driver (``store/driver.py``) when the
server drops a connection: no connection is pinged before use, so a pooled one the server
killed fails its first statement, is replaced, and the transaction runs again, once; one
killed before its COMMIT is never run again (an admission would be taken twice)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.pool import NullPool

from llmrouter import Router
from llmrouter.errors import StoreUnavailableError
from llmrouter.store.driver import DriverTransaction
from llmrouter.store.tables import build_tables
from tests.conftest import database_urls, gateway_config, wait_for

HI = [{"role": "user", "content": "hi"}]
SERVERS = [p for p in database_urls() if p.id != "sqlite"]
TABLES = build_tables()


@pytest.fixture
def admin(database_url: str) -> Iterator[Engine]:
    """A connection of the test's own, outside the router's pool, to kill the pool's."""
    engine = create_engine(database_url, poolclass=NullPool)
    yield engine
    engine.dispose()


def backend_id(dbapi_connection: Any, dialect: str) -> int:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(
            "SELECT pg_backend_pid()" if dialect == "postgresql" else "SELECT CONNECTION_ID()"
        )
        (found,) = cursor.fetchone()
    finally:
        cursor.close()
    return int(found)


def kill(admin: Engine, ids: list[int]) -> None:
    """End these server sessions as an administrator would, and wait until they are gone."""
    postgres = admin.dialect.name == "postgresql"
    with admin.connect() as conn:
        for id_ in ids:
            conn.exec_driver_sql(
                f"SELECT pg_terminate_backend({id_})" if postgres else f"KILL {id_}"
            )
        conn.commit()
        sessions = (
            "SELECT pid FROM pg_stat_activity"
            if postgres
            else "SELECT id FROM information_schema.processlist"
        )

        def gone() -> bool:
            alive = {int(row[0]) for row in conn.exec_driver_sql(sessions)}
            conn.rollback()
            return not alive & set(ids)

        assert wait_for(gone)


def pooled_ids(router: Router) -> list[int]:
    """The server sessions of the connections idle in the router's pool (checked out all at
    once, without a ping, and handed back)."""
    engine = router.store.engine
    idle = [engine.raw_connection() for _ in range(engine.pool.checkedin())]  # type: ignore[attr-defined]
    try:
        return [backend_id(c.driver_connection, engine.dialect.name) for c in idle]
    finally:
        for connection in idle:
            connection.close()


def ledger_of(admin: Engine, key_id: str) -> list[str]:
    c = TABLES.ledger.c
    with admin.connect() as conn:
        return list(
            conn.execute(select(c.status).where(c.key_id == key_id).order_by(c.id)).scalars()
        )


def day_count(admin: Engine, key_id: str) -> int:
    c = TABLES.api_keys.c
    with admin.connect() as conn:
        return int(conn.execute(select(func.max(c.day_count)).where(c.id == key_id)).scalar_one())


@pytest.mark.parametrize("database_url", SERVERS, indirect=True)
class TestDroppedConnections:
    @pytest.fixture
    def router(self, database_url: str, make_router: Callable[..., Router]) -> Router:
        return make_router(gateway_config(database_url=database_url))

    def test_an_admission_on_a_connection_the_server_dropped_runs_once_on_a_fresh_one(
        self, router: Router, admin: Engine
    ) -> None:
        record, secret = router.create_key("dropped")
        key = record.id
        router.chat(model="echo#echo", messages=HI, api_key=secret)
        dropped = pooled_ids(router)
        assert dropped
        kill(admin, dropped)

        started = time.monotonic()
        reply = router.chat(model="echo#echo", messages=HI, api_key=secret)

        assert reply.choices[0].message.content
        assert time.monotonic() - started < 1.0  # not a timeout: the retry was at once
        assert ledger_of(admin, key) == ["ok", "ok"]
        assert day_count(admin, key) == 2  # the retried admission counted once
        assert not set(pooled_ids(router)) & set(dropped)  # the dead ones were not pooled back

    def test_a_settlement_on_a_connection_the_server_dropped_is_written_at_once(
        self, router: Router, admin: Engine
    ) -> None:
        record, secret = router.create_key("dropped mid-stream", daily_requests=0, credits=1)
        key = record.id
        stream = router.chat(model="echo#echo", messages=HI, api_key=secret, stream=True)
        first = next(stream)
        kill(admin, pooled_ids(router))

        rest = list(stream)

        assert [first, *rest]
        assert ledger_of(admin, key) == ["ok"]  # settled in the call, not deferred
        record = router.get_key(key)
        assert record.spent_nanos > 0
        assert record.balance_nanos + record.spent_nanos == 1_000_000_000

    def test_a_connection_dropped_before_the_commit_is_not_run_again(
        self, router: Router, admin: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        record, secret = router.create_key("dropped at commit")
        key = record.id
        router.chat(model="echo#echo", messages=HI, api_key=secret)
        admissions: list[int] = []
        execute = DriverTransaction.execute
        dialect = router.store.engine.dialect.name

        def execute_then_lose_the_connection(
            self: DriverTransaction, statement: Any, params: dict[str, Any]
        ) -> Any:
            result = execute(self, statement, params)
            if statement is router.store._sql.ticket_insert:
                admissions.append(1)
                # every statement of the admission ran; its COMMIT meets a dead connection
                kill(admin, [backend_id(self._connection, dialect)])
            return result

        monkeypatch.setattr(DriverTransaction, "execute", execute_then_lose_the_connection)

        with pytest.raises(StoreUnavailableError):
            router.chat(model="echo#echo", messages=HI, api_key=secret)

        assert admissions == [1]  # not run again
        assert ledger_of(admin, key) == ["ok"]  # the server rolled the cut one back
        assert day_count(admin, key) == 1
        monkeypatch.undo()
        router.chat(model="echo#echo", messages=HI, api_key=secret)
        assert ledger_of(admin, key) == ["ok", "ok"]

    def test_a_report_on_a_connection_the_server_dropped_gets_a_fresh_one(
        self, router: Router, admin: Engine
    ) -> None:
        record, secret = router.create_key("report")
        router.chat(model="echo#echo", messages=HI, api_key=secret)
        kill(admin, pooled_ids(router))

        # SQLAlchemy's path (reports, admin, key lookups) pings what it checks out
        assert sum(row.requests for row in router.usage(key_id=record.id)) == 1

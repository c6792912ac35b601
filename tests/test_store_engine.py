"""The store on an engine the host made: set up for the store's guarantees (SQLite WAL and
writer transactions, MariaDB left-to-right SET), connections opened before it attached
included, and refused with the reason when it cannot work."""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.pool import StaticPool

from llmrouter import RateLimitError, Router
from llmrouter.errors import ConfigError
from llmrouter.store import Store
from llmrouter.store.tables import build_tables
from tests.conftest import database_urls, drop_tables, gateway_config

HI = [{"role": "user", "content": "hi"}]


def test_a_host_sqlite_engine_gets_wal_and_writer_transactions(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/host.db")
    with engine.begin() as conn:  # the host's own table, made before the router attaches
        conn.exec_driver_sql("CREATE TABLE host_notes (id INTEGER PRIMARY KEY, body TEXT)")
    opened_before = engine.raw_connection()
    driver = opened_before.driver_connection
    opened_before.close()  # back to the host's pool, not yet set up
    host_mode = driver.isolation_level

    config = gateway_config(quota={"daily_requests": 1000}, database_timeout_seconds=7)
    router = Router.from_config(config, engine=engine)
    try:
        with engine.connect() as conn:
            assert conn.connection.driver_connection is driver  # the one opened before
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
        # The store's transactions put the driver's own mode back for the host's.
        assert driver.isolation_level == host_mode

        # The host's own transactions on the shared engine still commit and roll back.
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO host_notes (body) VALUES ('kept')")
        with pytest.raises(ZeroDivisionError), engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO host_notes (body) VALUES ('rolled back')")
            raise ZeroDivisionError
        with engine.connect() as conn:
            assert conn.execute(text("SELECT body FROM host_notes")).scalars().all() == ["kept"]

        # Admissions from many threads at once queue (BEGIN IMMEDIATE) instead of failing
        # with "database is locked" as deferred transactions upgrading their locks would.
        _, secret = router.create_key("threads")
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def calls() -> None:
            start.wait()
            try:
                for _ in range(10):
                    router.chat(model="echo#echo", messages=HI, api_key=secret)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=calls) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert sum(row.requests for row in router.usage()) == 80
    finally:
        router.close()
    # The host's engine is the host's: closing the router leaves it usable.
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM host_notes")).scalar() == 1
    engine.dispose()


def test_an_in_memory_sqlite_engine_needs_a_static_pool() -> None:
    with pytest.raises(ConfigError, match=r"StaticPool.*different, empty database"):
        Router.from_config(gateway_config(), engine=create_engine("sqlite://"))
    shared = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    router = Router.from_config(gateway_config(), engine=shared)
    try:
        _, secret = router.create_key("memory")
        router.chat(model="echo#echo", messages=HI, api_key=secret)
        assert sum(row.requests for row in router.usage()) == 1
    finally:
        router.close()


def test_store_and_engine_together_are_refused() -> None:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    with pytest.raises(ValueError, match="store= or engine="):
        Router.from_config(gateway_config(), store=Store("sqlite://"), engine=engine)


MYSQL_URL = os.environ.get("LLMROUTER_TEST_MYSQL_URL")


@pytest.mark.mysql
@pytest.mark.skipif(not MYSQL_URL, reason="LLMROUTER_TEST_MYSQL_URL is not set")
def test_a_host_mariadb_engine_with_simultaneous_assignment_still_admits_correctly() -> None:
    assert MYSQL_URL
    engine = create_engine(MYSQL_URL)

    @event.listens_for(engine, "connect")
    def _host_mode(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION sql_mode = CONCAT('SIMULTANEOUS_ASSIGNMENT,', @@sql_mode)")

    with engine.connect() as conn:  # opened before the router attaches
        mode = conn.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar()
        assert "SIMULTANEOUS_ASSIGNMENT" in mode

    tables = build_tables(f"t{secrets.token_hex(4)}_")
    store = Store("", engine=engine, table_prefix=tables.prefix, check_schema=False)
    store.upgrade_database()
    config = gateway_config(
        table_prefix=tables.prefix, quota={"daily_requests": 2, "throttle_seconds": 600}
    )
    router = Router.from_config(config, engine=engine)
    try:
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar()
            assert "SIMULTANEOUS_ASSIGNMENT" not in mode
        key, secret = router.create_key("left-to-right")
        for _ in range(3):  # two from the allowance, then the throttle slot
            router.chat(model="echo#echo", messages=HI, api_key=secret)
        with pytest.raises(RateLimitError):
            router.chat(model="echo#echo", messages=HI, api_key=secret)
        ledger = tables.ledger
        with engine.connect() as conn:
            admissions = conn.execute(
                select(ledger.c.admission).where(ledger.c.key_id == key.id).order_by(ledger.c.id)
            ).scalars()
            assert list(admissions) == ["allowance", "allowance", "throttle"]
            keys = tables.api_keys
            state = conn.execute(
                select(keys.c.day_count, keys.c.last_admission).where(keys.c.id == key.id)
            ).one()
        assert state.day_count == 2
    finally:
        router.close()
        engine.dispose()
        drop_tables(MYSQL_URL, tables)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.parametrize("database_url", database_urls(), indirect=True)
def test_a_router_built_before_a_fork_serves_in_every_child(database_url: str) -> None:
    # gunicorn --preload builds the app (and its Router) in the master, then forks: each
    # worker must talk to the database on sockets of its own, not on the master's.
    config = gateway_config(database_url=database_url, quota={"daily_requests": 10_000})
    router = Router.from_config(config)
    key, secret = router.create_key("forked")
    router.chat(model="echo#echo", messages=HI, api_key=secret)  # a pooled connection now
    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # the child: twenty calls, then its verdict as the exit code
            code = 1
            try:
                for _ in range(20):
                    router.chat(model="echo#echo", messages=HI, api_key=secret)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    for _ in range(20):  # the parent keeps using its own pool meanwhile
        router.chat(model="echo#echo", messages=HI, api_key=secret)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    try:
        assert codes == [0, 0, 0]
        assert sum(row.requests for row in router.usage(key_id=key.id)) == 1 + 20 + 3 * 20
    finally:
        router.close()

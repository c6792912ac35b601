"""The schema's migrations on every backend: an empty database upgraded to head equals the
tables in code (Alembic's own comparison), a database behind is refused with the command to
run, the ``db`` commands, and a table prefix of the host's choosing end to end."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, insert, inspect
from sqlalchemy.exc import IntegrityError

from llmrouter import Router
from llmrouter.errors import ConfigError
from llmrouter.migrations.versions import r0001_baseline
from llmrouter.store import Store, schema
from llmrouter.store.engine import create_engine_for
from llmrouter.store.tables import Tables, build_tables
from tests.conftest import database_urls, drop_tables, gateway_config

pytestmark = pytest.mark.parametrize("database_url", database_urls(), indirect=True)


@pytest.fixture
def tables(database_url: str) -> Iterator[Tables]:
    """A prefix of this test's own: on a server its tables start absent, and go after."""
    tables = build_tables(f"t{secrets.token_hex(4)}_")
    yield tables
    if not database_url.startswith("sqlite"):
        drop_tables(database_url, tables)


def table_names(database_url: str) -> set[str]:
    engine = create_engine_for(database_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def differences(database_url: str, tables: Tables) -> list[object]:
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "version_table": tables.version_table,
                    "include_name": lambda name, type_, _parent: (
                        type_ != "table" or tables.owns(name or "")
                    ),
                    "compare_type": True,
                },
            )
            return list(compare_metadata(context, tables.metadata))
    finally:
        engine.dispose()


def test_an_empty_database_upgraded_to_head_equals_the_tables_in_code(
    database_url: str, tables: Tables
) -> None:
    store = Store(database_url, table_prefix=tables.prefix, check_schema=False)
    try:
        assert store.database_revision() == (None, schema.head_revision())
        assert store.upgrade_database() == schema.head_revision()
        assert store.database_revision() == (schema.head_revision(), schema.head_revision())
    finally:
        store.close()
    assert differences(database_url, tables) == []
    ours = {name for name in table_names(database_url) if name.startswith(tables.prefix)}
    assert ours == {*tables.metadata.tables, tables.version_table}


def test_a_fresh_database_is_created_at_head_on_sqlite_and_refused_on_a_server(
    database_url: str, tables: Tables
) -> None:
    if database_url.startswith("sqlite"):
        Store(database_url, table_prefix=tables.prefix).close()
        assert differences(database_url, tables) == []
        return
    with pytest.raises(ConfigError, match="llmrouter db upgrade"):
        Store(database_url, table_prefix=tables.prefix)
    assert not any(name.startswith(tables.prefix) for name in table_names(database_url))


def test_tables_without_a_version_row_are_refused_then_adopted_by_upgrade(
    database_url: str, tables: Tables
) -> None:
    engine = create_engine_for(database_url)
    try:
        # what llmrouter 0.1 did at every start: its tables, the baseline's
        r0001_baseline.baseline_metadata(tables.prefix).create_all(engine)
    finally:
        engine.dispose()
    with pytest.raises(ConfigError, match=r"from before migrations.*`llmrouter db upgrade`"):
        Store(database_url, table_prefix=tables.prefix)
    store = Store(database_url, table_prefix=tables.prefix, check_schema=False)
    try:
        store.upgrade_database()
    finally:
        store.close()
    Store(database_url, table_prefix=tables.prefix).close()


def _ledger_row(request_id: str, **columns: object) -> dict[str, object]:
    return {
        "request_id": request_id,
        "key_id": "key_0123456789abcdef",
        "provider": "echo",
        "model": "echo#echo",
        "upstream_model": "echo",
        "admission": "allowance",
        "status": "ok",
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "usage_estimated": False,
        "cost_nanos": 7,
        "charged_nanos": 0,
        "day": 20_000,
        "started_at": 1,
        "finished_at": 2,
        "reserved_nanos": 0,
        "slot_at": 0,
        **columns,
    }


def test_tables_from_before_migrations_under_their_databases_own_constraint_names_get_rounds(
    database_url: str, tables: Tables
) -> None:
    """What the ``create_all`` of llmrouter 0.1 made names its constraints the database's
    way (or not at all, on SQLite): revision 0005 still finds the ledger's old uniqueness."""
    unnamed = MetaData()
    for table in r0001_baseline.baseline_metadata(tables.prefix).sorted_tables:
        for constraint in table.to_metadata(unnamed).constraints:
            constraint.name = None
    ledger = tables.prefix + "ledger"
    engine = create_engine_for(database_url)
    try:
        unnamed.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(unnamed.tables[ledger]), _ledger_row("chatcmpl-old"))
        store = Store(database_url, table_prefix=tables.prefix, check_schema=False)
        try:
            store.upgrade_database()
            [old] = store.ledger_rows("chatcmpl-old")
            assert (old.round, old.status, old.cost_nanos) == (1, "ok", 7)
        finally:
            store.close()
        uniques = inspect(engine).get_unique_constraints(ledger)
        assert ["request_id", "round"] in [u["column_names"] for u in uniques]
        assert ["request_id"] not in [u["column_names"] for u in uniques]
        with engine.begin() as conn:
            conn.execute(insert(tables.ledger), _ledger_row("chatcmpl-old", round=2))
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert(tables.ledger), _ledger_row("chatcmpl-old", round=2))
    finally:
        engine.dispose()


def test_revision_0005_goes_down_and_up_again_but_not_over_tool_rounds(
    database_url: str, tables: Tables
) -> None:
    from alembic import command

    store = Store(database_url, table_prefix=tables.prefix, check_schema=False)
    try:
        store.upgrade_database()
        with store.engine.begin() as conn:
            conn.execute(insert(tables.ledger), _ledger_row("chatcmpl-one"))
            conn.execute(insert(tables.ledger), _ledger_row("chatcmpl-two", round=2))
        with (
            pytest.raises(RuntimeError, match="round > 1"),
            store.engine.connect() as conn,
            conn.begin(),
        ):
            command.downgrade(schema.alembic_config(conn, tables), "0004")
        with store.engine.begin() as conn:
            conn.execute(tables.ledger.delete().where(tables.ledger.c.round > 1))
        with store.engine.connect() as conn, conn.begin():
            command.downgrade(schema.alembic_config(conn, tables), "0004")
        assert store.database_revision()[0] == "0004"
        found = inspect(store.engine)
        assert "round" not in {c["name"] for c in found.get_columns(tables.prefix + "ledger")}
        assert "allowed_tools" not in {
            c["name"] for c in found.get_columns(tables.prefix + "api_keys")
        }
        assert store.upgrade_database() == schema.head_revision()
        assert [r.round for r in store.ledger_rows("chatcmpl-one")] == [1]
    finally:
        store.close()
    assert differences(database_url, tables) == []


def test_a_database_behind_or_ahead_of_the_code_is_refused(
    database_url: str, tables: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(database_url, table_prefix=tables.prefix, check_schema=False)
    try:
        store.upgrade_database()
    finally:
        store.close()
    # A later llmrouter, whose head is past the baseline this database is at:
    head = schema.head_revision()
    later = f"{int(head) + 1:04d}"
    monkeypatch.setattr(schema, "head_revision", lambda: later)
    with pytest.raises(ConfigError, match=rf"at revision {head}.*needs {later}: run `llmrouter db"):
        Store(database_url, table_prefix=tables.prefix)
    monkeypatch.undo()
    # An older llmrouter than the one that migrated the database:
    engine = create_engine_for(database_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE {tables.version_table} SET version_num = '9999'")
    finally:
        engine.dispose()
    with pytest.raises(ConfigError, match=r"revision 9999, which this version.*upgrade llmrouter"):
        Store(database_url, table_prefix=tables.prefix)


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmrouter", *args],
        env={**os.environ, "LLMROUTER_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_db_upgrade_and_current_commands(database_url: str, tables: Tables, tmp_path: Path) -> None:
    config = tmp_path / "llmrouter.toml"
    config.write_text(
        f'database_url = "{database_url}"\ntable_prefix = "{tables.prefix}"\n'
        '[[providers]]\nname = "echo"\nkind = "echo"\n[[providers.models]]\nid = "echo"\n'
    )
    behind = run_cli(config, "db", "current")
    assert behind.returncode == 1
    head = schema.head_revision()
    assert behind.stdout.strip() == f"(empty) (behind: run `llmrouter db upgrade` for {head})"
    upgraded = run_cli(config, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"upgraded the database from revision (empty) to {head}"
    current = run_cli(config, "db", "current")
    assert (current.returncode, current.stdout.strip()) == (0, f"{head} (at head)")
    again = run_cli(config, "db", "upgrade")
    assert again.stdout.strip() == f"the database is at revision {head} already"
    created = run_cli(config, "keys", "create", "--name", "after-upgrade")
    assert created.returncode == 0, created.stderr


def test_a_table_prefix_of_the_hosts_choosing_end_to_end(database_url: str, tables: Tables) -> None:
    before = table_names(database_url)
    config = gateway_config(database_url=database_url, table_prefix=tables.prefix)
    if not database_url.startswith("sqlite"):
        with pytest.raises(ConfigError, match="llmrouter db upgrade"):
            Router.from_config(config)
        store = Store(database_url, table_prefix=tables.prefix, check_schema=False)
        store.upgrade_database()
        store.close()
    router = Router.from_config(config)
    try:
        key, secret = router.create_key("prefixed", credits="1")
        answer = router.chat(
            model="echo#echo", messages=[{"role": "user", "content": "hi"}], api_key=secret
        )
        assert answer.choices[0].message.content == "hi"
        [row] = router.usage(key_id=key.id)
        assert (row.requests, row.provider, row.model) == (1, "echo", "echo#echo")
        head = schema.head_revision()
        assert router.database_revision() == (head, head)
    finally:
        router.close()
    made = table_names(database_url) - before
    assert made == {*tables.metadata.tables, tables.version_table}
    assert all(name.startswith(tables.prefix) for name in made)

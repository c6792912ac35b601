"""The store's schema revision: checked when a store starts, created at head on a fresh
SQLite database, upgraded by ``llmrouter db upgrade`` (Alembic, see ``llmrouter.migrations``).

Alembic is imported when a store starts, not with ``llmrouter``: importing the library
stays light (``tests/test_public_surface.py``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, inspect
from sqlalchemy.engine import Engine

from ..errors import DatabaseSchemaError
from .tables import Tables

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
UPGRADE_COMMAND = "llmrouter db upgrade"


def alembic_config(connection: Connection, tables: Tables) -> Config:
    """The Alembic configuration of the shipped migrations, on ``connection`` (no ini file:
    ``migrations/env.py`` reads the connection and the prefix from its attributes)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    config.attributes["tables"] = tables
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return ScriptDirectory.from_config(config)


def head_revision() -> str:
    """The revision this version of llmrouter's tables are at."""
    head = _scripts().get_current_head()
    assert head is not None  # the baseline ships with the package
    return head


def current_revision(connection: Connection, tables: Tables) -> str | None:
    """The revision the database is at (``None``: never migrated)."""
    return _context(connection, tables).get_current_revision()


def _context(connection: Connection, tables: Tables) -> Any:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection, opts={"version_table": tables.version_table})


def upgrade(engine: Engine, tables: Tables) -> str:
    """Bring the database to head, in one transaction where the database has transactional
    DDL (SQLite, PostgreSQL); returns the head revision.

    A database whose llmrouter tables were made before migrations existed (by the
    ``create_all`` of earlier versions: the baseline's tables and columns, constraint
    names aside) is adopted as at the baseline, then upgraded.
    """
    from alembic import command

    with engine.connect() as conn, conn.begin():
        if current_revision(conn, tables) is None and _has_tables(conn, tables):
            _check_adoptable(conn, tables)
            command.stamp(alembic_config(conn, tables), _baseline())
        command.upgrade(alembic_config(conn, tables), "head")
    return head_revision()


def ensure_current(engine: Engine, tables: Tables, *, create_if_empty: bool) -> None:
    """Refuse a database that is not at this version's revision, with the command to run;
    an empty one is created at head when ``create_if_empty`` (and refused otherwise).

    Checked and created in one transaction: on SQLite a writer's (``BEGIN IMMEDIATE``), so
    processes starting together on a new file create it once.
    """
    head = head_revision()
    with engine.connect() as conn, conn.begin():
        revision = current_revision(conn, tables)
        if revision == head:
            return
        where = engine.url.render_as_string()
        if revision is None and not _has_tables(conn, tables):
            if not create_if_empty:
                raise DatabaseSchemaError(
                    f"the database {where} has no llmrouter tables ({tables.prefix}*): "
                    f"create them with `{UPGRADE_COMMAND}`",
                    key="database_url",
                )
            tables.metadata.create_all(conn)
            _context(conn, tables).stamp(_scripts(), head)
            return
        if revision is None:
            raise DatabaseSchemaError(
                f"the database {where} has llmrouter tables ({tables.prefix}*) from before "
                f"migrations: bring them to revision {head} with `{UPGRADE_COMMAND}`",
                key="database_url",
            )
        if revision not in {script.revision for script in _scripts().walk_revisions()}:
            raise DatabaseSchemaError(
                f"the database {where} is at revision {revision}, which this version of "
                f"llmrouter does not know (its head is {head}): upgrade llmrouter",
                key="database_url",
            )
        raise DatabaseSchemaError(
            f"the database {where} is at revision {revision}, this version of llmrouter "
            f"needs {head}: run `{UPGRADE_COMMAND}`",
            key="database_url",
        )


def _baseline() -> str:
    return next(s.revision for s in _scripts().walk_revisions() if s.down_revision is None)


def _has_tables(conn: Connection, tables: Tables) -> bool:
    return any(tables.owns(name) for name in inspect(conn).get_table_names())


def _check_adoptable(conn: Connection, tables: Tables) -> None:
    """Adopting stamps the baseline without running it: only when every baseline table and
    column is there (tables of an older, column-short shape are refused, not mislabelled)."""
    from ..migrations.versions import r0001_baseline

    found = inspect(conn)
    present = set(found.get_table_names())
    for table in r0001_baseline.baseline_metadata(tables.prefix).sorted_tables:
        if table.name not in present:
            missing = f"table {table.name}"
        else:
            columns = {column["name"] for column in found.get_columns(table.name)}
            absent = [c.name for c in table.columns if c.name not in columns]
            if not absent:
                continue
            missing = f"{table.name}.{absent[0]}"
        raise DatabaseSchemaError(
            f"the llmrouter tables ({tables.prefix}*) in {conn.engine.url.render_as_string()} "
            f"are older than migrations and lack {missing}: they cannot be adopted; move "
            "their data to a fresh database created with `llmrouter db upgrade`",
            key="database_url",
        )

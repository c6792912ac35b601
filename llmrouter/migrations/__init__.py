"""The store's schema history: Alembic revisions shipped inside the package.

``env.py`` is configured in code (``llmrouter.store.schema.alembic_config``): no
``alembic.ini`` is needed. It runs on the store's own connection, with the table prefix of
the store (``table_prefix``), and keeps its version row in ``<prefix>alembic_version``, so
it never meets the host's own Alembic history. Users run ``llmrouter db upgrade`` (or
``Router.upgrade_database()``); a fresh SQLite database is created at head by the store.

The rule: every change to ``llmrouter/store/tables.py`` comes with a revision in
``versions/`` (a module ``rNNNN_what.py`` whose ``down_revision`` is the previous head),
written against ``prefix()`` — never a hard-coded table name — and with constraint and
index names spelled as ``tables.NAMING_CONVENTION`` makes them. A revision is never edited
once released. ``tests/test_migrations.py`` upgrades an empty database on every backend
and compares it with the tables in code: a change without its revision fails there.
"""

from __future__ import annotations

from alembic import context


def prefix() -> str:
    """The table prefix of the migration being run (for revisions)."""
    return str(context.config.attributes["tables"].prefix)

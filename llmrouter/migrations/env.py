"""Alembic's environment for the store: the connection, prefix and version table come from
the configuration ``llmrouter.store.schema.alembic_config`` builds."""

from __future__ import annotations

from alembic import context

config = context.config
tables = config.attributes["tables"]

if context.is_offline_mode():
    raise RuntimeError("llmrouter's migrations run on a live connection (llmrouter db upgrade)")


def _ours(name: str | None, type_: str, _parent: object) -> bool:
    # The host's tables share the database: autogenerate and compare only ours.
    return type_ != "table" or (name is not None and tables.owns(name))


context.configure(
    connection=config.attributes["connection"],
    target_metadata=tables.metadata,
    version_table=tables.version_table,
    include_name=_ours,
    # SQLite cannot ALTER most things: later revisions' batch operations copy the table
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()

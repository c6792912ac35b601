"""Provider connections made over HTTP, the directory's change counter, and the chat
sessions of the connections' chat route (issue 9).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import BigInteger, Column, Integer, MetaData, SmallInteger, String, Table, Text

from llmrouter.migrations import prefix

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BigId = BigInteger().with_variant(Integer, "sqlite")
_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}


def _tables(p: str) -> MetaData:
    metadata = MetaData(naming_convention=_CONVENTION)
    Table(
        p + "connections",
        metadata,
        Column("id", String(40), primary_key=True),
        Column("name", String(100), nullable=False),
        Column("name_folded", String(100), nullable=False, unique=True),
        Column("provider", String(32), nullable=False),
        Column("model", String(200), nullable=True),
        Column("base_url", String(2000), nullable=True),
        Column("api_key_encrypted", Text, nullable=True),
        Column("api_key_hint", String(40), nullable=True),
        Column("configuration", Text, nullable=False),
        Column("models", Text, nullable=False),
        Column("status", String(16), nullable=False),
        Column("status_reason", String(500), nullable=True),
        Column("cost_base_nanos", BigInteger, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
    )
    Table(
        p + "directory_version",
        metadata,
        Column("id", SmallInteger, primary_key=True, autoincrement=False),
        Column("version", BigInteger, nullable=False),
    )
    Table(
        p + "chat_sessions",
        metadata,
        Column("id", String(40), primary_key=True),
        Column("connection_id", String(40), nullable=False, index=True),
        Column("key_id", String(32), nullable=False),
        Column("title", String(200), nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
    )
    Table(
        p + "chat_messages",
        metadata,
        Column("id", _BigId, primary_key=True, autoincrement=True),
        Column("session_id", String(40), nullable=False, index=True),
        Column("role", String(16), nullable=False),
        Column("content", Text, nullable=False),
        Column("request_id", String(64), nullable=True),
        Column("created_at", BigInteger, nullable=False),
    )
    return metadata


def upgrade() -> None:
    _tables(prefix()).create_all(op.get_bind())


def downgrade() -> None:
    _tables(prefix()).drop_all(op.get_bind())

"""Async video tasks and their admission tickets (issue 10).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

from llmrouter.migrations import prefix

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}


def _tables(p: str) -> MetaData:
    metadata = MetaData(naming_convention=_CONVENTION)
    Table(
        p + "video_tasks",
        metadata,
        Column("id", String(40), primary_key=True),
        Column("key_id", String(32), nullable=False),
        Column("request_id", String(64), nullable=False, unique=True),
        Column("provider", String(100), nullable=False),
        Column("model", String(320), nullable=False),
        Column("upstream_model", String(200), nullable=False),
        Column("upstream_id", String(200), nullable=True),
        Column("status", String(16), nullable=False),
        Column("progress", SmallInteger, nullable=True),
        Column("video_url", Text, nullable=True),
        Column("video_expires_at", BigInteger, nullable=True),
        Column("error", String(500), nullable=True),
        Column("prompt", Text, nullable=False),
        Column("duration", Integer, nullable=False),
        Column("resolution", String(16), nullable=False),
        Column("ratio", String(16), nullable=False),
        Column("images", Text, nullable=False),
        Column("reserved_nanos", BigInteger, nullable=False),
        Column("cost_nanos", BigInteger, nullable=True),
        Column("charged_nanos", BigInteger, nullable=True),
        Column("idempotency_key", String(200), nullable=True),
        Column("body_hash", String(64), nullable=True),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
        Column("polled_at", BigInteger, nullable=False),
        Column("expires_at", BigInteger, nullable=False),
        Index(None, "key_id", "created_at"),
        Index(None, "key_id", "idempotency_key", unique=True),
        Index(None, "status", "expires_at"),
    )
    return metadata


def upgrade() -> None:
    _tables(prefix()).create_all(op.get_bind())


def downgrade() -> None:
    _tables(prefix()).drop_all(op.get_bind())

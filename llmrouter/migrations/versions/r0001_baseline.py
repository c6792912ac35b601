"""The baseline: the tables as llmrouter 0.1 made them, frozen here (later changes are
later revisions, never edits of this one).

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
)

from llmrouter.migrations import prefix

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BigId = BigInteger().with_variant(Integer, "sqlite")
_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def baseline_metadata(p: str) -> MetaData:
    """The baseline's tables under prefix ``p`` (also what adopting a pre-migrations
    database checks it against)."""
    metadata = MetaData(naming_convention=_CONVENTION)
    Table(
        p + "api_keys",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("name", String(200), nullable=False),
        Column("secret_hash", String(64), nullable=False, unique=True),
        Column("secret_hint", String(32), nullable=False),
        Column("is_admin", Boolean, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("revoked_at", BigInteger, nullable=True),
        Column("daily_requests", Integer, nullable=True),
        Column("throttle_seconds", Integer, nullable=True),
        Column("requests_per_minute", Integer, nullable=True),
        Column("quota_day", Integer, nullable=False),
        Column("day_count", Integer, nullable=False),
        Column("next_slot_at", BigInteger, nullable=False),
        Column("minute", BigInteger, nullable=False),
        Column("minute_count", Integer, nullable=False),
        Column("last_admission", SmallInteger, nullable=False),
        Column("balance_nanos", BigInteger, nullable=False),
        Column("spent_nanos", BigInteger, nullable=False),
        Column("topped_up_nanos", BigInteger, nullable=False),
    )
    Table(
        p + "ledger",
        metadata,
        Column("id", _BigId, primary_key=True, autoincrement=True),
        Column("request_id", String(64), nullable=False, unique=True),
        Column("key_id", String(32), nullable=False),
        Column("provider", String(100), nullable=False),
        Column("model", String(320), nullable=False),
        Column("upstream_model", String(200), nullable=False),
        Column("admission", String(16), nullable=False),
        Column("status", String(16), nullable=False),
        Column("prompt_tokens", Integer, nullable=False),
        Column("completion_tokens", Integer, nullable=False),
        Column("usage_estimated", Boolean, nullable=False),
        Column("cost_nanos", BigInteger, nullable=False),
        Column("charged_nanos", BigInteger, nullable=False),
        Column("day", Integer, nullable=False),
        Column("started_at", BigInteger, nullable=False),
        Column("finished_at", BigInteger, nullable=True),
        Column("error", String(500), nullable=True),
        Column("reserved_nanos", BigInteger, nullable=False),
        Column("slot_at", BigInteger, nullable=False),
        Column("deadline_at", BigInteger, nullable=True),
        Index(None, "key_id", "day"),
        Index(None, "day"),
        Index(None, "status", "deadline_at"),
    )
    Table(
        p + "provider_totals",
        metadata,
        Column("provider", String(100), primary_key=True),
        Column("requests", BigInteger, nullable=False),
        Column("prompt_tokens", BigInteger, nullable=False),
        Column("completion_tokens", BigInteger, nullable=False),
        Column("cost_nanos", BigInteger, nullable=False),
    )
    Table(
        p + "top_ups",
        metadata,
        Column("id", _BigId, primary_key=True, autoincrement=True),
        Column("key_id", String(32), nullable=False, index=True),
        Column("amount_nanos", BigInteger, nullable=False),
        Column("created_at", BigInteger, nullable=False),
    )
    return metadata


def upgrade() -> None:
    baseline_metadata(prefix()).create_all(op.get_bind())


def downgrade() -> None:
    baseline_metadata(prefix()).drop_all(op.get_bind())

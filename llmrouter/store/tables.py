"""The SQLAlchemy tables of the store, prefixed ``llmrouter_`` to live in a host's database.

Money columns hold integer nano-dollars (BIGINT): exact on SQLite, PostgreSQL and MariaDB.
Times are integer Unix milliseconds; ``day`` columns are UTC days since 1970-01-01.

A ledger row is written by the admission, as ``pending``, in the same transaction as the
admission statement: it is the call's ticket, saying what the call holds (its allowance
unit, throttle slot or reservation) until settlement completes it (``ok`` / ``partial`` /
``failed``) or the sweeper closes it (``abandoned``).
"""

from __future__ import annotations

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

metadata = MetaData()

# An auto-incrementing BIGINT primary key (SQLite only auto-increments INTEGER).
_BigId = BigInteger().with_variant(Integer, "sqlite")

api_keys = Table(
    "llmrouter_api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("secret_hint", String(32), nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    # per-key overrides of the [quota] defaults; NULL means "the default"
    Column("daily_requests", Integer, nullable=True),
    Column("throttle_seconds", Integer, nullable=True),
    Column("requests_per_minute", Integer, nullable=True),
    # fair-use state, changed only by the one admission statement (and its release)
    Column("quota_day", Integer, nullable=False, default=0),
    Column("day_count", Integer, nullable=False, default=0),
    Column("next_slot_at", BigInteger, nullable=False, default=0),
    Column("minute", BigInteger, nullable=False, default=0),
    Column("minute_count", Integer, nullable=False, default=0),
    Column("last_admission", SmallInteger, nullable=False, default=0),
    # money, nano-dollars: balance excludes what is reserved by calls in flight
    Column("balance_nanos", BigInteger, nullable=False, default=0),
    Column("spent_nanos", BigInteger, nullable=False, default=0),
    Column("topped_up_nanos", BigInteger, nullable=False, default=0),
)

ledger = Table(
    "llmrouter_ledger",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, unique=True),
    Column("key_id", String(32), nullable=False),
    Column("provider", String(100), nullable=False),
    Column("model", String(320), nullable=False),
    Column("upstream_model", String(200), nullable=False),
    Column("admission", String(16), nullable=False),
    # pending | ok | partial | failed | abandoned
    Column("status", String(16), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("usage_estimated", Boolean, nullable=False, default=False),
    Column("cost_nanos", BigInteger, nullable=False),
    Column("charged_nanos", BigInteger, nullable=False),
    Column("day", Integer, nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger, nullable=True),
    Column("error", String(500), nullable=True),
    # what the admission took, to hand back: the credits reserved, and the throttle slot
    # (the key's next_slot_at it set), and when a pending row is overdue for the sweeper
    Column("reserved_nanos", BigInteger, nullable=False, default=0),
    Column("slot_at", BigInteger, nullable=False, default=0),
    Column("deadline_at", BigInteger, nullable=True),
    Index("ix_llmrouter_ledger_key_day", "key_id", "day"),
    Index("ix_llmrouter_ledger_day", "day"),
    Index("ix_llmrouter_ledger_status_deadline", "status", "deadline_at"),
)

provider_totals = Table(
    "llmrouter_provider_totals",
    metadata,
    Column("provider", String(100), primary_key=True),
    Column("requests", BigInteger, nullable=False, default=0),
    Column("prompt_tokens", BigInteger, nullable=False, default=0),
    Column("completion_tokens", BigInteger, nullable=False, default=0),
    Column("cost_nanos", BigInteger, nullable=False, default=0),
)

top_ups = Table(
    "llmrouter_top_ups",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("key_id", String(32), nullable=False, index=True),
    Column("amount_nanos", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

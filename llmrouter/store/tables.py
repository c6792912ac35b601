"""The SQLAlchemy tables of the store, built per table prefix (default ``llmrouter_``) so
they can live in a host's database beside its own tables.

Money columns hold integer nano-dollars (BIGINT): exact on SQLite, PostgreSQL and MariaDB.
Times are integer Unix milliseconds; ``day`` columns are UTC days since 1970-01-01.

A ledger row is written by the admission, as ``pending``, in the same transaction as the
admission statement: it is the call's ticket, saying what the call holds (its allowance
unit, throttle slot or reservation) until settlement completes it (``ok`` / ``partial`` /
``failed``) or the sweeper closes it (``abandoned``). A built-in tool loop adds a row per
further upstream round of the same exchange (``request_id`` + ``round``), each holding
only its own reservation (``Store.settle_and_open`` opens it holding what the round before
left of its reservation; ``Store.resize_reservation`` sizes it).

Constraints and indexes are named by ``NAMING_CONVENTION``, so every database (and every
Alembic revision) calls them the same. A change to these tables needs its revision in
``llmrouter/migrations/versions`` (see ``llmrouter.migrations``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

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
    Text,
    UniqueConstraint,
    text,
)

from ..errors import ConfigError

DEFAULT_PREFIX = "llmrouter_"
#: lower case (MySQL table names are case-sensitive on some hosts, not on others), and
#: short enough that the longest constraint name stays within MySQL's 64 characters
PREFIX_PATTERN = r"^[a-z][a-z0-9_]{0,29}$"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# An auto-incrementing BIGINT primary key (SQLite only auto-increments INTEGER).
_BigId = BigInteger().with_variant(Integer, "sqlite")


@dataclass(frozen=True)
class Tables:
    """The store's tables under one prefix, and the name of its Alembic version table."""

    prefix: str
    metadata: MetaData
    api_keys: Table
    ledger: Table
    provider_totals: Table
    top_ups: Table
    connections: Table
    directory_version: Table
    chat_sessions: Table
    chat_messages: Table
    video_tasks: Table

    @property
    def version_table(self) -> str:
        """Prefixed too, so it never meets the host's own ``alembic_version``."""
        return self.prefix + "alembic_version"

    def owns(self, table_name: str) -> bool:
        """Whether a table of a database is one of these (or their version table)."""
        return table_name in self.metadata.tables or table_name == self.version_table


@functools.cache
def build_tables(prefix: str = DEFAULT_PREFIX) -> Tables:
    """The tables under ``prefix``; one object per prefix, shared by every Store."""
    if not re.fullmatch(PREFIX_PATTERN, prefix):
        raise ConfigError(
            f"'{prefix}' is not a table prefix: lower-case letters, digits and '_', "
            "starting with a letter, at most 30 characters",
            key="table_prefix",
        )
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    api_keys = Table(
        prefix + "api_keys",
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
        # what the key may call: JSON lists of Provider#Model names and of provider names
        # (NULL: no restriction of that kind); bumped version on every change, which the
        # admission compares with the version its caller decided on (see admission.py)
        Column("allowed_models", Text, nullable=True),
        Column("allowed_providers", Text, nullable=True),
        # the router's built-in tools the key may be offered, a JSON list of tool names
        # (NULL: every one the config enables)
        Column("allowed_tools", Text, nullable=True),
        Column("restrictions_version", Integer, nullable=False, server_default=text("0")),
    )
    ledger = Table(
        prefix + "ledger",
        metadata,
        Column("id", _BigId, primary_key=True, autoincrement=True),
        # the exchange (one admission) and its upstream round: 1, then one row per further
        # round of a built-in tool loop (which holds only its own reservation)
        Column("request_id", String(64), nullable=False),
        Column("round", Integer, nullable=False, server_default=text("1")),
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
        UniqueConstraint("request_id", "round"),
        Index(None, "key_id", "day"),
        Index(None, "day"),
        Index(None, "status", "deadline_at"),
    )
    provider_totals = Table(
        prefix + "provider_totals",
        metadata,
        Column("provider", String(100), primary_key=True),
        Column("requests", BigInteger, nullable=False, default=0),
        Column("prompt_tokens", BigInteger, nullable=False, default=0),
        Column("completion_tokens", BigInteger, nullable=False, default=0),
        Column("cost_nanos", BigInteger, nullable=False, default=0),
    )
    top_ups = Table(
        prefix + "top_ups",
        metadata,
        Column("id", _BigId, primary_key=True, autoincrement=True),
        Column("key_id", String(32), nullable=False, index=True),
        Column("amount_nanos", BigInteger, nullable=False),
        Column("created_at", BigInteger, nullable=False),
    )
    connections = Table(
        prefix + "connections",
        metadata,
        Column("id", String(40), primary_key=True),
        Column("name", String(100), nullable=False),
        # the name lower-cased: names are unique case-insensitively on every database
        Column("name_folded", String(100), nullable=False, unique=True),
        Column("provider", String(32), nullable=False),
        Column("model", String(200), nullable=True),
        Column("base_url", String(2000), nullable=True),
        # the provider's API key, encrypted (llmrouter/secrets.py); the hint is its mask
        Column("api_key_encrypted", Text, nullable=True),
        Column("api_key_hint", String(40), nullable=True),
        # JSON: request defaults, and models as [[providers.models]] lists them
        Column("configuration", Text, nullable=False),
        Column("models", Text, nullable=False),
        # active | error | disabled, and the reason of the last failed test
        Column("status", String(16), nullable=False),
        Column("status_reason", String(500), nullable=True),
        # the name's provider totals when this connection was made: its totalCost is the
        # difference (a deleted connection's ledger and totals stay under its name)
        Column("cost_base_nanos", BigInteger, nullable=False, default=0),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
    )
    # One row: bumped in the transaction of every change to the connections, read by every
    # process (at most once a second) to know when to rebuild its provider directory.
    directory_version = Table(
        prefix + "directory_version",
        metadata,
        Column("id", SmallInteger, primary_key=True, autoincrement=False),
        Column("version", BigInteger, nullable=False),
    )
    chat_sessions = Table(
        prefix + "chat_sessions",
        metadata,
        Column("id", String(40), primary_key=True),
        Column("connection_id", String(40), nullable=False, index=True),
        Column("key_id", String(32), nullable=False),
        Column("title", String(200), nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
    )
    chat_messages = Table(
        prefix + "chat_messages",
        metadata,
        Column("id", _BigId, primary_key=True, autoincrement=True),
        Column("session_id", String(40), nullable=False, index=True),
        Column("role", String(16), nullable=False),
        Column("content", Text, nullable=False),
        # the ledger row of the call that produced an assistant turn
        Column("request_id", String(64), nullable=True),
        Column("created_at", BigInteger, nullable=False),
    )
    # An async video task: its admission ticket (the ledger row ``request_id``, pending
    # until the task ends) and what the provider last said of it.
    video_tasks = Table(
        prefix + "video_tasks",
        metadata,
        Column("id", String(40), primary_key=True),
        Column("key_id", String(32), nullable=False),
        Column("request_id", String(64), nullable=False, unique=True),
        Column("provider", String(100), nullable=False),
        Column("model", String(320), nullable=False),
        Column("upstream_model", String(200), nullable=False),
        # the provider's task id: NULL while the create call is in flight
        Column("upstream_id", String(200), nullable=True),
        # submitting | queued | running | succeeded | failed | cancelled | expired
        Column("status", String(16), nullable=False),
        Column("progress", SmallInteger, nullable=True),
        Column("video_url", Text, nullable=True),
        Column("video_expires_at", BigInteger, nullable=True),
        Column("error", String(500), nullable=True),
        Column("prompt", Text, nullable=False),
        Column("duration", Integer, nullable=False),
        Column("resolution", String(16), nullable=False),
        Column("ratio", String(16), nullable=False),
        Column("images", Text, nullable=False),  # JSON: [{"url", "role"}]
        Column("reserved_nanos", BigInteger, nullable=False),
        # when it ended: what the provider's report comes to, and what the key paid (never
        # above the reservation)
        Column("cost_nanos", BigInteger, nullable=True),
        Column("charged_nanos", BigInteger, nullable=True),
        Column("idempotency_key", String(200), nullable=True),
        Column("body_hash", String(64), nullable=True),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
        # when a process last asked the provider (a poll claims the task by moving it)
        Column("polled_at", BigInteger, nullable=False),
        # past this the task is ended as expired, whatever the provider says
        Column("expires_at", BigInteger, nullable=False),
        Index(None, "key_id", "created_at"),
        Index(None, "key_id", "idempotency_key", unique=True),
        Index(None, "status", "expires_at"),
    )
    return Tables(
        prefix,
        metadata,
        api_keys,
        ledger,
        provider_totals,
        top_ups,
        connections,
        directory_version,
        chat_sessions,
        chat_messages,
        video_tasks,
    )


# The default prefix's tables, as module names (what most code and tests read).
_default = build_tables()
metadata = _default.metadata
api_keys = _default.api_keys
ledger = _default.ledger
provider_totals = _default.provider_totals
top_ups = _default.top_ups
connections = _default.connections
directory_version = _default.directory_version
chat_sessions = _default.chat_sessions
chat_messages = _default.chat_messages
video_tasks = _default.video_tasks

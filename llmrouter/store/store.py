"""The store: every read and atomic write llmrouter makes to its SQL database."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, create_engine, event, func, insert, select, text, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.pool import StaticPool

from ..errors import ConfigError, NotFoundError, StoreUnavailableError
from .admission import RESULT_COLUMNS, UNLIMITED, admission_statement
from .records import (
    Admission,
    AdmissionKind,
    KeyRecord,
    ProviderTotal,
    QuotaDefaults,
    Settlement,
    UsageRow,
)
from .tables import api_keys, ledger, metadata, provider_totals, top_ups

SECRET_PREFIX = "sk-llmr-"
_k = api_keys.c


def hash_secret(secret: str) -> str:
    """Keys are 192 random bits, so a plain SHA-256 is enough (no slow KDF needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Store:
    """One SQL database (SQLite, PostgreSQL, MariaDB/MySQL) holding keys, quotas and money."""

    def __init__(self, database_url: str, *, engine: Engine | None = None) -> None:
        self.engine = engine or _create_engine(database_url)
        dialect = self.engine.dialect
        self._left_to_right = dialect.name in ("mysql", "mariadb")
        self._returning = bool(dialect.update_returning)
        # An in-memory SQLite database is one shared connection: one transaction at a time.
        self._memory_lock = threading.Lock() if _is_sqlite_memory(self.engine) else None
        self._admit = {
            premium: admission_statement(premium=premium, left_to_right=self._left_to_right)
            for premium in (False, True)
        }
        metadata.create_all(self.engine)

    # ---------------------------------------------------------------- plumbing

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction; a database that cannot be reached becomes ``StoreUnavailableError``."""
        lock = self._memory_lock
        if lock:
            lock.acquire()
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreUnavailableError(
                f"the database is unavailable ({type(exc.orig).__name__})"
            ) from exc
        finally:
            if lock:
                lock.release()

    def ping(self) -> None:
        with self.transaction() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- keys

    def create_key(
        self,
        name: str,
        *,
        is_admin: bool = False,
        credits_nanos: int = 0,
        now: int,
        daily_requests: int | None = None,
        throttle_seconds: int | None = None,
        requests_per_minute: int | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key and its secret. The secret is returned once and never stored."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(24)
        key_id = "key_" + secrets.token_hex(8)
        with self.transaction() as conn:
            conn.execute(
                insert(api_keys).values(
                    id=key_id,
                    name=name,
                    secret_hash=hash_secret(secret),
                    secret_hint=secret[: len(SECRET_PREFIX) + 4] + "…",
                    is_admin=is_admin,
                    created_at=now,
                    daily_requests=daily_requests,
                    throttle_seconds=throttle_seconds,
                    requests_per_minute=requests_per_minute,
                    balance_nanos=0,
                    spent_nanos=0,
                    topped_up_nanos=0,
                    quota_day=0,
                    day_count=0,
                    next_slot_at=0,
                    minute=0,
                    minute_count=0,
                    last_admission=0,
                )
            )
            if credits_nanos:
                self._top_up(conn, key_id, credits_nanos, now)
        return self.get_key(key_id), secret

    def find_key(self, secret_hash: str) -> KeyRecord | None:
        """The key whose secret hashes to ``secret_hash`` (see ``hash_secret``)."""
        with self.transaction() as conn:
            row = conn.execute(select(api_keys).where(_k.secret_hash == secret_hash)).first()
        return _key_record(row) if row else None

    def get_key(self, key_id: str) -> KeyRecord:
        with self.transaction() as conn:
            row = conn.execute(select(api_keys).where(_k.id == key_id)).first()
        if row is None:
            raise NotFoundError(f"no API key with id '{key_id}'", param="key_id")
        return _key_record(row)

    def list_keys(self) -> list[KeyRecord]:
        with self.transaction() as conn:
            rows = conn.execute(select(api_keys).order_by(_k.created_at, _k.id)).all()
        return [_key_record(r) for r in rows]

    def revoke_key(self, key_id: str, *, now: int) -> KeyRecord:
        with self.transaction() as conn:
            conn.execute(
                update(api_keys)
                .where(_k.id == key_id, _k.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return self.get_key(key_id)

    def top_up(self, key_id: str, amount_nanos: int, *, now: int) -> KeyRecord:
        with self.transaction() as conn:
            self._top_up(conn, key_id, amount_nanos, now)
        return self.get_key(key_id)

    def _top_up(self, conn: Connection, key_id: str, amount_nanos: int, now: int) -> None:
        changed = conn.execute(
            update(api_keys)
            .where(_k.id == key_id)
            .values(
                balance_nanos=_k.balance_nanos + amount_nanos,
                topped_up_nanos=_k.topped_up_nanos + amount_nanos,
            )
        ).rowcount
        if not changed:
            raise NotFoundError(f"no API key with id '{key_id}'", param="key_id")
        conn.execute(
            insert(top_ups).values(key_id=key_id, amount_nanos=amount_nanos, created_at=now)
        )

    # ---------------------------------------------------------------- quota and money

    def admit(
        self,
        key_id: str,
        *,
        now: int,
        defaults: QuotaDefaults,
        reserve_nanos: int,
        premium: bool,
    ) -> Admission:
        """Decide and record, in one atomic statement, whether this key may make a call."""
        day, minute = now // 86_400_000, now // 60_000
        params: dict[str, Any] = {
            "key_id": key_id,
            "day": day,
            "now": now,
            "minute": minute,
            "reserve": reserve_nanos,
            "default_limit": defaults.daily_requests,
            "default_throttle": defaults.throttle_seconds,
            "default_rpm": defaults.requests_per_minute or UNLIMITED,
        }
        statement = self._admit[premium]
        with self.transaction() as conn:
            if self._returning:
                row = conn.execute(statement.returning(*RESULT_COLUMNS), params).first()
            else:
                changed = conn.execute(statement, params).rowcount
                row = (
                    conn.execute(select(*RESULT_COLUMNS).where(_k.id == key_id), params).first()
                    if changed
                    else None
                )
        if row is None:
            raise NotFoundError(f"no active API key with id '{key_id}'", param="key_id")
        kind = AdmissionKind(row.last_admission)
        return Admission(
            key_id=key_id,
            kind=kind,
            at=now,
            day=day,
            reserved_nanos=reserve_nanos if kind is AdmissionKind.CREDITS else 0,
            daily_limit=row.daily_limit,
            day_count=row.day_count,
            next_slot_at=row.next_slot_at,
            minute_count=row.minute_count,
            requests_per_minute=None if row.rpm == UNLIMITED else row.rpm,
            balance_nanos=row.balance_nanos,
        )

    def settle(self, settlement: Settlement) -> bool:
        """Write the call's ledger row and move its money, in one transaction.

        A failed call hands back what its admission took (allowance, throttle slot,
        reservation). Settling the same request id twice changes nothing: returns False.
        """
        admission = settlement.admission
        charged = settlement.charged_nanos
        try:
            with self.transaction() as conn:
                conn.execute(
                    insert(ledger).values(
                        request_id=settlement.request_id,
                        key_id=admission.key_id,
                        provider=settlement.provider,
                        model=settlement.model,
                        upstream_model=settlement.upstream_model,
                        admission=admission.kind.label,
                        status=settlement.status,
                        prompt_tokens=settlement.prompt_tokens,
                        completion_tokens=settlement.completion_tokens,
                        usage_estimated=settlement.usage_estimated,
                        cost_nanos=settlement.cost_nanos,
                        charged_nanos=charged,
                        day=settlement.finished_at // 86_400_000,
                        started_at=admission.at,
                        finished_at=settlement.finished_at,
                        error=(settlement.error or None) and settlement.error[:500],
                    )
                )
                if settlement.status == "failed":
                    self._release(conn, admission)
                elif admission.reserved_nanos:
                    conn.execute(
                        update(api_keys)
                        .where(_k.id == admission.key_id)
                        .values(
                            balance_nanos=_k.balance_nanos + (admission.reserved_nanos - charged),
                            spent_nanos=_k.spent_nanos + charged,
                        )
                    )
                self._add_provider_total(conn, settlement)
        except IntegrityError:
            return False
        return True

    def _release(self, conn: Connection, admission: Admission) -> None:
        """Give back what a call that produced nothing took at admission."""
        where = _k.id == admission.key_id
        if admission.kind is AdmissionKind.ALLOWANCE:
            conn.execute(
                update(api_keys)
                .where(where, _k.quota_day == admission.day, _k.day_count > 0)
                .values(day_count=_k.day_count - 1)
            )
        elif admission.kind is AdmissionKind.CREDITS:
            conn.execute(
                update(api_keys)
                .where(where)
                .values(balance_nanos=_k.balance_nanos + admission.reserved_nanos)
            )
        elif admission.kind is AdmissionKind.THROTTLE_SLOT:
            # Reopen the slot, unless a later admission already moved it on.
            conn.execute(
                update(api_keys)
                .where(where, _k.next_slot_at == admission.next_slot_at)
                .values(next_slot_at=admission.at)
            )

    def _add_provider_total(self, conn: Connection, settlement: Settlement) -> None:
        c = provider_totals.c
        increments = {
            "requests": c.requests + 1,
            "prompt_tokens": c.prompt_tokens + settlement.prompt_tokens,
            "completion_tokens": c.completion_tokens + settlement.completion_tokens,
            "cost_nanos": c.cost_nanos + settlement.cost_nanos,
        }
        changed = conn.execute(
            update(provider_totals).where(c.provider == settlement.provider).values(increments)
        ).rowcount
        if not changed:
            conn.execute(
                insert(provider_totals).values(
                    provider=settlement.provider,
                    requests=1,
                    prompt_tokens=settlement.prompt_tokens,
                    completion_tokens=settlement.completion_tokens,
                    cost_nanos=settlement.cost_nanos,
                )
            )

    def ensure_providers(self, names: list[str]) -> None:
        """Create the totals row of each provider up front, so settling only UPDATEs."""
        c = provider_totals.c
        with self.transaction() as conn:
            present = set(conn.execute(select(c.provider)).scalars())
            for name in names:
                if name not in present:
                    conn.execute(
                        insert(provider_totals).values(
                            provider=name,
                            requests=0,
                            prompt_tokens=0,
                            completion_tokens=0,
                            cost_nanos=0,
                        )
                    )

    # ---------------------------------------------------------------- reports

    def usage(
        self,
        *,
        key_id: str | None = None,
        since_day: int | None = None,
        until_day: int | None = None,
    ) -> list[UsageRow]:
        """Calls, tokens, cost and charges per key, day, provider and model."""
        c = ledger.c
        failed = func.sum(func.cast(c.status == "failed", ledger.c.prompt_tokens.type))
        query = select(
            c.key_id,
            c.day,
            c.provider,
            c.model,
            func.count().label("requests"),
            failed.label("failed"),
            func.sum(c.prompt_tokens).label("prompt_tokens"),
            func.sum(c.completion_tokens).label("completion_tokens"),
            func.sum(c.cost_nanos).label("cost_nanos"),
            func.sum(c.charged_nanos).label("charged_nanos"),
        ).group_by(c.key_id, c.day, c.provider, c.model)
        if key_id is not None:
            query = query.where(c.key_id == key_id)
        if since_day is not None:
            query = query.where(c.day >= since_day)
        if until_day is not None:
            query = query.where(c.day <= until_day)
        query = query.order_by(c.day, c.key_id, c.provider, c.model)
        with self.transaction() as conn:
            rows = conn.execute(query).all()
        return [
            UsageRow(
                key_id=r.key_id,
                day=r.day,
                provider=r.provider,
                model=r.model,
                requests=int(r.requests),
                failed=int(r.failed or 0),
                prompt_tokens=int(r.prompt_tokens or 0),
                completion_tokens=int(r.completion_tokens or 0),
                cost_nanos=int(r.cost_nanos or 0),
                charged_nanos=int(r.charged_nanos or 0),
            )
            for r in rows
        ]

    def provider_totals(self) -> list[ProviderTotal]:
        c = provider_totals.c
        with self.transaction() as conn:
            rows = conn.execute(select(provider_totals).order_by(c.provider)).all()
        return [
            ProviderTotal(
                r.provider, r.requests, r.prompt_tokens, r.completion_tokens, r.cost_nanos
            )
            for r in rows
        ]


def _key_record(row: Any) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        hint=row.secret_hint,
        is_admin=bool(row.is_admin),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        balance_nanos=row.balance_nanos,
        spent_nanos=row.spent_nanos,
        daily_requests=row.daily_requests,
        throttle_seconds=row.throttle_seconds,
        requests_per_minute=row.requests_per_minute,
    )


def _is_sqlite_memory(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:")


def _create_engine(database_url: str) -> Engine:
    try:
        url = make_url(database_url)
    except SQLAlchemyError as exc:
        raise ConfigError(f"'{database_url}' is not a database URL", key="database_url") from exc
    backend = url.get_backend_name()
    try:
        if backend == "sqlite":
            return _sqlite_engine(url)
        if backend in ("mysql", "mariadb"):
            engine = create_engine(url, pool_pre_ping=True, pool_recycle=3600)
            event.listen(engine, "connect", _mysql_left_to_right)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except NoSuchModuleError:
        raise ConfigError(
            f"no database driver for '{url.drivername}' in '{url.render_as_string()}'",
            key="database_url",
        ) from None
    except ArgumentError as exc:
        raise ConfigError(str(exc), key="database_url") from None
    except ModuleNotFoundError as exc:
        extra = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}.get(backend)
        hint = f"; install it with: pip install 'llmrouter[{extra}]'" if extra else ""
        raise ConfigError(
            f"the database driver '{exc.name}' is not installed{hint}", key="database_url"
        ) from None


def _sqlite_engine(url: Any) -> Engine:
    memory = url.database in (None, "", ":memory:")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=StaticPool if memory else None,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, open transactions, and open them as writers
        # (BEGIN IMMEDIATE) so concurrent processes queue instead of deadlocking.
        dbapi_connection.isolation_level = None
        if not memory:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _mysql_left_to_right(dbapi_connection: Any, _record: Any) -> None:
    # The admission statement relies on MySQL's default left-to-right SET evaluation;
    # a server running with SIMULTANEOUS_ASSIGNMENT would break it, so switch it off here.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET SESSION sql_mode = REPLACE(@@sql_mode, 'SIMULTANEOUS_ASSIGNMENT', '')")

"""The store: every read and atomic write llmrouter makes to its SQL database."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    Update,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import (
    IntegrityError,
    OperationalError,
)

from ..billing import MAX_BALANCE_NANOS, nanos_to_usd
from ..errors import InvalidRequestError, NotFoundError, StoreUnavailableError
from . import settlement as settlement_sql
from .admission import RESULT_COLUMNS, UNLIMITED, admission_statement
from .engine import READ_ONLY, create_engine_for, is_sqlite_memory
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
        self.engine = engine or create_engine_for(database_url)
        dialect = self.engine.dialect
        self._left_to_right = dialect.name in ("mysql", "mariadb")
        self._returning = bool(dialect.update_returning)
        # An in-memory SQLite database is one shared connection: one transaction at a time.
        self._memory_lock = threading.Lock() if is_sqlite_memory(self.engine) else None
        # Built once: compiling a statement per call would double the request's overhead.
        self._admit = {
            premium: _with_result(
                admission_statement(premium=premium, left_to_right=self._left_to_right),
                returning=self._returning,
            )
            for premium in (False, True)
        }
        try:
            metadata.create_all(self.engine)
        except OperationalError as exc:
            raise StoreUnavailableError(
                f"the database is unavailable ({type(exc.orig).__name__}): "
                f"{self.engine.url.render_as_string()}"
            ) from exc

    # ---------------------------------------------------------------- plumbing

    @contextmanager
    def transaction(self, *, read_only: bool = False) -> Iterator[Connection]:
        """A transaction; a database that cannot be reached becomes ``StoreUnavailableError``.

        ``read_only`` ones do not queue behind writers on SQLite (see ``engine.READ_ONLY``).
        """
        lock = self._memory_lock
        if lock:
            lock.acquire()
        try:
            with self.engine.connect() as conn:
                if read_only:
                    conn.execution_options(**READ_ONLY)
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise StoreUnavailableError(
                f"the database is unavailable ({type(exc.orig).__name__})"
            ) from exc
        finally:
            if lock:
                lock.release()

    def ping(self) -> None:
        with self.transaction(read_only=True) as conn:
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
        with self.transaction(read_only=True) as conn:
            row = conn.execute(select(api_keys).where(_k.secret_hash == secret_hash)).first()
        return _key_record(row) if row else None

    def get_key(self, key_id: str) -> KeyRecord:
        with self.transaction(read_only=True) as conn:
            row = conn.execute(select(api_keys).where(_k.id == key_id)).first()
        if row is None:
            raise NotFoundError(f"no API key with id '{key_id}'", param="key_id")
        return _key_record(row)

    def list_keys(self) -> list[KeyRecord]:
        with self.transaction(read_only=True) as conn:
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
            .where(_k.id == key_id, _k.balance_nanos <= MAX_BALANCE_NANOS - amount_nanos)
            .values(
                balance_nanos=_k.balance_nanos + amount_nanos,
                topped_up_nanos=_k.topped_up_nanos + amount_nanos,
            )
        ).rowcount
        if not changed:
            self.get_key(key_id)  # NotFoundError for an unknown key
            raise InvalidRequestError(
                f"a balance is at most ${nanos_to_usd(MAX_BALANCE_NANOS)}", param="amount"
            )
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
                row = conn.execute(statement, params).first()
            else:
                changed = conn.execute(statement, params).rowcount
                row = conn.execute(_ADMISSION_READBACK, params).first() if changed else None
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
                    settlement_sql.LEDGER_INSERT,
                    {
                        "request_id": settlement.request_id,
                        "key_id": admission.key_id,
                        "provider": settlement.provider,
                        "model": settlement.model,
                        "upstream_model": settlement.upstream_model,
                        "admission": admission.kind.label,
                        "status": settlement.status,
                        "prompt_tokens": settlement.prompt_tokens,
                        "completion_tokens": settlement.completion_tokens,
                        "usage_estimated": settlement.usage_estimated,
                        "cost_nanos": settlement.cost_nanos,
                        "charged_nanos": charged,
                        "day": settlement.finished_at // 86_400_000,
                        "started_at": admission.at,
                        "finished_at": settlement.finished_at,
                        "error": settlement.error[:500] if settlement.error else None,
                    },
                )
                if settlement.status == "failed":
                    self._release(conn, admission)
                elif admission.reserved_nanos:
                    conn.execute(
                        settlement_sql.CHARGE,
                        {
                            "s_key": admission.key_id,
                            "s_refund": admission.reserved_nanos - charged,
                            "s_charged": charged,
                        },
                    )
                self._add_provider_total(conn, settlement)
        except IntegrityError:
            if not self._settled(settlement.request_id):
                raise
            return False
        return True

    def _settled(self, request_id: str) -> bool:
        with self.transaction(read_only=True) as conn:
            found = conn.execute(
                select(ledger.c.id).where(ledger.c.request_id == request_id)
            ).first()
        return found is not None

    def release(self, admission: Admission) -> None:
        """Hand back an admission whose request never became a call (no ledger row)."""
        with self.transaction() as conn:
            self._release(conn, admission)

    def _release(self, conn: Connection, admission: Admission) -> None:
        """Give back what a call that produced nothing took at admission."""
        statement = {
            AdmissionKind.ALLOWANCE: settlement_sql.RELEASE_ALLOWANCE,
            AdmissionKind.CREDITS: settlement_sql.RELEASE_CREDITS,
            AdmissionKind.THROTTLE_SLOT: settlement_sql.RELEASE_THROTTLE_SLOT,
        }[admission.kind]
        conn.execute(
            statement,
            {
                "s_key": admission.key_id,
                "s_day": admission.day,
                "s_reserved": admission.reserved_nanos,
                "s_slot": admission.next_slot_at,
                "s_at": admission.at,
            },
        )

    def _add_provider_total(self, conn: Connection, settlement: Settlement) -> None:
        params = {
            "t_provider": settlement.provider,
            "t_prompt": settlement.prompt_tokens,
            "t_completion": settlement.completion_tokens,
            "t_cost": settlement.cost_nanos,
        }
        if not conn.execute(settlement_sql.ADD_PROVIDER_TOTAL, params).rowcount:
            # A provider this database has not seen (its row is made at startup, so rarely).
            _create_provider_row(conn, settlement.provider)
            conn.execute(settlement_sql.ADD_PROVIDER_TOTAL, params)

    def ensure_providers(self, names: list[str]) -> None:
        """Create the totals row of each provider up front, so settling only UPDATEs."""
        with self.transaction() as conn:
            present = set(conn.execute(select(provider_totals.c.provider)).scalars())
            for name in set(names) - present:
                _create_provider_row(conn, name)

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
        with self.transaction(read_only=True) as conn:
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
        with self.transaction(read_only=True) as conn:
            rows = conn.execute(select(provider_totals).order_by(c.provider)).all()
        return [
            ProviderTotal(
                r.provider, r.requests, r.prompt_tokens, r.completion_tokens, r.cost_nanos
            )
            for r in rows
        ]


# MariaDB/MySQL have no UPDATE … RETURNING: the outcome is read back under the row lock.
_ADMISSION_READBACK = select(*RESULT_COLUMNS).where(_k.id == bindparam("key_id"))


def _with_result(statement: Update, *, returning: bool) -> Update:
    return statement.returning(*RESULT_COLUMNS) if returning else statement


def _create_provider_row(conn: Connection, provider: str) -> None:
    """An all-zero totals row, unless another process has just made it (several processes
    starting with a new provider race here; the loser's savepoint rolls back, nothing else)."""
    try:
        with conn.begin_nested():
            conn.execute(
                insert(provider_totals).values(
                    provider=provider,
                    requests=0,
                    prompt_tokens=0,
                    completion_tokens=0,
                    cost_nanos=0,
                )
            )
    except IntegrityError:
        pass


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

"""The store: every read and atomic write llmrouter makes to its SQL database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from sqlalchemy import (
    Connection,
    Update,
    bindparam,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from ..errors import NotFoundError, StoreUnavailableError
from . import settlement as settlement_sql
from .admission import RESULT_COLUMNS, UNLIMITED, admission_statement
from .engine import READ_ONLY, create_engine_for, is_sqlite_memory
from .key_store import KeyStore
from .records import (
    Admission,
    AdmissionKind,
    ProviderTotal,
    QuotaDefaults,
    Settlement,
    SweptCall,
    Ticket,
    UsageRow,
)
from .tables import api_keys, ledger, metadata, provider_totals

#: the ``error`` of a row the sweeper closed
ABANDONED_REASON = (
    "abandoned: not settled by its deadline (the serving process died, or lost the "
    "database); the reservation was released, the allowance unit stays used"
)
_k = api_keys.c


class Store(KeyStore):
    """One SQL database (SQLite, PostgreSQL, MariaDB/MySQL) holding keys, quotas and money."""

    def __init__(
        self, database_url: str, *, engine: Engine | None = None, timeout: float = 5.0
    ) -> None:
        self.engine = engine or create_engine_for(database_url, timeout=timeout)
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

    # ---------------------------------------------------------------- quota and money

    def admit(
        self,
        key_id: str,
        *,
        request_id: str,
        now: int,
        deadline_at: int,
        defaults: QuotaDefaults,
        reserve_nanos: int,
        premium: bool,
        provider: str,
        model: str,
        upstream_model: str,
    ) -> Admission:
        """Decide and record, in one atomic statement, whether this key may make a call;
        an admitted call's ticket (its ``pending`` ledger row) is written in the same
        transaction, so nothing the admission takes is ever held without a row."""
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
        ticket = None
        with self.transaction() as conn:
            if self._returning:
                row = conn.execute(statement, params).first()
            else:
                changed = conn.execute(statement, params).rowcount
                row = conn.execute(_ADMISSION_READBACK, params).first() if changed else None
            if row is None:
                raise NotFoundError(f"no active API key with id '{key_id}'", param="key_id")
            kind = AdmissionKind(row.last_admission)
            if kind.admitted:
                ticket = Ticket(
                    request_id=request_id,
                    key_id=key_id,
                    kind=kind,
                    at=now,
                    day=day,
                    reserved_nanos=reserve_nanos if kind is AdmissionKind.CREDITS else 0,
                    slot_at=row.next_slot_at,
                    deadline_at=deadline_at,
                )
                conn.execute(
                    settlement_sql.TICKET_INSERT,
                    _pending_row(ticket, provider, model, upstream_model),
                )
        return Admission(
            key_id=key_id,
            kind=kind,
            at=now,
            day=day,
            reserved_nanos=ticket.reserved_nanos if ticket else 0,
            daily_limit=row.daily_limit,
            day_count=row.day_count,
            next_slot_at=row.next_slot_at,
            minute_count=row.minute_count,
            requests_per_minute=None if row.rpm == UNLIMITED else row.rpm,
            balance_nanos=row.balance_nanos,
            ticket=ticket,
        )

    def settle(self, settlement: Settlement) -> bool:
        """Complete the call's ticket row and move its money, in one transaction.

        A failed call hands back what its admission took (allowance, throttle slot,
        reservation). A ticket already settled changes nothing: returns False. A ticket
        the sweeper closed (its process was thought dead) is still settled, once: the
        reservation already went back, so the charge is taken from the balance as it is
        now (which may leave it below zero: a debt that refuses paid calls until a top-up),
        and a failed call hands back the allowance unit the sweeper kept.
        """
        ticket = settlement.ticket
        charged = settlement.charged_nanos
        params = {
            "l_request_id": ticket.request_id,
            "l_provider": settlement.provider,
            "l_model": settlement.model,
            "l_upstream_model": settlement.upstream_model,
            "l_status": settlement.status,
            "l_prompt_tokens": settlement.prompt_tokens,
            "l_completion_tokens": settlement.completion_tokens,
            "l_usage_estimated": settlement.usage_estimated,
            "l_cost_nanos": settlement.cost_nanos,
            "l_charged_nanos": charged,
            "l_day": settlement.finished_at // 86_400_000,
            "l_finished_at": settlement.finished_at,
            "l_error": settlement.error[:500] if settlement.error else None,
        }
        with self.transaction() as conn:
            if ticket.reserved_nanos or settlement.status == "failed":
                _lock_key_first(conn, ticket.key_id)
            held = ticket
            if not conn.execute(settlement_sql.TICKET_COMPLETE, params).rowcount:
                if not conn.execute(settlement_sql.TICKET_COMPLETE_LATE, params).rowcount:
                    return False
                held = replace(ticket, reserved_nanos=0)  # the sweeper gave it back
            if settlement.status == "failed":
                self._release(conn, held)
            elif ticket.reserved_nanos:
                conn.execute(
                    settlement_sql.CHARGE,
                    {
                        "s_key": ticket.key_id,
                        "s_refund": held.reserved_nanos - charged,
                        "s_charged": charged,
                    },
                )
            self._add_provider_total(
                conn,
                settlement.provider,
                settlement.prompt_tokens,
                settlement.completion_tokens,
                settlement.cost_nanos,
            )
        return True

    def release(self, ticket: Ticket) -> bool:
        """Hand back an admission whose request never became a call: its row goes, and what
        it took comes back. A ticket already completed changes nothing: returns False."""
        with self.transaction() as conn:
            _lock_key_first(conn, ticket.key_id)
            deleted = conn.execute(
                settlement_sql.TICKET_DELETE, {"l_request_id": ticket.request_id}
            ).rowcount
            if deleted:
                self._release(conn, ticket)
        return bool(deleted)

    def _release(self, conn: Connection, ticket: Ticket) -> None:
        """Give back what a call that produced nothing took at admission."""
        statement = {
            AdmissionKind.ALLOWANCE: settlement_sql.RELEASE_ALLOWANCE,
            AdmissionKind.CREDITS: settlement_sql.RELEASE_CREDITS,
            AdmissionKind.THROTTLE_SLOT: settlement_sql.RELEASE_THROTTLE_SLOT,
        }[ticket.kind]
        conn.execute(
            statement,
            {
                "s_key": ticket.key_id,
                "s_day": ticket.day,
                "s_reserved": ticket.reserved_nanos,
                "s_slot": ticket.slot_at,
                "s_at": ticket.at,
            },
        )

    def sweep(self, *, now: int, started_before: int | None = None) -> list[SweptCall]:
        """Close the ``pending`` rows past their deadline (or, given ``started_before``,
        every one admitted before it) as ``abandoned``: the reservation is released; the
        allowance unit and throttle slot stay used, since the upstream may have served the
        call; the row keeps cost 0 and says why. Each row in its own transaction, and only
        while still pending, so a settlement racing the sweep wins or loses whole."""
        c = ledger.c
        due = c.deadline_at <= now if started_before is None else c.started_at < started_before
        with self.transaction(read_only=True) as conn:
            rows = conn.execute(
                select(
                    c.id,
                    c.request_id,
                    c.key_id,
                    c.admission,
                    c.started_at,
                    c.reserved_nanos,
                    c.provider,
                )
                .where(c.status == "pending", due)
                .order_by(c.id)
            ).all()
        swept = []
        for row in rows:
            with self.transaction() as conn:
                if row.reserved_nanos:
                    _lock_key_first(conn, row.key_id)
                abandoned = conn.execute(
                    settlement_sql.TICKET_ABANDON,
                    {"l_id": row.id, "l_finished_at": now, "l_error": ABANDONED_REASON},
                ).rowcount
                if not abandoned:
                    continue
                if row.reserved_nanos:
                    conn.execute(
                        settlement_sql.RELEASE_CREDITS,
                        {"s_key": row.key_id, "s_reserved": row.reserved_nanos},
                    )
            swept.append(
                SweptCall(
                    row.request_id, row.key_id, row.admission, row.started_at, row.reserved_nanos
                )
            )
        return swept

    def _add_provider_total(
        self, conn: Connection, provider: str, prompt: int, completion: int, cost: int
    ) -> None:
        params = {
            "t_provider": provider,
            "t_prompt": prompt,
            "t_completion": completion,
            "t_cost": cost,
        }
        if not conn.execute(settlement_sql.ADD_PROVIDER_TOTAL, params).rowcount:
            # A provider this database has not seen (its row is made at startup, so rarely).
            _create_provider_row(conn, provider)
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
        abandoned = func.sum(func.cast(c.status == "abandoned", ledger.c.prompt_tokens.type))
        query = (
            select(
                c.key_id,
                c.day,
                c.provider,
                c.model,
                func.count().label("requests"),
                failed.label("failed"),
                abandoned.label("abandoned"),
                func.sum(c.prompt_tokens).label("prompt_tokens"),
                func.sum(c.completion_tokens).label("completion_tokens"),
                func.sum(c.cost_nanos).label("cost_nanos"),
                func.sum(c.charged_nanos).label("charged_nanos"),
            )
            .where(c.status != "pending")
            .group_by(c.key_id, c.day, c.provider, c.model)
        )
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
                abandoned=int(r.abandoned or 0),
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


def _lock_key_first(conn: Connection, key_id: str) -> None:
    """Take the key's row lock before touching its ledger row, in the order the admission
    takes them (key, then ledger): InnoDB's gap locks otherwise deadlock a settlement
    against a concurrent admission of the same key. (SQLite writers are serial already.)"""
    conn.execute(_LOCK_KEY, {"key_id": key_id})


_LOCK_KEY = select(_k.id).where(_k.id == bindparam("key_id")).with_for_update()


def _pending_row(ticket: Ticket, provider: str, model: str, upstream_model: str) -> dict[str, Any]:
    """The ledger row an admitted call holds until it is settled, released or swept."""
    return {
        "request_id": ticket.request_id,
        "key_id": ticket.key_id,
        "provider": provider,
        "model": model,
        "upstream_model": upstream_model,
        "admission": ticket.kind.label,
        "status": "pending",
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "usage_estimated": False,
        "cost_nanos": 0,
        "charged_nanos": 0,
        "day": ticket.day,
        "started_at": ticket.at,
        "finished_at": None,
        "error": None,
        "reserved_nanos": ticket.reserved_nanos,
        "slot_at": ticket.slot_at,
        "deadline_at": ticket.deadline_at,
    }

"""The store: every read and atomic write llmrouter makes to its SQL database."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection, Update, bindparam, case, distinct, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from ..errors import NotFoundError, StoreUnavailableError
from . import schema
from .admission import UNLIMITED, admission_statement, result_columns
from .connection_store import ConnectionStatements, ConnectionStore
from .driver import DriverPath, DriverTransaction
from .engine import (
    PING_ON_CHECKOUT,
    READ_ONLY,
    create_engine_for,
    is_sqlite_memory,
    postgres_timeouts_statement,
    prepare_engine,
)
from .key_store import KeyStatements, KeyStore
from .records import (
    Admission,
    AdmissionKind,
    LedgerEntry,
    ProviderTotal,
    QuotaDefaults,
    Settlement,
    SweptCall,
    Ticket,
    UsageRow,
)
from .session_store import SessionStatements, SessionStore
from .settlement import SettlementStatements
from .tables import DEFAULT_PREFIX, Tables, build_tables
from .video_store import VideoTaskStore

T = TypeVar("T")

#: the ``error`` of a row the sweeper closed
ABANDONED_REASON = (
    "abandoned: not settled by its deadline (the serving process died, or lost the "
    "database); the reservation was released, the allowance unit stays used"
)


class Store(KeyStore, ConnectionStore, SessionStore, VideoTaskStore):
    """One SQL database (SQLite, PostgreSQL, MariaDB/MySQL) holding keys, quotas and money.

    ``engine``: the host's own engine instead of one made from ``database_url`` (which is
    then ignored); it is set up for the store's guarantees, or refused with the reason
    (see ``engine.prepare_engine``), and never disposed by ``close``. ``table_prefix``
    names the tables (``<prefix>api_keys``, …, ``<prefix>alembic_version``).

    At start the database must be at this version's schema revision: a fresh SQLite
    database (file or in-memory) is created at head; a fresh server database, or one
    behind, is refused with ``ConfigError`` naming ``llmrouter db upgrade``.
    ``check_schema=False`` skips that (for the ``db`` commands themselves).
    """

    def __init__(
        self,
        database_url: str,
        *,
        engine: Engine | None = None,
        timeout: float = 5.0,
        table_prefix: str = DEFAULT_PREFIX,
        check_schema: bool = True,
    ) -> None:
        self.tables = tables = build_tables(table_prefix)
        self._owns_engine = engine is None
        self.engine = prepare_engine(
            engine or create_engine_for(database_url, timeout=timeout),
            timeout=timeout,
            owned=self._owns_engine,
        )
        dialect = self.engine.dialect
        self._left_to_right = dialect.name in ("mysql", "mariadb")
        self._returning = bool(dialect.update_returning)
        # Built once: compiling a statement per call would double the request's overhead.
        self._admit = {
            (premium, by_secret): _with_result(
                admission_statement(
                    tables,
                    premium=premium,
                    left_to_right=self._left_to_right,
                    by_secret=by_secret,
                ),
                tables,
                returning=self._returning,
            )
            for premium in (False, True)
            for by_secret in (False, True)
        }
        _k = tables.api_keys.c
        # MariaDB/MySQL have no UPDATE … RETURNING: the outcome is read back under the lock.
        self._admission_readback = select(*result_columns(tables)).where(
            _k.id == bindparam("key_id")
        )
        self._lock_key = select(_k.id).where(_k.id == bindparam("key_id")).with_for_update()
        self._sql = SettlementStatements(tables)
        # The request path's writes run straight on the driver (see driver.py).
        host_postgres = dialect.name == "postgresql" and not self._owns_engine
        self._driver = DriverPath(
            self.engine, begin=postgres_timeouts_statement(timeout) if host_postgres else None
        )
        self._keys = KeyStatements(tables)
        self._connections = ConnectionStatements(tables)
        self._sessions = SessionStatements(tables)
        try:
            # An in-memory SQLite database is one shared connection: one transaction at a
            # time.
            memory = is_sqlite_memory(self.engine)
            self._memory_lock = threading.Lock() if memory else None
            if check_schema:
                schema.ensure_current(self.engine, tables, create_if_empty=dialect.name == "sqlite")
        except OperationalError as exc:
            raise StoreUnavailableError(
                f"the database is unavailable ({type(exc.orig).__name__}): "
                f"{self.engine.url.render_as_string()}"
            ) from exc

    @property
    def in_memory(self) -> bool:
        """An in-memory SQLite database: this process's alone."""
        return self._memory_lock is not None

    def upgrade_database(self) -> str:
        """Bring the database to this version's schema revision (``llmrouter db upgrade``);
        returns it."""
        try:
            return schema.upgrade(self.engine, self.tables)
        except OperationalError as exc:
            raise StoreUnavailableError(
                f"the database is unavailable ({type(exc.orig).__name__})"
            ) from exc

    def database_revision(self) -> tuple[str | None, str]:
        """The database's schema revision (``None``: never migrated) and this version's."""
        with self.transaction(read_only=True) as conn:
            return schema.current_revision(conn, self.tables), schema.head_revision()

    # ---------------------------------------------------------------- plumbing

    @contextmanager
    def transaction(self, *, read_only: bool = False) -> Iterator[Connection]:
        """A transaction; a database that cannot be reached becomes ``StoreUnavailableError``.

        ``read_only`` ones do not queue behind writers on SQLite (see ``engine.READ_ONLY``).
        """
        with self._guarded():
            asked = PING_ON_CHECKOUT.set(True)
            try:
                connection = self.engine.connect()
            finally:
                PING_ON_CHECKOUT.reset(asked)
            with connection as conn:
                if read_only:
                    conn.execution_options(**READ_ONLY)
                with conn.begin():
                    yield conn

    def _write(self, work: Callable[[DriverTransaction], T]) -> T:
        """``work`` in one write transaction on the driver path (``transaction``'s
        guarantees: queued writers on SQLite, ``StoreUnavailableError`` for a database that
        cannot be reached)."""
        with self._guarded():
            return self._driver.run(work)

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        """One database operation at a time on an in-memory database (one connection), and
        a database that cannot be reached as ``StoreUnavailableError``."""
        lock = self._memory_lock
        if lock:
            lock.acquire()
        try:
            yield
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
        if self._owns_engine:
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
        secret_hash: str | None = None,
        restrictions_version: int = 0,
    ) -> Admission:
        """Decide and record, in one atomic statement, whether this key may make a call;
        an admitted call's ticket (its ``pending`` ledger row) is written in the same
        transaction, so nothing the admission takes is ever held without a row.

        ``secret_hash``: the key must still have that secret (None: checked by id only);
        ``restrictions_version``: the version of the restrictions the caller checked the
        target against (another is ``STALE_RESTRICTIONS``; see ``admission.py``).
        ``NotFoundError`` when no active key has that id (and secret)."""
        day, minute = now // 86_400_000, now // 60_000
        params: dict[str, Any] = {
            "key_id": key_id,
            "a_secret_hash": secret_hash,
            "a_restrictions_version": restrictions_version,
            "day": day,
            "now": now,
            "minute": minute,
            "reserve": reserve_nanos,
            "default_limit": defaults.daily_requests,
            "default_throttle": defaults.throttle_seconds,
            "default_rpm": defaults.requests_per_minute or UNLIMITED,
        }
        statement = self._admit[premium, secret_hash is not None]

        def admit(conn: DriverTransaction) -> tuple[Any, Ticket | None]:
            if self._returning:
                row = conn.execute(statement, params).first()
            else:
                changed = conn.execute(statement, params).rowcount
                row = conn.execute(self._admission_readback, params).first() if changed else None
            if row is None:
                raise NotFoundError(f"no active API key with id '{key_id}'", param="key_id")
            kind = AdmissionKind(row.last_admission)
            ticket = None
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
                    self._sql.ticket_insert,
                    _pending_row(ticket, provider, model, upstream_model),
                )
            return row, ticket

        row, ticket = self._write(admit)
        kind = AdmissionKind(row.last_admission)
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
        reservation; a later round of a tool exchange, only its reservation). A ticket
        already settled changes nothing: returns False. A ticket the sweeper closed (its
        process was thought dead) is still settled, once: the reservation already went
        back, so the charge is taken from the balance as it is now (which may leave it
        below zero: a debt that refuses paid calls until a top-up), and a failed call
        hands back the allowance unit the sweeper kept (round 1 only).
        """
        ticket = settlement.ticket

        def settle(conn: DriverTransaction) -> bool:
            if ticket.reserved_nanos or settlement.status == "failed":
                self._lock_key_first(conn, ticket.key_id)
            return self._settle(conn, settlement, carry=False) is not None

        return self._write(settle)

    def settle_and_open(
        self,
        settlement: Settlement,
        *,
        now: int,
        deadline_at: int,
        provider: str,
        model: str,
        upstream_model: str,
    ) -> Ticket | None:
        """Settle a round of a built-in tool exchange that was answered (``ok`` or
        ``partial``: the model called built-in tools) and open the exchange's next round,
        in one transaction: the round is completed and billed as ``settle`` does, but what
        it did not use of its reservation is not refunded: the next round's ``pending`` row
        holds it (``resize_reservation`` then sizes it before the call), so no concurrent
        request of the key can take it in between. Balance + pending reservations + spent
        is unchanged. A round the sweeper had closed is billed from the balance, as a late
        settlement is, and carries nothing. An exchange not paid by credits carries 0. No
        allowance unit, throttle slot or minute count is taken: the exchange counted once,
        at its admission.

        Returns the next round's ticket (round ``ticket.round + 1``); None when the round
        was already settled (nothing changes). A revoked (or gone) key: the round is
        settled as ``settle`` does (its unused reservation refunded), nothing is opened,
        and ``NotFoundError`` is raised."""
        if settlement.status == "failed":
            raise ValueError("a failed round opens no next round: settle it")
        ticket = settlement.ticket

        def settle_and_open(conn: DriverTransaction) -> tuple[bool, Ticket | None]:
            # The key's row lock first, as the admission takes it (key, then ledger).
            state = conn.execute(self._sql.lock_key_state, {"s_key": ticket.key_id}).first()
            active = state is not None and state.revoked_at is None
            carried = self._settle(conn, settlement, carry=active)
            opened = None
            if active and carried is not None:
                opened = Ticket(
                    request_id=ticket.request_id,
                    key_id=ticket.key_id,
                    kind=ticket.kind,
                    at=now,
                    day=ticket.day,
                    reserved_nanos=carried,
                    slot_at=0,
                    deadline_at=deadline_at,
                    round=ticket.round + 1,
                )
                conn.execute(
                    self._sql.ticket_insert, _pending_row(opened, provider, model, upstream_model)
                )
            return active, opened

        active, opened = self._write(settle_and_open)
        if not active:
            raise _revoked(ticket.key_id)
        return opened

    def resize_reservation(self, ticket: Ticket, reserve_nanos: int) -> Ticket | None:
        """Make the reservation of ``ticket``'s ``pending`` round ``reserve_nanos`` (what its
        call may cost), in one transaction: growing takes the difference from the balance,
        only if the balance covers it (never below zero, however many rounds of the key
        resize at once): when it does not, nothing changes and the answer is None;
        shrinking gives the difference back. Returns the ticket holding ``reserve_nanos``.

        ``NotFoundError`` (nothing changed) when the round's row is no longer pending with
        the ticket's reservation: swept (or settled, or resized by another ticket). An
        exchange not paid by credits reserves nothing: its ticket comes back unchanged."""
        if reserve_nanos < 0:
            raise ValueError(f"a reservation cannot be negative: {reserve_nanos}")
        if ticket.kind is not AdmissionKind.CREDITS:
            return ticket
        change = reserve_nanos - ticket.reserved_nanos
        key = {"s_key": ticket.key_id, "s_reserved": abs(change)}

        def resize(conn: DriverTransaction) -> bool:
            # The key's row first (its balance, or its lock), then the ledger row.
            if change > 0:
                if not conn.execute(self._sql.take_credits, key).rowcount:
                    return False
            elif change < 0:
                conn.execute(self._sql.release_credits, key)
            else:
                self._lock_key_first(conn, ticket.key_id)
            resized = conn.execute(
                self._sql.ticket_resize,
                {
                    "l_request_id": ticket.request_id,
                    "l_round": ticket.round,
                    "l_held": ticket.reserved_nanos,
                    "l_reserved": reserve_nanos,
                },
            ).rowcount
            if not resized:  # rolls back what the key gave or took
                raise NotFoundError(
                    f"round {ticket.round} of request '{ticket.request_id}' is no longer "
                    f"pending with a reservation of {ticket.reserved_nanos} nano-dollars "
                    "(swept, or settled)",
                    param="round",
                )
            return True

        return replace(ticket, reserved_nanos=reserve_nanos) if self._write(resize) else None

    def _settle(
        self, conn: Connection | DriverTransaction, settlement: Settlement, *, carry: bool
    ) -> int | None:
        """Complete the ticket's row and move its money (the key's row already locked when
        the money needs it); returns what is carried to the exchange's next round (with
        ``carry``: the unused reservation, instead of its refund; else 0), or None when the
        row was settled already (nothing changed)."""
        ticket = settlement.ticket
        charged = settlement.charged_nanos
        params = {
            "l_request_id": ticket.request_id,
            "l_round": ticket.round,
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
        held = ticket.reserved_nanos
        if not conn.execute(self._sql.ticket_complete, params).rowcount:
            if not conn.execute(self._sql.ticket_complete_late, params).rowcount:
                return None
            held = 0  # the sweeper gave it back
        # charged never exceeds the ticket's reservation: only a late row carries nothing
        carried = max(held - charged, 0) if carry else 0
        if settlement.status == "failed":
            self._release(conn, replace(ticket, reserved_nanos=held))
        elif ticket.reserved_nanos:
            conn.execute(
                self._sql.charge,
                {
                    "s_key": ticket.key_id,
                    "s_refund": held - charged - carried,
                    "s_charged": charged,
                },
            )
        self._add_provider_total(
            conn,
            settlement.provider,
            settlement.prompt_tokens,
            settlement.completion_tokens,
            settlement.cost_nanos,
            exchanges=1 if ticket.round == 1 else 0,
        )
        return carried

    def release(self, ticket: Ticket) -> bool:
        """Hand back an admission whose request never became a call: its row goes, and what
        it took comes back (a later round of a tool exchange: only its reservation). A
        ticket already completed changes nothing: returns False."""

        def release(conn: DriverTransaction) -> bool:
            self._lock_key_first(conn, ticket.key_id)
            deleted = conn.execute(
                self._sql.ticket_delete,
                {"l_request_id": ticket.request_id, "l_round": ticket.round},
            ).rowcount
            if deleted:
                self._release(conn, ticket)
            return bool(deleted)

        return self._write(release)

    def _release(self, conn: Connection | DriverTransaction, ticket: Ticket) -> None:
        """Give back what a call that produced nothing took at admission. A later round of an
        exchange took only its reservation: the allowance unit, throttle slot and minute
        count are round 1's, held for the whole exchange."""
        if ticket.round > 1:
            if ticket.reserved_nanos:
                conn.execute(
                    self._sql.release_credits,
                    {"s_key": ticket.key_id, "s_reserved": ticket.reserved_nanos},
                )
            return
        statement = {
            AdmissionKind.ALLOWANCE: self._sql.release_allowance,
            AdmissionKind.CREDITS: self._sql.release_credits,
            AdmissionKind.THROTTLE_SLOT: self._sql.release_throttle_slot,
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
        every one admitted before it but those of video tasks) as
        ``abandoned``: the reservation is released; the
        allowance unit and throttle slot stay used, since the upstream may have served the
        call; the row keeps cost 0 and says why. (A later round of a tool exchange holds
        only its reservation: that is all its row gives back.) Each row in its own
        transaction, and only while still pending, so a settlement racing the sweep wins
        or loses whole."""
        c = self.tables.ledger.c
        if started_before is None:
            due = c.deadline_at <= now
        else:
            # A video task's ticket lives as long as its task: the video sweep ends those
            # (a task not ended is polled, not abandoned) and settles those of tasks ended
            # by a process that died before settling (abandoning one would give away a
            # succeeded video); past their deadline this one.
            _v = self.tables.video_tasks.c
            due = (c.started_at < started_before) & c.request_id.not_in(select(_v.request_id))
        with self.transaction(read_only=True) as conn:
            rows = conn.execute(
                select(
                    c.id,
                    c.request_id,
                    c.round,
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

        def abandon(conn: DriverTransaction, *, row: Any) -> bool:
            if row.reserved_nanos:
                self._lock_key_first(conn, row.key_id)
            abandoned = conn.execute(
                self._sql.ticket_abandon,
                {"l_id": row.id, "l_finished_at": now, "l_error": ABANDONED_REASON},
            ).rowcount
            if abandoned and row.reserved_nanos:
                conn.execute(
                    self._sql.release_credits,
                    {"s_key": row.key_id, "s_reserved": row.reserved_nanos},
                )
            return bool(abandoned)

        for row in rows:
            if not self._write(partial(abandon, row=row)):
                continue
            swept.append(
                SweptCall(
                    row.request_id,
                    row.key_id,
                    row.admission,
                    row.started_at,
                    row.reserved_nanos,
                    round=row.round,
                )
            )
        return swept

    def _add_provider_total(
        self,
        conn: Connection | DriverTransaction,
        provider: str,
        prompt: int,
        completion: int,
        cost: int,
        *,
        exchanges: int = 1,
    ) -> None:
        params = {
            "t_provider": provider,
            "t_requests": exchanges,
            "t_prompt": prompt,
            "t_completion": completion,
            "t_cost": cost,
        }
        if not conn.execute(self._sql.add_provider_total, params).rowcount:
            # A provider this database has not seen (its row is made at startup, so rarely).
            self._create_provider_row(conn, provider)
            conn.execute(self._sql.add_provider_total, params)

    def record_provider_call(
        self, provider: str, *, prompt_tokens: int, completion_tokens: int, cost_nanos: int
    ) -> None:
        """A call billed to no key (a connection's test) in its provider's totals."""
        self._write(
            lambda conn: self._add_provider_total(
                conn, provider, prompt_tokens, completion_tokens, cost_nanos
            )
        )

    def ensure_providers(self, names: list[str]) -> None:
        """Create the totals row of each provider up front, so settling only UPDATEs."""
        with self.transaction() as conn:
            present = set(conn.execute(select(self.tables.provider_totals.c.provider)).scalars())
            for name in set(names) - present:
                self._create_provider_row(conn, name)

    def _create_provider_row(self, conn: Connection | DriverTransaction, provider: str) -> None:
        """An all-zero totals row, unless another process has just made it (several
        processes starting with a new provider race here; the loser's savepoint rolls back,
        nothing else)."""
        try:
            with conn.begin_nested():
                conn.execute(self._sql.create_provider_row, {"provider": provider})
        except IntegrityError:
            pass

    def _lock_key_first(self, conn: Connection | DriverTransaction, key_id: str) -> None:
        """Take the key's row lock before touching its ledger row, in the order the
        admission takes them (key, then ledger): InnoDB's gap locks otherwise deadlock a
        settlement against a concurrent admission of the same key. (SQLite writers are
        serial already.)"""
        conn.execute(self._lock_key, {"key_id": key_id})

    # ---------------------------------------------------------------- reports

    def ledger_rows(self, request_id: str) -> list[LedgerEntry]:
        """The ledger rows of one exchange (its admission's ``request_id``), by round."""
        c = self.tables.ledger.c
        query = (
            select(
                c.round,
                c.status,
                c.provider,
                c.model,
                c.prompt_tokens,
                c.completion_tokens,
                c.cost_nanos,
                c.charged_nanos,
                c.reserved_nanos,
                c.admission,
                c.error,
            )
            .where(c.request_id == request_id)
            .order_by(c.round)
        )
        with self.transaction(read_only=True) as conn:
            return [LedgerEntry(**row._mapping) for row in conn.execute(query)]

    def usage(
        self,
        *,
        key_id: str | None = None,
        since_day: int | None = None,
        until_day: int | None = None,
    ) -> list[UsageRow]:
        """Requests, tokens, cost and charges per key, day, provider and model.

        A request is an exchange: a built-in tool loop's rounds add their tokens, cost and
        charges to it, not requests (its round 1 is the request), and it counts as failed
        (or abandoned) once when any of its rounds did."""
        c = self.tables.ledger.c

        def exchanges_where(condition: Any) -> Any:
            return func.count(distinct(case((condition, c.request_id))))

        query = (
            select(
                c.key_id,
                c.day,
                c.provider,
                c.model,
                func.sum(case((c.round == 1, 1), else_=0)).label("requests"),
                exchanges_where(c.status == "failed").label("failed"),
                exchanges_where(c.status == "abandoned").label("abandoned"),
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
        totals = self.tables.provider_totals
        with self.transaction(read_only=True) as conn:
            rows = conn.execute(select(totals).order_by(totals.c.provider)).all()
        return [
            ProviderTotal(
                r.provider, r.requests, r.prompt_tokens, r.completion_tokens, r.cost_nanos
            )
            for r in rows
        ]


def _revoked(key_id: str) -> NotFoundError:
    return NotFoundError(f"no active API key with id '{key_id}'", param="key_id")


def _with_result(statement: Update, tables: Tables, *, returning: bool) -> Update:
    return statement.returning(*result_columns(tables)) if returning else statement


def _pending_row(ticket: Ticket, provider: str, model: str, upstream_model: str) -> dict[str, Any]:
    """The ledger row an admitted call holds until it is settled, released or swept."""
    return {
        "request_id": ticket.request_id,
        "round": ticket.round,
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

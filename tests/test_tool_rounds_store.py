"""The money of a built-in tool exchange on every store backend: one admission, then a
ledger row per upstream round (``request_id`` + ``round``). A round that was answered is
settled and the next one opened in one transaction (``Store.settle_and_open``), the next
row holding what the round did not use of its reservation; ``Store.resize_reservation``
then sizes it, growing only while the balance covers it. Exact sums, money conserved
(balance + pending reservations + spent), the allowance counted once; and the key's
``allowed_tools``.

Each test runs on tables of this module's own (a prefix made for it on a server), so no
other test's sweep closes its rows, nor its sweeps theirs.
"""

from __future__ import annotations

import random
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from sqlalchemy import func, select

from llmrouter import Router
from llmrouter.errors import InvalidRequestError, NotFoundError
from llmrouter.keys import key_view
from llmrouter.store import (
    Admission,
    AdmissionKind,
    KeyRecord,
    LedgerEntry,
    QuotaDefaults,
    Settlement,
    Store,
    Ticket,
)
from llmrouter.store.tables import build_tables
from tests.conftest import database_urls, drop_tables, gateway_config

pytestmark = pytest.mark.parametrize("database_url", database_urls(), indirect=True)

#: Unix ms of the fake clock: 2026-03-14 10:00:00 UTC
START = 1_773_482_400_000
MINUTE = 60_000
THROTTLE_SECONDS = 600
R = 10_000  # a round's reservation, nano-dollars


@pytest.fixture(scope="module")
def server_prefixes() -> Iterator[dict[str, str]]:
    """Per server URL, the table prefix of this module (made on first use, dropped after)."""
    made: dict[str, str] = {}
    yield made
    for url, prefix in made.items():
        drop_tables(url, build_tables(prefix))


@pytest.fixture
def store(database_url: str, server_prefixes: dict[str, str]) -> Iterator[Store]:
    if database_url.startswith("sqlite"):
        store = Store(database_url)  # a file of this test alone
    else:
        if database_url not in server_prefixes:
            prefix = f"t{secrets.token_hex(4)}_"
            Store(database_url, table_prefix=prefix, check_schema=False).upgrade_database()
            server_prefixes[database_url] = prefix
        store = Store(database_url, table_prefix=server_prefixes[database_url])
    yield store
    store.close()


@dataclass(frozen=True)
class Money:
    """A key's money at one instant (one statement): every nano-dollar is in one place."""

    balance: int
    held: int  # the reservations of its pending rows
    spent: int

    @property
    def total(self) -> int:
        return self.balance + self.held + self.spent


@dataclass
class Books:
    """A store, a fake clock, and a provider of this test's own; helpers that name what an
    exchange does."""

    store: Store
    provider: str
    now: int = START

    def key(self, *, daily_requests: int = 0, credits_nanos: int = 0, **limits: Any) -> KeyRecord:
        record, _ = self.store.create_key(
            "k-" + secrets.token_hex(4),
            now=self.now,
            daily_requests=daily_requests,
            throttle_seconds=THROTTLE_SECONDS,
            credits_nanos=credits_nanos,
            **limits,
        )
        return record

    def admission(self, key: KeyRecord, reserve: int = R, *, premium: bool = False) -> Admission:
        return self.store.admit(
            key.id,
            request_id="chatcmpl-" + secrets.token_hex(16),
            now=self.now,
            deadline_at=self.now + MINUTE,
            defaults=QuotaDefaults(
                daily_requests=200, throttle_seconds=600, requests_per_minute=None
            ),
            reserve_nanos=reserve,
            premium=premium,
            provider=self.provider,
            model=self.provider + "#m",
            upstream_model="m",
        )

    def admit(self, key: KeyRecord, reserve: int = R) -> Ticket:
        """Round 1 of a new exchange (admitted: the test says so by asserting its kind)."""
        admission = self.admission(key, reserve)
        assert admission.ticket is not None, admission.kind
        return admission.ticket

    def kind_of_next(self, key: KeyRecord, reserve: int = R, *, premium: bool = False) -> Any:
        """What a new request of the key would be admitted as (admitted, then released)."""
        admission = self.admission(key, reserve, premium=premium)
        if admission.ticket is not None:
            assert self.store.release(admission.ticket)
        return admission.kind

    def settlement(self, ticket: Ticket, cost: int, status: str = "ok") -> Settlement:
        ok = status != "failed"
        return Settlement(
            ticket=ticket,
            provider=self.provider,
            model=self.provider + "#m",
            upstream_model="m",
            status=status,
            prompt_tokens=100 * ticket.round if ok else 0,
            completion_tokens=10 * ticket.round if ok else 0,
            usage_estimated=False,
            cost_nanos=cost if ok else 0,
            finished_at=self.now,
            error=None if ok else "upstream failed",
        )

    def settle(self, ticket: Ticket, cost: int, status: str = "ok") -> bool:
        return self.store.settle(self.settlement(ticket, cost, status))

    def carry(self, ticket: Ticket, cost: int, status: str = "ok") -> Ticket | None:
        """Settle an answered round and open the next one, holding what it left."""
        return self.store.settle_and_open(
            self.settlement(ticket, cost, status),
            now=self.now,
            deadline_at=self.now + MINUTE,
            provider=self.provider,
            model=self.provider + "#m",
            upstream_model="m",
        )

    def next_round(self, ticket: Ticket, cost: int) -> Ticket:
        opened = self.carry(ticket, cost)
        assert opened is not None
        return opened

    def resize(self, ticket: Ticket, reserve: int) -> Ticket | None:
        return self.store.resize_reservation(ticket, reserve)

    def balance(self, key: KeyRecord) -> int:
        return self.store.get_key(key.id).balance_nanos

    def money(self, key: KeyRecord) -> Money:
        k, c = self.store.tables.api_keys.c, self.store.tables.ledger.c
        held = (
            select(func.coalesce(func.sum(c.reserved_nanos), 0))
            .where(c.key_id == k.id, c.status == "pending")
            .scalar_subquery()
        )
        query = select(k.balance_nanos, held, k.spent_nanos).where(k.id == key.id)
        with self.store.transaction(read_only=True) as conn:
            [row] = conn.execute(query).all()
        return Money(*(int(value) for value in row))

    def rows(self, ticket: Ticket) -> list[LedgerEntry]:
        return self.store.ledger_rows(ticket.request_id)

    def total(self) -> tuple[int, int, int, int]:
        [total] = [t for t in self.store.provider_totals() if t.provider == self.provider]
        return total.requests, total.prompt_tokens, total.completion_tokens, total.cost_nanos


@pytest.fixture
def books(store: Store) -> Books:
    return Books(store, "p_" + secrets.token_hex(5))


def test_a_paid_exchange_carries_its_reservation_and_is_charged_round_by_round(
    books: Books,
) -> None:
    initial = 1_000_000
    key = books.key(credits_nanos=initial)
    first = books.admit(key)
    assert (first.kind, first.round, first.reserved_nanos) == (AdmissionKind.CREDITS, 1, R)
    assert books.money(key) == Money(initial - R, R, 0)

    books.now += 1_000
    second = books.carry(first, 4_000)
    assert second == Ticket(
        request_id=first.request_id,
        key_id=key.id,
        kind=AdmissionKind.CREDITS,
        at=books.now,
        day=first.day,
        reserved_nanos=R - 4_000,  # what round 1 did not use, never back in the balance
        slot_at=0,
        deadline_at=books.now + MINUTE,
        round=2,
    )
    assert books.money(key) == Money(initial - R, R - 4_000, 4_000)  # the balance unmoved

    grown = books.resize(second, R)
    assert grown == replace(second, reserved_nanos=R)
    assert books.money(key) == Money(initial - R - 4_000, R, 4_000)
    third = books.carry(grown, 12_345)  # more than it holds: charged what it holds
    assert third is not None and third.round == 3 and third.reserved_nanos == 0
    assert books.money(key) == Money(initial - R - 4_000, 0, 4_000 + R)
    third = books.resize(third, R)
    assert third is not None
    assert books.settle(third, 3_000, status="partial")  # the last round: the rest comes back

    rows = books.rows(first)
    assert [(r.round, r.status, r.admission) for r in rows] == [
        (1, "ok", "credits"),
        (2, "ok", "credits"),
        (3, "partial", "credits"),
    ]
    assert [(r.reserved_nanos, r.cost_nanos, r.charged_nanos) for r in rows] == [
        (R, 4_000, 4_000),
        (R, 12_345, R),
        (R, 3_000, 3_000),
    ]
    charged = sum(r.charged_nanos for r in rows)
    assert charged == 17_000
    assert books.money(key) == Money(initial - charged, 0, charged)
    # the provider served three calls of one request
    assert books.total() == (1, 600, 60, 4_000 + 12_345 + 3_000)


def test_the_sums_are_exact_per_round(books: Books) -> None:
    initial = 50 * R
    key = books.key(credits_nanos=initial)
    ticket = books.admit(key)
    costs = [3_001, 9_999, 10_000, 1, 0, 7_777]
    before = books.money(key)
    for cost in costs[:-1]:
        ticket = books.next_round(ticket, cost)
        after = books.money(key)
        assert after.balance == before.balance  # a carry takes nothing from the balance
        assert after.spent - before.spent == cost  # the round's charge, exactly
        assert after.total == initial
        resized = books.resize(ticket, R)
        assert resized is not None
        assert books.money(key).balance == before.balance - (R - ticket.reserved_nanos)
        ticket, before = resized, books.money(key)
    assert books.settle(ticket, costs[-1])
    rows = books.rows(ticket)
    assert [r.charged_nanos for r in rows] == costs
    assert books.money(key) == Money(initial - sum(costs), 0, sum(costs))


def test_the_allowance_throttle_and_minute_count_once_for_a_three_round_exchange(
    books: Books,
) -> None:
    key = books.key(daily_requests=2, requests_per_minute=2)
    first = books.admit(key)
    assert first.kind is AdmissionKind.ALLOWANCE
    second = books.next_round(first, 1_000)
    assert second.reserved_nanos == 0  # a free exchange holds nothing
    assert books.resize(second, 5 * R) == second  # nor grows
    third = books.next_round(second, 1_000)
    assert (third.round, third.kind) == (3, AdmissionKind.ALLOWANCE)
    assert books.settle(third, 1_000)

    # the exchange took one unit and one minute count: one more request fits in both
    assert books.kind_of_next(key) is AdmissionKind.ALLOWANCE
    assert [(r.round, r.status, r.charged_nanos) for r in books.rows(first)] == [
        (1, "ok", 0),
        (2, "ok", 0),
        (3, "ok", 0),
    ]
    assert books.money(key) == Money(0, 0, 0)

    slotted = books.key(daily_requests=0)  # no allowance, no credits
    slot = books.admit(slotted)
    assert slot.kind is AdmissionKind.THROTTLE_SLOT
    later = books.next_round(slot, 500)
    assert (later.reserved_nanos, later.slot_at) == (0, 0)
    assert books.settle(later, 500)
    assert [(r.admission, r.status) for r in books.rows(slot)] == [("throttle", "ok")] * 2
    assert books.kind_of_next(slotted) is AdmissionKind.REJECTED_THROTTLED  # one slot, once


def test_a_resize_the_balance_cannot_cover_changes_nothing(books: Books) -> None:
    key = books.key(credits_nanos=R + 5_000)
    first = books.admit(key)
    second = books.next_round(first, 2_000)
    assert books.money(key) == Money(5_000, 8_000, 2_000)

    assert books.resize(second, 8_000 + 5_001) is None
    assert books.money(key) == Money(5_000, 8_000, 2_000)
    assert [(r.round, r.status, r.reserved_nanos) for r in books.rows(first)] == [
        (1, "ok", R),
        (2, "pending", 8_000),
    ]
    grown = books.resize(second, 13_000)  # exactly what the balance covers
    assert grown is not None and books.money(key) == Money(0, 13_000, 2_000)
    third = books.next_round(grown, 13_000)
    assert books.resize(third, 1) is None
    assert books.money(key) == Money(0, 0, 15_000)
    assert books.settle(third, 0)
    assert [(r.round, r.charged_nanos) for r in books.rows(first)] == [
        (1, 2_000),
        (2, 13_000),
        (3, 0),
    ]
    assert books.money(key) == Money(0, 0, R + 5_000)


def test_a_resize_that_shrinks_gives_the_difference_back(books: Books) -> None:
    key = books.key(credits_nanos=10 * R)
    first = books.admit(key, reserve=4 * R)
    second = books.next_round(first, 1_000)
    assert books.money(key) == Money(6 * R, 4 * R - 1_000, 1_000)
    same = books.resize(second, 4 * R - 1_000)
    assert same == second and books.money(key) == Money(6 * R, 4 * R - 1_000, 1_000)
    shrunk = books.resize(second, 2_000)
    assert shrunk is not None and shrunk.reserved_nanos == 2_000
    assert books.money(key) == Money(10 * R - 3_000, 2_000, 1_000)
    assert books.rows(first)[1].reserved_nanos == 2_000
    # the ticket it replaced no longer matches the row: refused, nothing changes
    with pytest.raises(NotFoundError, match="round 2"):
        books.resize(second, R)
    with pytest.raises(NotFoundError, match="round 2"):
        books.resize(second, 0)
    assert books.money(key) == Money(10 * R - 3_000, 2_000, 1_000)
    empty = books.resize(shrunk, 0)
    assert empty is not None and books.money(key) == Money(10 * R - 1_000, 0, 1_000)
    assert books.settle(empty, 5_000)  # held nothing: charged nothing
    assert books.money(key) == Money(10 * R - 1_000, 0, 1_000)
    with pytest.raises(ValueError):
        books.resize(empty, -1)


def test_a_plain_admission_cannot_take_a_carried_amount(books: Books) -> None:
    key = books.key(credits_nanos=R)
    ticket = books.admit(key)
    assert books.balance(key) == 0
    second = books.next_round(ticket, 2_000)
    # what round 1 left is the next round's, not the balance's: a premium request that
    # needs it is refused, and the round still gets it
    assert books.kind_of_next(key, reserve=8_000, premium=True) is (
        AdmissionKind.REJECTED_NO_CREDITS
    )
    assert books.resize(second, 8_000) == second

    # and while admissions race the carries, none of them ever sees a nano-dollar
    admitted: list[AdmissionKind] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def admit_again() -> None:
        try:
            while not done.is_set():
                admitted.append(books.admission(key, 1, premium=True).kind)
        except BaseException as exc:  # the assertion below names it
            errors.append(exc)

    racers = [threading.Thread(target=admit_again) for _ in range(4)]
    for thread in racers:
        thread.start()
    try:
        ticket = second
        for _ in range(6):
            ticket = books.next_round(ticket, 1_000)
            resized = books.resize(ticket, ticket.reserved_nanos)
            assert resized is not None
    finally:
        done.set()
        for thread in racers:
            thread.join(timeout=30)
    assert errors == []
    assert admitted and set(admitted) == {AdmissionKind.REJECTED_NO_CREDITS}
    assert books.money(key) == Money(0, 2_000, 8_000)
    assert books.settle(ticket, 1_000)  # the last round: only now does the rest come back
    assert [r.charged_nanos for r in books.rows(ticket)] == [2_000] + [1_000] * 7
    assert books.money(key) == Money(1_000, 0, 9_000)


def test_concurrent_exchanges_of_one_key_resizing_at_once_never_drive_its_balance_below_zero(
    books: Books,
) -> None:
    """Several exchanges of one key, each carrying and growing (or shrinking) its rounds,
    with plain admissions among them: every charged round costs at least R, so the key's
    money runs out before the exchanges do, and some growths are refused."""
    exchanges, rounds, admitters, initial = 6, 8, 3, 30 * R
    key = books.key(credits_nanos=initial)
    firsts = [books.admit(key) for _ in range(exchanges)]
    errors: list[BaseException] = []
    refused: list[int] = []
    samples: list[Money] = []
    go, done = threading.Barrier(exchanges + admitters + 1), threading.Event()

    def exchange(seed: int) -> None:
        rng = random.Random(seed)
        ticket = firsts[seed]
        try:
            go.wait(timeout=30)
            for _ in range(rounds - 1):
                ticket = books.next_round(ticket, rng.choice((R, 2 * R, 5 * R)))
                resized = books.resize(ticket, rng.choice((R, 2 * R, 3 * R)))
                if resized is None:  # the loop stops: its round never ran
                    refused.append(ticket.round)
                    assert books.store.release(ticket)
                    return
                ticket = resized
            assert books.settle(ticket, rng.choice((R, 3 * R)))
        except BaseException as exc:  # the assertion below names it
            errors.append(exc)

    def admit_plainly() -> None:
        try:
            go.wait(timeout=30)
            for _ in range(rounds):
                admission = books.admission(key, R, premium=True)
                if admission.ticket is not None:
                    assert books.settle(admission.ticket, R)
        except BaseException as exc:
            errors.append(exc)

    def sample() -> None:
        go.wait(timeout=30)
        while not done.is_set():
            samples.append(books.money(key))

    workers = [threading.Thread(target=exchange, args=(i,)) for i in range(exchanges)]
    workers += [threading.Thread(target=admit_plainly) for _ in range(admitters)]
    sampler = threading.Thread(target=sample)
    for thread in [*workers, sampler]:
        thread.start()
    for thread in workers:
        thread.join(timeout=120)
    done.set()
    sampler.join(timeout=30)

    assert errors == []
    assert refused  # 48 rounds of at least R each cannot fit in 30 R
    assert samples and min(s.balance for s in samples) >= 0
    assert {s.total for s in samples} == {initial}  # conserved at every instant sampled
    rows = [row for first in firsts for row in books.rows(first)]
    assert all(r.status in ("ok", "partial") for r in rows)
    charged = sum(r.charged_nanos for r in books.store.usage(key_id=key.id))
    assert books.money(key) == Money(initial - charged, 0, charged)
    assert charged >= sum(r.charged_nanos for r in rows)


def test_a_round_the_sweeper_closed_cannot_be_resized(books: Books) -> None:
    initial = 10 * R
    key = books.key(credits_nanos=initial)
    first = books.admit(key)
    second = books.next_round(first, 4_000)
    books.now += 2 * MINUTE
    [swept] = [c for c in books.store.sweep(now=books.now) if c.key_id == key.id]
    assert (swept.round, swept.released_nanos) == (2, R - 4_000)
    assert books.money(key) == Money(initial - 4_000, 0, 4_000)
    for size in (3 * R, 1_000, second.reserved_nanos):  # grown, shrunk, the same
        with pytest.raises(NotFoundError, match="round 2") as refused:
            books.resize(second, size)
        assert refused.value.param == "round"
        assert books.money(key) == Money(initial - 4_000, 0, 4_000)
    assert [(r.round, r.status, r.reserved_nanos) for r in books.rows(first)] == [
        (1, "ok", R),
        (2, "abandoned", R - 4_000),
    ]


def test_a_crash_in_round_two_is_swept_and_a_late_settlement_still_bills_it_once(
    books: Books,
) -> None:
    initial = 10 * R
    key = books.key(credits_nanos=initial, daily_requests=0)
    first = books.admit(key)
    second = books.next_round(first, 4_000)
    grown = books.resize(second, 3 * R)
    assert grown is not None
    assert books.money(key) == Money(initial - 4_000 - 3 * R, 3 * R, 4_000)
    # the process dies here: round 2 stays pending until its deadline has passed
    assert [c for c in books.store.sweep(now=books.now) if c.key_id == key.id] == []
    books.now += 2 * MINUTE
    [swept] = [c for c in books.store.sweep(now=books.now) if c.key_id == key.id]
    # what it carried and what it grew by, exactly
    assert (swept.request_id, swept.round, swept.released_nanos) == (first.request_id, 2, 3 * R)
    assert books.money(key) == Money(initial - 4_000, 0, 4_000)
    assert [c for c in books.store.sweep(now=books.now) if c.key_id == key.id] == []
    rows = books.rows(first)
    assert [(r.round, r.status, r.charged_nanos) for r in rows] == [
        (1, "ok", 4_000),
        (2, "abandoned", 0),
    ]
    assert rows[1].error is not None and rows[1].error.startswith("abandoned")

    # The process was only slow: its settlement comes late, and is billed once.
    assert books.settle(grown, 7_000) and not books.settle(grown, 7_000)
    rows = books.rows(first)
    assert [(r.status, r.charged_nanos) for r in rows] == [("ok", 4_000), ("ok", 7_000)]
    assert books.money(key) == Money(initial - 11_000, 0, 11_000)


def test_a_late_round_carried_on_is_billed_from_the_balance_and_carries_nothing(
    books: Books,
) -> None:
    initial = 10 * R
    key = books.key(credits_nanos=initial)
    first = books.admit(key)
    second = books.resize(books.next_round(first, 4_000), 2 * R)
    assert second is not None
    books.now += 2 * MINUTE
    assert [c.round for c in books.store.sweep(now=books.now) if c.key_id == key.id] == [2]
    assert books.money(key) == Money(initial - 4_000, 0, 4_000)

    third = books.carry(second, 7_000)  # its process was only slow
    assert third is not None and (third.round, third.reserved_nanos) == (3, 0)
    # the late case: the charge comes from the balance, as a late settlement's does
    assert books.money(key) == Money(initial - 11_000, 0, 11_000)
    assert books.carry(second, 7_000) is None
    assert books.money(key) == Money(initial - 11_000, 0, 11_000)
    third = books.resize(third, R)
    assert third is not None and books.settle(third, 1_000)
    assert [(r.status, r.charged_nanos) for r in books.rows(first)] == [
        ("ok", 4_000),
        ("ok", 7_000),
        ("ok", 1_000),
    ]
    assert books.money(key) == Money(initial - 12_000, 0, 12_000)


def test_a_revoked_key_settles_its_round_and_opens_no_next_one(books: Books) -> None:
    paid, free = books.key(credits_nanos=10 * R), books.key(daily_requests=5)
    for key in (paid, free):
        ticket = books.admit(key)
        books.store.revoke_key(key.id, now=books.now)
        with pytest.raises(NotFoundError) as refused:
            books.carry(ticket, 3_000)
        assert refused.value.param == "key_id"
        # round 1 is billed (a paid one refunded the rest), and nothing more is opened
        assert [(r.round, r.status) for r in books.rows(ticket)] == [(1, "ok")]
        with pytest.raises(NotFoundError):
            books.carry(ticket, 3_000)  # and again: still nothing
        assert len(books.rows(ticket)) == 1
    assert [r.charged_nanos for r in books.store.usage(key_id=paid.id)] == [3_000]
    assert books.money(paid) == Money(10 * R - 3_000, 0, 3_000)
    assert books.money(free) == Money(0, 0, 0)
    assert books.total() == (2, 200, 20, 6_000)

    gone = Ticket("chatcmpl-gone", "key_0000000000000000", AdmissionKind.ALLOWANCE, 0, 0, 0, 0, 0)
    with pytest.raises(NotFoundError):
        books.carry(gone, 0)
    assert books.rows(gone) == []


def test_each_round_is_settled_once(books: Books) -> None:
    key = books.key(credits_nanos=5 * R)
    first = books.admit(key)
    second = books.next_round(first, 1_000)
    before = (books.money(key), books.rows(first), books.total())
    # a round settled is settled: carried again, settled, nothing changes
    assert books.carry(first, 1_000) is None
    assert books.carry(first, 0, status="partial") is None
    assert not books.settle(first, 1_000) and not books.settle(first, 0, status="failed")
    assert not books.store.release(first)
    assert (books.money(key), books.rows(first), books.total()) == before

    assert books.settle(second, 2_000)
    assert books.carry(second, 2_000) is None and not books.settle(second, 2_000)
    assert not books.store.release(second)
    assert [r.round for r in books.rows(first)] == [1, 2]
    assert books.money(key) == Money(5 * R - 3_000, 0, 3_000)
    assert books.total() == (1, 300, 30, 3_000)
    with pytest.raises(ValueError):
        books.carry(books.admit(key), 0, status="failed")  # a failed round is settled


def test_a_released_or_failed_later_round_hands_back_only_its_reservation(books: Books) -> None:
    # an allowance exchange: the day's one unit stays used
    key = books.key(daily_requests=1)
    first = books.admit(key)
    assert first.kind is AdmissionKind.ALLOWANCE
    second = books.next_round(first, 1_000)
    assert books.store.release(second) and not books.store.release(second)
    assert [r.round for r in books.rows(first)] == [1]
    assert books.kind_of_next(key) is AdmissionKind.THROTTLE_SLOT

    # a throttle slot's exchange: the slot stays taken
    slotted = books.key(daily_requests=0)
    slot = books.admit(slotted)
    assert slot.kind is AdmissionKind.THROTTLE_SLOT
    later = books.next_round(slot, 0)
    assert books.settle(later, 0, status="failed") and not books.settle(later, 0, "failed")
    assert books.kind_of_next(slotted) is AdmissionKind.REJECTED_THROTTLED

    # a paid exchange: exactly the round's reservation (carried and grown) comes back
    paid = books.key(credits_nanos=5 * R)
    bought = books.admit(paid)
    again = books.resize(books.next_round(bought, 3_000), 2 * R)
    assert again is not None and books.money(paid) == Money(3 * R - 3_000, 2 * R, 3_000)
    assert books.store.release(again)
    assert books.money(paid) == Money(5 * R - 3_000, 0, 3_000)
    other = books.admit(paid)
    failing = books.resize(books.next_round(other, 3_000), 2 * R)
    assert failing is not None and books.settle(failing, 0, status="failed")
    assert books.money(paid) == Money(5 * R - 6_000, 0, 6_000)
    assert [(r.round, r.status, r.charged_nanos) for r in books.rows(other)] == [
        (1, "ok", 3_000),
        (2, "failed", 0),
    ]


def test_a_failed_late_round_gives_back_no_allowance(books: Books) -> None:
    key = books.key(daily_requests=1)
    first = books.admit(key)
    second = books.next_round(first, 1_000)
    books.now += 2 * MINUTE
    assert [c.round for c in books.store.sweep(now=books.now) if c.key_id == key.id] == [2]
    assert books.settle(second, 0, status="failed")
    assert books.kind_of_next(key) is AdmissionKind.THROTTLE_SLOT


def test_usage_counts_one_request_for_a_three_round_exchange(books: Books) -> None:
    key = books.key(credits_nanos=10 * R)
    ticket = books.admit(key)
    for cost in (1_000, 2_000):
        ticket = books.next_round(ticket, cost)
        resized = books.resize(ticket, R)
        assert resized is not None
        ticket = resized
    assert books.settle(ticket, 3_000)
    single = books.admit(key)
    books.settle(single, 500)

    [row] = books.store.usage(key_id=key.id)
    assert (row.requests, row.failed, row.abandoned) == (2, 0, 0)
    assert (row.prompt_tokens, row.completion_tokens) == (600 + 100, 60 + 10)
    assert (row.cost_nanos, row.charged_nanos) == (6_500, 6_500)

    failing = books.next_round(books.admit(key), 1_000)
    failing = books.next_round(failing, 0)
    assert books.settle(failing, 0, status="failed")
    [row] = books.store.usage(key_id=key.id)
    assert (row.requests, row.failed, row.abandoned) == (3, 1, 0)
    assert books.money(key) == Money(10 * R - 7_500, 0, 7_500)


# ---------------------------------------------------------------------- allowed_tools


@pytest.fixture
def router(make_router: Callable[..., Router], database_url: str) -> Router:
    return make_router(gateway_config(database_url=database_url))


def test_allowed_tools_round_trip_through_create_update_and_the_key_view(router: Router) -> None:
    record, _ = router.create_key(
        "tools", allowed_tools=("lookup_price", "stock-2", "lookup_price")
    )
    assert record.allowed_tools == ("lookup_price", "stock-2")
    assert key_view(record)["allowed_tools"] == ["lookup_price", "stock-2"]
    assert router.get_key(record.id).allowed_tools == ("lookup_price", "stock-2")

    none = router.update_key(record.id, allowed_tools=[])
    assert (none.allowed_tools, key_view(none)["allowed_tools"]) == ((), [])
    assert none.restrictions_version == record.restrictions_version + 1
    lifted = router.update_key(record.id, allowed_tools=None)
    assert (lifted.allowed_tools, key_view(lifted)["allowed_tools"]) == (None, None)
    assert lifted.restrictions_version == record.restrictions_version + 2
    renamed = router.update_key(record.id, name="renamed")  # not a restriction
    assert renamed.restrictions_version == lifted.restrictions_version

    plain, _ = router.create_key("plain")
    assert plain.allowed_tools is None and key_view(plain)["allowed_tools"] is None


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("lookup_price", "allowed_tools"),
        (["ok", "has space"], "allowed_tools[1]"),
        (["x" * 65], "allowed_tools[0]"),
        ([""], "allowed_tools[0]"),
        (["dotted.name"], "allowed_tools[0]"),
        (["name\n"], "allowed_tools[0]"),
        ([7], "allowed_tools[0]"),
        ([f"t{i}" for i in range(101)], "allowed_tools"),
    ],
)
def test_bad_allowed_tools_are_refused_naming_the_field(
    router: Router, value: Any, param: str
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        router.create_key("bad", allowed_tools=value)
    assert refused.value.param == param
    record, _ = router.create_key("good")
    with pytest.raises(InvalidRequestError) as refused:
        router.update_key(record.id, allowed_tools=value)
    assert refused.value.param == param
    assert router.get_key(record.id) == record

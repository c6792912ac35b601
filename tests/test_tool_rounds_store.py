"""The money of a built-in tool exchange on every store backend: one admission, then a
ledger row per upstream round (``request_id`` + ``round``), each reserving for itself and
settled, released or swept on its own, with exact sums; and the key's ``allowed_tools``.

Each test runs on tables of this module's own (a prefix made for it on a server), so no
other test's sweep closes its rows, nor its sweeps theirs.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from llmrouter import Router
from llmrouter.errors import InvalidRequestError, NotFoundError
from llmrouter.keys import key_view
from llmrouter.store import (
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

    def admit(self, key: KeyRecord, reserve: int = R) -> Ticket:
        """Round 1 of a new exchange (admitted: the test says so by asserting its kind)."""
        admission = self.store.admit(
            key.id,
            request_id="chatcmpl-" + secrets.token_hex(16),
            now=self.now,
            deadline_at=self.now + MINUTE,
            defaults=QuotaDefaults(
                daily_requests=200, throttle_seconds=600, requests_per_minute=None
            ),
            reserve_nanos=reserve,
            premium=False,
            provider=self.provider,
            model=self.provider + "#m",
            upstream_model="m",
        )
        assert admission.ticket is not None, admission.kind
        return admission.ticket

    def kind_of_next(self, key: KeyRecord) -> AdmissionKind:
        """What a new request of the key would be admitted as (admitted, then released)."""
        admission = self.store.admit(
            key.id,
            request_id="chatcmpl-" + secrets.token_hex(16),
            now=self.now,
            deadline_at=self.now + MINUTE,
            defaults=QuotaDefaults(
                daily_requests=200, throttle_seconds=600, requests_per_minute=None
            ),
            reserve_nanos=R,
            premium=False,
            provider=self.provider,
            model=self.provider + "#m",
            upstream_model="m",
        )
        if admission.ticket is not None:
            assert self.store.release(admission.ticket)
        return admission.kind

    def open(self, ticket: Ticket, round: int, reserve: int = R) -> Ticket | None:
        return self.store.open_round(
            ticket,
            round=round,
            now=self.now,
            deadline_at=self.now + MINUTE,
            reserve_nanos=reserve,
            provider=self.provider,
            model=self.provider + "#m",
            upstream_model="m",
        )

    def settle(self, ticket: Ticket, cost: int, status: str = "ok") -> bool:
        ok = status != "failed"
        return self.store.settle(
            Settlement(
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
        )

    def balance(self, key: KeyRecord) -> int:
        return self.store.get_key(key.id).balance_nanos

    def rows(self, ticket: Ticket) -> list[LedgerEntry]:
        return self.store.ledger_rows(ticket.request_id)

    def total(self) -> tuple[int, int, int, int]:
        [total] = [t for t in self.store.provider_totals() if t.provider == self.provider]
        return total.requests, total.prompt_tokens, total.completion_tokens, total.cost_nanos


@pytest.fixture
def books(store: Store) -> Books:
    return Books(store, "p_" + secrets.token_hex(5))


def test_a_paid_exchange_reserves_and_is_charged_round_by_round(books: Books) -> None:
    initial = 1_000_000
    key = books.key(credits_nanos=initial)
    first = books.admit(key)
    assert (first.kind, first.round, first.reserved_nanos) == (AdmissionKind.CREDITS, 1, R)
    assert books.settle(first, 4_000)
    assert books.balance(key) == initial - 4_000

    second = books.open(first, 2)
    assert second == Ticket(
        request_id=first.request_id,
        key_id=key.id,
        kind=AdmissionKind.CREDITS,
        at=books.now,
        day=first.day,
        reserved_nanos=R,
        slot_at=0,
        deadline_at=books.now + MINUTE,
        round=2,
    )
    assert books.balance(key) == initial - 4_000 - R  # held while the round runs
    assert books.settle(second, 12_345)  # more than it reserved: charged the reservation
    third = books.open(second, 3)
    assert third is not None
    assert books.settle(third, 3_000)

    rows = books.rows(first)
    assert [(r.round, r.status, r.admission) for r in rows] == [
        (1, "ok", "credits"),
        (2, "ok", "credits"),
        (3, "ok", "credits"),
    ]
    assert [(r.reserved_nanos, r.cost_nanos, r.charged_nanos) for r in rows] == [
        (R, 4_000, 4_000),
        (R, 12_345, R),
        (R, 3_000, 3_000),
    ]
    after = books.store.get_key(key.id)
    charged = sum(r.charged_nanos for r in rows)
    assert (initial - after.balance_nanos, after.spent_nanos) == (charged, charged)
    assert charged == 17_000
    # the provider served three calls of one request
    assert books.total() == (1, 600, 60, 4_000 + 12_345 + 3_000)


def test_the_allowance_throttle_and_minute_count_once_for_a_three_round_exchange(
    books: Books,
) -> None:
    key = books.key(daily_requests=2, requests_per_minute=2)
    first = books.admit(key)
    assert first.kind is AdmissionKind.ALLOWANCE
    books.settle(first, 1_000)
    second = books.open(first, 2)
    assert second is not None and second.reserved_nanos == 0  # a free exchange holds nothing
    books.settle(second, 1_000)
    third = books.open(second, 3)
    assert third is not None
    books.settle(third, 1_000)

    # the exchange took one unit and one minute count: one more request fits in both
    assert books.kind_of_next(key) is AdmissionKind.ALLOWANCE
    assert [r.charged_nanos for r in books.rows(first)] == [0, 0, 0]
    assert books.balance(key) == 0

    slot = books.admit(books.key(daily_requests=0))  # no allowance, no credits
    assert slot.kind is AdmissionKind.THROTTLE_SLOT
    later = books.open(slot, 2)
    assert later is not None and (later.reserved_nanos, later.slot_at) == (0, 0)
    books.settle(slot, 500)
    books.settle(later, 500)
    assert [(r.admission, r.status) for r in books.rows(slot)] == [("throttle", "ok")] * 2


def test_a_round_the_balance_cannot_cover_writes_nothing(books: Books) -> None:
    key = books.key(credits_nanos=R + 5_000)
    first = books.admit(key)
    assert books.balance(key) == 5_000
    assert books.open(first, 2, reserve=5_001) is None
    assert [r.round for r in books.rows(first)] == [1]
    assert books.balance(key) == 5_000

    books.settle(first, 2_000)  # its unused reservation comes back: now it covers one
    second = books.open(first, 2, reserve=13_000)
    assert second is not None and books.balance(key) == 0
    assert books.open(second, 3, reserve=1) is None
    books.settle(second, 13_000)
    assert [(r.round, r.charged_nanos) for r in books.rows(first)] == [(1, 2_000), (2, 13_000)]
    assert books.store.get_key(key.id).spent_nanos == R + 5_000 == 15_000


def test_a_revoked_key_opens_no_round(books: Books) -> None:
    paid, free = books.key(credits_nanos=10 * R), books.key(daily_requests=5)
    tickets = [books.admit(paid), books.admit(free)]
    for ticket in tickets:
        books.store.revoke_key(ticket.key_id, now=books.now)
        with pytest.raises(NotFoundError):
            books.open(ticket, 2)
        assert [r.round for r in books.rows(ticket)] == [1]
    assert books.balance(paid) == 9 * R
    gone = Ticket("chatcmpl-gone", "key_0000000000000000", AdmissionKind.ALLOWANCE, 0, 0, 0, 0, 0)
    with pytest.raises(NotFoundError):
        books.open(gone, 2)


def test_concurrent_rounds_on_one_key_never_drive_its_balance_below_zero(books: Books) -> None:
    threads, fits = 24, 7
    key = books.key(credits_nanos=(fits + 1) * R)
    first = books.admit(key)
    opened: list[Ticket | None] = []
    errors: list[BaseException] = []
    lock, go = threading.Lock(), threading.Barrier(threads + 1)
    balances: list[int] = []
    running = True

    def open_one(round: int) -> None:
        try:
            go.wait(timeout=30)
            ticket = books.open(first, round)
            with lock:
                opened.append(ticket)
        except BaseException as exc:  # the assertion below names it
            with lock:
                errors.append(exc)

    def sample() -> None:
        go.wait(timeout=30)
        while running:
            balances.append(books.balance(key))

    workers = [threading.Thread(target=open_one, args=(2 + i,)) for i in range(threads)]
    sampler = threading.Thread(target=sample)
    for thread in [*workers, sampler]:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    running = False
    sampler.join(timeout=10)

    assert errors == []
    rounds = [t for t in opened if t is not None]
    assert len(rounds) == fits and opened.count(None) == threads - fits
    assert books.balance(key) == 0 and balances and min(balances) >= 0
    rows = books.rows(first)
    assert len(rows) == fits + 1 and {r.reserved_nanos for r in rows} == {R}

    books.settle(first, R - 1)
    for ticket in rounds:
        books.settle(ticket, R - ticket.round)
    rows = books.rows(first)
    after = books.store.get_key(key.id)
    charged = sum(r.charged_nanos for r in rows)
    assert (fits + 1) * R - after.balance_nanos == after.spent_nanos == charged
    assert charged == (R - 1) + sum(R - t.round for t in rounds)


def test_a_released_or_failed_later_round_hands_back_only_its_reservation(books: Books) -> None:
    # an allowance exchange: the day's one unit stays used
    key = books.key(daily_requests=1)
    first = books.admit(key)
    assert first.kind is AdmissionKind.ALLOWANCE
    second = books.open(first, 2)
    assert second is not None
    assert books.store.release(second) and not books.store.release(second)
    assert [r.round for r in books.rows(first)] == [1]
    second = books.open(first, 2)  # released, so the round can be opened again
    assert second is not None
    assert books.settle(second, 0, status="failed") and not books.settle(second, 0, "failed")
    books.settle(first, 1_000)
    assert books.kind_of_next(key) is AdmissionKind.THROTTLE_SLOT

    # a throttle slot's exchange: the slot stays taken
    slotted = books.key(daily_requests=0)
    slot = books.admit(slotted)
    assert slot.kind is AdmissionKind.THROTTLE_SLOT
    later = books.open(slot, 2)
    assert later is not None and books.settle(later, 0, status="failed")
    assert books.kind_of_next(slotted) is AdmissionKind.REJECTED_THROTTLED

    # a paid exchange: exactly the round's reservation comes back
    paid = books.key(credits_nanos=5 * R)
    bought = books.admit(paid)
    books.settle(bought, 3_000)
    assert books.balance(paid) == 5 * R - 3_000
    again = books.open(bought, 2, reserve=2 * R)
    assert again is not None and books.balance(paid) == 3 * R - 3_000
    assert books.store.release(again)
    assert books.balance(paid) == 5 * R - 3_000
    again = books.open(bought, 2, reserve=2 * R)
    assert again is not None and books.settle(again, 0, status="failed")
    assert books.balance(paid) == 5 * R - 3_000
    assert [(r.round, r.status, r.charged_nanos) for r in books.rows(bought)] == [
        (1, "ok", 3_000),
        (2, "failed", 0),
    ]


def test_a_crash_in_round_two_is_swept_and_a_late_settlement_still_bills_it_once(
    books: Books,
) -> None:
    initial = 10 * R
    key = books.key(credits_nanos=initial, daily_requests=0)
    first = books.admit(key)
    books.settle(first, 4_000)
    second = books.open(first, 2, reserve=3 * R)
    assert second is not None and books.balance(key) == initial - 4_000 - 3 * R
    # the process dies here: round 2 stays pending until its deadline has passed
    assert [c for c in books.store.sweep(now=books.now) if c.key_id == key.id] == []
    books.now += 2 * MINUTE
    [swept] = [c for c in books.store.sweep(now=books.now) if c.key_id == key.id]
    assert (swept.request_id, swept.round, swept.released_nanos) == (first.request_id, 2, 3 * R)
    assert books.balance(key) == initial - 4_000  # the reservation, and nothing else
    assert [c for c in books.store.sweep(now=books.now) if c.key_id == key.id] == []
    rows = books.rows(first)
    assert [(r.round, r.status, r.charged_nanos) for r in rows] == [
        (1, "ok", 4_000),
        (2, "abandoned", 0),
    ]
    assert rows[1].error is not None and rows[1].error.startswith("abandoned")

    # The process was only slow: its settlement comes late, and is billed once.
    assert books.settle(second, 7_000) and not books.settle(second, 7_000)
    rows = books.rows(first)
    assert [(r.status, r.charged_nanos) for r in rows] == [("ok", 4_000), ("ok", 7_000)]
    after = books.store.get_key(key.id)
    assert initial - after.balance_nanos == after.spent_nanos == 11_000


def test_a_failed_late_round_gives_back_no_allowance(books: Books) -> None:
    key = books.key(daily_requests=1)
    first = books.admit(key)
    books.settle(first, 1_000)
    second = books.open(first, 2)
    assert second is not None
    books.now += 2 * MINUTE
    assert [c.round for c in books.store.sweep(now=books.now) if c.key_id == key.id] == [2]
    assert books.settle(second, 0, status="failed")
    assert books.kind_of_next(key) is AdmissionKind.THROTTLE_SLOT


def test_each_round_is_settled_once(books: Books) -> None:
    key = books.key(credits_nanos=5 * R)
    first = books.admit(key)
    second = books.open(first, 2)
    assert second is not None
    assert books.settle(second, 2_000)  # rounds settle in any order
    assert not books.settle(second, 2_000) and not books.settle(second, 0, status="failed")
    assert not books.store.release(second)
    assert books.settle(first, 1_000) and not books.settle(first, 1_000)
    assert books.balance(key) == 5 * R - 3_000
    assert books.total() == (1, 300, 30, 3_000)


def test_usage_counts_one_request_for_a_three_round_exchange(books: Books) -> None:
    key = books.key(credits_nanos=10 * R)
    ticket = books.admit(key)
    books.settle(ticket, 1_000)
    for round in (2, 3):
        opened = books.open(ticket, round)
        assert opened is not None
        books.settle(opened, 1_000 * round)
    single = books.admit(key)
    books.settle(single, 500)

    [row] = books.store.usage(key_id=key.id)
    assert (row.requests, row.failed, row.abandoned) == (2, 0, 0)
    assert (row.prompt_tokens, row.completion_tokens) == (600 + 100, 60 + 10)
    assert (row.cost_nanos, row.charged_nanos) == (6_500, 6_500)

    failing = books.admit(key)
    books.settle(failing, 1_000)
    for round in (2, 3):
        opened = books.open(failing, round)
        assert opened is not None
        books.settle(opened, 0, status="failed")
    [row] = books.store.usage(key_id=key.id)
    assert (row.requests, row.failed, row.abandoned) == (3, 1, 0)


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

"""The fair-use policy and the money on every store backend, through the Router's public API.
Each test runs on a fake clock, with a fresh key and providers whose names are its own."""

from __future__ import annotations

import math
import secrets
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from llmrouter import (
    AuthenticationError,
    ChatResult,
    InsufficientCreditsError,
    InvalidRequestError,
    ModelNotFoundError,
    RateLimitError,
    Router,
    UpstreamError,
)
from llmrouter.errors import NotFoundError
from llmrouter.store import AdmissionKind, KeyRecord, Settlement
from llmrouter.store.tables import ledger
from llmrouter.usage import report
from tests.conftest import database_urls

#: Saturday 14 March 2026, 10:00:00 UTC: the fake clock's first reading
START = datetime(2026, 3, 14, 10, 0, tzinfo=UTC).timestamp()
DAY = 86_400
#: USD per token, as written in the config
BASIC = {"prompt": "0.0000012345", "completion": "0.000002", "max_output": 50}
GOLD = {"prompt": "0.00001", "completion": "0.00003", "max_output": 20}
DOWN = {"prompt": "0.000001", "completion": "0.000002", "max_output": 100}


class FakeClock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += seconds

    @property
    def now(self) -> int:
        return int(self.at)

    @property
    def midnight(self) -> int:
        """The next UTC midnight, Unix seconds."""
        return (int(self.at) // DAY + 1) * DAY


def cost_nanos(prices: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> int:
    """tokens × the configured decimal prices, rounded up to a whole nano-dollar."""
    usd = (
        Fraction(prices["prompt"]) * prompt_tokens
        + Fraction(prices["completion"]) * completion_tokens
    )
    return math.ceil(usd * 10**9)


def reservation_nanos(prices: dict[str, Any], text: str, max_output: int) -> int:
    """One user message: its UTF-8 bytes plus 4 marker tokens, and the whole output cap."""
    return cost_nanos(prices, len(text.encode()) + 4, max_output)


@dataclass
class Gateway:
    """A Router on the backend under test, with helpers that read like the README."""

    router: Router
    clock: FakeClock
    echo: str  # the echo provider's name, unique to this test
    down: str  # an openai provider whose port refuses connections

    @property
    def basic(self) -> str:
        return f"{self.echo}#basic"

    @property
    def gold(self) -> str:
        return f"{self.echo}#gold"

    @property
    def broken(self) -> str:
        return f"{self.down}#gpt-x"

    def key(self, **options: Any) -> tuple[KeyRecord, str]:
        return self.router.create_key("key-" + secrets.token_hex(4), **options)

    def ask(
        self, secret: str, text: str = "one two three", *, model: str = "", **params: Any
    ) -> ChatResult:
        body = {
            "model": model or self.basic,
            "messages": [{"role": "user", "content": text}],
            **params,
        }
        return self.router.complete(body, api_key=secret)

    def balance(self, key: KeyRecord) -> int:
        return self.router.store.get_key(key.id).balance_nanos

    def ledger(self, key: KeyRecord) -> list[Any]:
        query = select(ledger).where(ledger.c.key_id == key.id).order_by(ledger.c.id)
        with self.router.store.transaction() as conn:
            return list(conn.execute(query).all())

    def totals(self, provider: str) -> tuple[int, int, int, int]:
        (total,) = [t for t in self.router.provider_totals() if t.provider == provider]
        return total.requests, total.prompt_tokens, total.completion_tokens, total.cost_nanos


@pytest.fixture(scope="module")
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def gateway(database_url: str, refused_port: int, make_router: Callable[..., Router]) -> Gateway:
    suffix = secrets.token_hex(5)
    echo, down = f"echo_{suffix}", f"down_{suffix}"

    def model(model_id: str, prices: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "id": model_id,
            "prompt_price": prices["prompt"],
            "completion_price": prices["completion"],
            "max_output_length": prices["max_output"],
            **extra,
        }

    config = {
        "database_url": database_url,
        "key_cache_seconds": 0,
        "providers": [
            {
                "name": echo,
                "kind": "echo",
                "models": [model("basic", BASIC), model("gold", GOLD, premium=True)],
            },
            {
                "name": down,
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{refused_port}/v1",
                "api_key": "sk-unused-0123456789",
                "max_retries": 0,
                "connect_timeout": 2,
                "models": [
                    model("gpt-x", DOWN),
                    # falls back to a premium model: only ever served when paid for
                    model("gpt-y", DOWN, fallbacks=[f"{echo}#gold"]),
                ],
            },
        ],
    }
    clock = FakeClock(START)
    return Gateway(make_router(config, clock=clock), clock, echo, down)


@pytest.mark.parametrize("database_url", database_urls(), indirect=True)
class TestStoreMatrix:
    # ------------------------------------------------------------------ allowance

    def test_allowance_counts_down_and_resets_at_the_next_utc_day(self, gateway: Gateway) -> None:
        key, secret = gateway.key(daily_requests=3, throttle_seconds=600)
        clock = gateway.clock
        seen = [gateway.ask(secret).rate_limit for _ in range(3)]
        assert [(i.limit, i.remaining) for i in seen] == [(3, 2), (3, 1), (3, 0)]
        # midnight while allowance remains; then the throttle slot, which is open right now
        assert [i.reset for i in seen] == [clock.midnight, clock.midnight, clock.now]

        slot = gateway.ask(secret).rate_limit
        assert (slot.remaining, slot.reset) == (0, clock.now + 600)
        with pytest.raises(RateLimitError):
            gateway.ask(secret)

        clock.at = clock.midnight  # 00:00:00 UTC on Sunday
        fresh = gateway.ask(secret).rate_limit
        assert (fresh.limit, fresh.remaining, fresh.reset) == (3, 2, clock.now + DAY)
        rows = gateway.router.usage(key_id=key.id)
        assert [(r.day, r.requests) for r in rows] == [(START // DAY, 4), (START // DAY + 1, 1)]
        assert [r.admission for r in gateway.ledger(key)] == ["allowance"] * 3 + [
            "throttle",
            "allowance",
        ]

    # ------------------------------------------------------------------ throttle slot

    def test_throttle_slot_is_one_per_window_and_retry_after_is_exact(
        self, gateway: Gateway
    ) -> None:
        key, secret = gateway.key(daily_requests=1, throttle_seconds=90)
        clock = gateway.clock
        gateway.ask(secret)  # the day's allowance
        slot = gateway.ask(secret).rate_limit
        assert (slot.limit, slot.remaining, slot.reset) == (1, 0, clock.now + 90)

        with pytest.raises(RateLimitError) as rejected:
            gateway.ask(secret)
        assert (rejected.value.status, rejected.value.code, rejected.value.retry_after) == (
            429,
            "rate_limit_exceeded",
            90,
        )
        assert rejected.value.headers == {
            "Retry-After": "90",
            "X-RateLimit-Limit": "1",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(clock.now + 90),
        }

        clock.advance(89)
        with pytest.raises(RateLimitError) as almost:
            gateway.ask(secret)
        assert almost.value.retry_after == 1

        clock.advance(1)
        reopened = gateway.ask(secret).rate_limit
        assert reopened.reset == clock.now + 90
        with pytest.raises(RateLimitError) as again:
            gateway.ask(secret)
        assert again.value.retry_after == 90
        assert [r.admission for r in gateway.ledger(key)] == ["allowance", "throttle", "throttle"]

    def test_throttle_wait_ends_at_midnight_when_that_comes_first(self, gateway: Gateway) -> None:
        _, secret = gateway.key(daily_requests=1, throttle_seconds=600)
        clock = gateway.clock
        clock.at = clock.midnight - 120  # 23:58:00
        gateway.ask(secret)
        assert gateway.ask(secret).rate_limit.reset == clock.midnight
        with pytest.raises(RateLimitError) as rejected:
            gateway.ask(secret)
        assert rejected.value.retry_after == 120
        assert rejected.value.headers["X-RateLimit-Reset"] == str(clock.midnight)

    # ------------------------------------------------------------------ credits

    def test_credits_pay_past_the_allowance_exactly(self, gateway: Gateway) -> None:
        key, secret = gateway.key(daily_requests=1, credits="0.01")
        start = 10_000_000
        free = gateway.ask(secret, "one two three").body
        assert gateway.balance(key) == start

        paid = gateway.ask(secret, "four five six seven")
        assert (paid.rate_limit.remaining, paid.rate_limit.reset) == (0, gateway.clock.midnight)
        usage = paid.body.usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (7, 4)  # 4 words + 3 markers
        paid_cost = cost_nanos(BASIC, 7, 4)
        assert paid_cost == 16_642  # 7 × 1,234.5 + 4 × 2,000 = 16,641.5, rounded up
        assert gateway.balance(key) == start - paid_cost

        text = "héllo wörld"  # 13 UTF-8 bytes: the reservation counts bytes, not characters
        stream = gateway.ask(secret, text, stream=True, stream_options={"include_usage": True}).body
        first = next(stream)
        assert first.choices[0].delta.role == "assistant"
        held = reservation_nanos(BASIC, text, BASIC["max_output"])
        assert held == 120_987  # 17 × 1,234.5 + 50 × 2,000 = 120,986.5, rounded up
        assert gateway.balance(key) == start - paid_cost - held
        chunks = list(stream)
        streamed = chunks[-1].usage
        assert (streamed.prompt_tokens, streamed.completion_tokens) == (5, 2)
        streamed_cost = cost_nanos(BASIC, 5, 2)
        assert streamed_cost == 10_173

        after = gateway.router.store.get_key(key.id)
        assert after.balance_nanos == start - paid_cost - streamed_cost
        assert after.spent_nanos == paid_cost + streamed_cost
        rows = gateway.ledger(key)
        assert [(r.admission, r.status, r.charged_nanos) for r in rows] == [
            ("allowance", "ok", 0),
            ("credits", "ok", paid_cost),
            ("credits", "ok", streamed_cost),
        ]
        free_cost = cost_nanos(BASIC, free.usage.prompt_tokens, free.usage.completion_tokens)
        assert [r.cost_nanos for r in rows] == [free_cost, paid_cost, streamed_cost]
        assert after.spent_nanos == sum(r.charged_nanos for r in rows)
        assert gateway.totals(gateway.echo) == (
            3,
            6 + 7 + 5,
            3 + 4 + 2,
            sum(r.cost_nanos for r in rows),
        )

    def test_premium_draws_on_balance_even_within_the_allowance(self, gateway: Gateway) -> None:
        key, secret = gateway.key()  # the default allowance: 200 a day
        held = reservation_nanos(GOLD, "one two three", GOLD["max_output"])
        assert held == 770_000  # (13 bytes + 4) × 10,000 + 20 × 30,000

        with pytest.raises(InsufficientCreditsError) as short:
            gateway.ask(secret, model=gateway.gold)
        assert (short.value.status, short.value.code) == (402, "insufficient_credits")
        gateway.router.top_up(key.id, Decimal(held - 1) / 10**9)
        with pytest.raises(InsufficientCreditsError):
            gateway.ask(secret, model=gateway.gold)
        assert gateway.ledger(key) == []

        gateway.router.top_up(key.id, "0.000000001")  # now exactly the reservation
        premium = gateway.ask(secret, model=gateway.gold)
        assert premium.rate_limit.remaining == 200  # the allowance is untouched
        cost = cost_nanos(GOLD, 6, 3)
        assert cost == 150_000
        after = gateway.router.store.get_key(key.id)
        assert (after.balance_nanos, after.spent_nanos) == (held - cost, cost)
        assert gateway.ask(secret).rate_limit.remaining == 199
        assert [(r.admission, r.charged_nanos) for r in gateway.ledger(key)] == [
            ("credits", cost),
            ("allowance", 0),
        ]

    def test_balance_never_goes_below_zero(self, gateway: Gateway) -> None:
        # 100 one-letter words: echo answers 100 tokens where the model caps output at 20,
        # so the call costs more than its reservation; the key pays the reservation, no more.
        text = " ".join(["a"] * 100)
        held = reservation_nanos(GOLD, text, GOLD["max_output"])
        key, secret = gateway.key(credits=Decimal(held) / 10**9)
        gateway.ask(secret, text, model=gateway.gold)
        cost = cost_nanos(GOLD, 103, 100)
        assert cost > held
        after = gateway.router.store.get_key(key.id)
        assert (after.balance_nanos, after.spent_nanos) == (0, held)
        (row,) = gateway.ledger(key)
        assert (row.cost_nanos, row.charged_nanos) == (cost, held)
        with pytest.raises(InsufficientCreditsError):
            gateway.ask(secret, "a", model=gateway.gold)
        assert gateway.balance(key) == 0

    # ------------------------------------------------------------------ failed calls

    def test_failed_call_hands_back_the_allowance(self, gateway: Gateway) -> None:
        key, secret = gateway.key(daily_requests=2)
        with pytest.raises(UpstreamError) as failed:
            gateway.ask(secret, model=gateway.broken)
        assert failed.value.status == 502
        assert gateway.ask(secret).rate_limit.remaining == 1
        assert gateway.ask(secret).rate_limit.remaining == 0
        rows = gateway.ledger(key)
        assert [(r.status, r.admission, r.cost_nanos, r.charged_nanos) for r in rows] == [
            ("failed", "allowance", 0, 0),
            ("ok", "allowance", cost_nanos(BASIC, 6, 3), 0),
            ("ok", "allowance", cost_nanos(BASIC, 6, 3), 0),
        ]
        assert (rows[0].prompt_tokens, rows[0].completion_tokens) == (0, 0)
        assert gateway.totals(gateway.down) == (1, 0, 0, 0)

    def test_failed_call_hands_back_the_throttle_slot(self, gateway: Gateway) -> None:
        key, secret = gateway.key(daily_requests=1, throttle_seconds=600)
        gateway.ask(secret)
        with pytest.raises(UpstreamError):
            gateway.ask(secret, model=gateway.broken)  # took the slot, then failed
        slot = gateway.ask(secret).rate_limit  # the slot is open again
        assert slot.reset == gateway.clock.now + 600
        with pytest.raises(RateLimitError):
            gateway.ask(secret)
        assert [(r.admission, r.status, r.cost_nanos) for r in gateway.ledger(key)] == [
            ("allowance", "ok", cost_nanos(BASIC, 6, 3)),
            ("throttle", "failed", 0),
            ("throttle", "ok", cost_nanos(BASIC, 6, 3)),
        ]

    def test_failed_call_hands_back_the_reservation(self, gateway: Gateway) -> None:
        key, secret = gateway.key(daily_requests=0, credits="0.001")
        with pytest.raises(UpstreamError):
            gateway.ask(secret, model=gateway.broken)
        after = gateway.router.store.get_key(key.id)
        assert (after.balance_nanos, after.spent_nanos) == (1_000_000, 0)
        (row,) = gateway.ledger(key)
        assert (row.admission, row.status, row.cost_nanos, row.charged_nanos) == (
            "credits",
            "failed",
            0,
            0,
        )
        gateway.ask(secret)  # and the balance still pays for the next call
        assert gateway.balance(key) == 1_000_000 - cost_nanos(BASIC, 6, 3)

    # ------------------------------------------------------------------ rejected requests

    def test_rejected_requests_write_no_ledger_row_and_do_not_count(self, gateway: Gateway) -> None:
        key, secret = gateway.key(daily_requests=2, requests_per_minute=1)
        with pytest.raises(AuthenticationError):
            gateway.ask("sk-llmr-not-a-key")
        with pytest.raises(AuthenticationError):
            gateway.ask("")
        with pytest.raises(InvalidRequestError):
            gateway.ask(secret, temperature=5)
        with pytest.raises(InvalidRequestError):
            gateway.router.complete({"model": gateway.basic, "messages": []}, api_key=secret)
        with pytest.raises(ModelNotFoundError):
            gateway.ask(secret, model=f"{gateway.echo}#no-such-model")
        assert gateway.ledger(key) == []

        assert gateway.ask(secret).rate_limit.remaining == 1
        gateway.clock.advance(15)
        for _ in range(3):
            with pytest.raises(RateLimitError) as per_minute:
                gateway.ask(secret)
            assert per_minute.value.retry_after == 45
        gateway.clock.advance(45)  # the next minute
        assert gateway.ask(secret).rate_limit.remaining == 0  # the 429s took no allowance
        assert [r.status for r in gateway.ledger(key)] == ["ok", "ok"]
        assert gateway.totals(gateway.echo)[0] == 2

    # ------------------------------------------------------------------ settling

    def test_settling_the_same_request_twice_is_a_no_op(self, gateway: Gateway) -> None:
        store, now = gateway.router.store, int(gateway.clock.at * 1000)
        key, _ = gateway.key(daily_requests=0, credits=1)

        def settle_twice(status: str, cost: int) -> tuple[bool, bool]:
            admission = store.admit(
                key.id,
                request_id="chatcmpl-" + secrets.token_hex(16),
                now=now,
                deadline_at=now + 60_000,
                defaults=gateway.router.quota.defaults,
                reserve_nanos=5_000,
                premium=False,
                provider=gateway.echo,
                model=gateway.basic,
                upstream_model="basic",
            )
            assert (admission.kind, admission.reserved_nanos) == (AdmissionKind.CREDITS, 5_000)
            assert admission.ticket is not None
            settlement = Settlement(
                ticket=admission.ticket,
                provider=gateway.echo,
                model=gateway.basic,
                upstream_model="basic",
                status=status,
                prompt_tokens=10 if status == "ok" else 0,
                completion_tokens=20 if status == "ok" else 0,
                usage_estimated=False,
                cost_nanos=cost,
                finished_at=now,
            )
            return store.settle(settlement), store.settle(settlement)

        assert settle_twice("ok", 1_234) == (True, False)
        after = store.get_key(key.id)
        assert (after.balance_nanos, after.spent_nanos) == (10**9 - 1_234, 1_234)
        assert settle_twice("failed", 0) == (True, False)  # the reservation comes back once
        after = store.get_key(key.id)
        assert (after.balance_nanos, after.spent_nanos) == (10**9 - 1_234, 1_234)
        assert [(r.status, r.charged_nanos) for r in gateway.ledger(key)] == [
            ("ok", 1_234),
            ("failed", 0),
        ]
        assert gateway.totals(gateway.echo) == (2, 10, 20, 1_234)

    # ------------------------------------------------------------------ reports and top-ups

    def test_usage_report_groups_by_day_provider_and_model(self, gateway: Gateway) -> None:
        key, secret = gateway.key(daily_requests=5, credits="1")
        gateway.ask(secret, "one two")
        gateway.ask(secret, "one two")
        gateway.ask(secret, "one two three", model=gateway.gold)
        with pytest.raises(UpstreamError):
            gateway.ask(secret, model=gateway.broken)
        gateway.clock.advance(DAY)
        gateway.ask(secret, "one two")

        basic = cost_nanos(BASIC, 5, 2)
        assert basic == 10_173  # 5 × 1,234.5 + 2 × 2,000 = 10,172.5, rounded up

        def row(
            day: str, model: str, calls: int, tokens: tuple[int, int], cost: str, **more: Any
        ) -> dict[str, Any]:
            return {
                "key_id": key.id, "date": day, "provider": model.partition("#")[0], "model": model,
                "requests": calls, "prompt_tokens": tokens[0], "completion_tokens": tokens[1],
                "cost": cost, "failed": 0, "abandoned": 0, "charged": "0", **more,
            }  # fmt: skip

        assert report(gateway.router.usage(key_id=key.id)) == {
            "object": "list",
            "data": [
                row("2026-03-14", gateway.broken, 1, (0, 0), "0", failed=1),
                row("2026-03-14", gateway.basic, 2, (10, 4), "0.000020346"),
                row("2026-03-14", gateway.gold, 1, (6, 3), "0.00015", charged="0.00015"),
                row("2026-03-15", gateway.basic, 1, (5, 2), "0.000010173"),
            ],
            "total": {
                "requests": 5,
                "prompt_tokens": 21,
                "completion_tokens": 9,
                "cost": "0.000180519",
                "charged": "0.00015",
            },
        }
        assert 3 * basic + 150_000 == 180_519  # per call rounded, then summed
        day_two = gateway.router.usage(key_id=key.id, since_day=START // DAY + 1)
        assert [(r.model, r.requests) for r in day_two] == [(gateway.basic, 1)]

    def test_top_up_adds_exactly_and_rejects_bad_amounts(self, gateway: Gateway) -> None:
        key, _ = gateway.key()
        assert gateway.router.top_up(key.id, "0.000000001").balance_nanos == 1
        assert gateway.router.top_up(key.id, "12.345678901").balance_nanos == 12_345_678_902
        assert gateway.router.top_up(key.id, Decimal("0.5")).balance_nanos == 12_845_678_902
        assert gateway.router.top_up(key.id, 2).balance_nanos == 14_845_678_902
        for amount in ("0.0000000001", "1.0000000005", "0", "-1", "-0.000000001", "abc", "NaN"):
            with pytest.raises(InvalidRequestError) as rejected:
                gateway.router.top_up(key.id, amount)
            assert (rejected.value.status, rejected.value.param) == (400, "amount")
        with pytest.raises(InvalidRequestError, match="finer than a nano-dollar"):
            gateway.router.top_up(key.id, "0.0000000001")
        with pytest.raises(NotFoundError):
            gateway.router.top_up("key_" + secrets.token_hex(8), "1")
        after = gateway.router.store.get_key(key.id)
        assert (after.balance_nanos, after.spent_nanos) == (14_845_678_902, 0)

    def test_amounts_are_bounded_and_never_rounded(self, gateway: Gateway) -> None:
        key, _ = gateway.key()
        # 28 significant digits is where Decimal would round: still refused, not rounded
        with pytest.raises(InvalidRequestError, match="finer than a nano-dollar"):
            gateway.router.top_up(key.id, "1.0000000000000000000000000001")
        with pytest.raises(InvalidRequestError, match="more than"):
            gateway.router.top_up(key.id, "1000000000.000000001")
        gateway.router.top_up(key.id, "600000000")
        with pytest.raises(InvalidRequestError, match="at most"):
            gateway.router.top_up(key.id, "600000000")  # the balance would pass $1e9
        assert gateway.balance(key) == 600_000_000 * 10**9

    @pytest.mark.parametrize(
        ("override", "value"),
        [
            ("throttle_seconds", 0),
            ("throttle_seconds", -5),
            ("daily_requests", -1),
            ("requests_per_minute", 0),
            ("daily_requests", 2**31),
        ],
    )
    def test_key_quota_overrides_are_checked(
        self, gateway: Gateway, override: str, value: int
    ) -> None:
        name = "refused-" + secrets.token_hex(4)
        with pytest.raises(InvalidRequestError) as refused:
            gateway.router.create_key(name, **{override: value})
        assert refused.value.param == override
        assert name not in {key.name for key in gateway.router.list_keys()}

    def test_a_premium_fallback_serves_only_a_paying_key(self, gateway: Gateway) -> None:
        _, free = gateway.key()
        with pytest.raises(UpstreamError):  # gpt-y is down; its premium fallback is not free
            gateway.ask(free, model=f"{gateway.down}#gpt-y")

        paying, secret = gateway.key(daily_requests=0, credits="1")
        served = gateway.ask(secret, model=f"{gateway.down}#gpt-y")
        assert served.provider == gateway.echo
        assert served.body.model == gateway.gold
        (row,) = gateway.ledger(paying)
        assert (row.admission, row.model) == ("credits", gateway.gold)
        assert row.charged_nanos == row.cost_nanos > 0

    def test_a_key_revoked_elsewhere_is_refused_as_revoked(
        self, gateway: Gateway, make_router: Callable[..., Router]
    ) -> None:
        cached = make_router({**gateway.router.settings.model_dump(), "key_cache_seconds": 60})
        key, secret = gateway.key()
        cached.chat(
            model=gateway.basic, messages=[{"role": "user", "content": "hi"}], api_key=secret
        )
        gateway.router.revoke_key(key.id)  # another process, as far as `cached` knows
        with pytest.raises(AuthenticationError, match="revoked") as refused:
            cached.chat(
                model=gateway.basic, messages=[{"role": "user", "content": "hi"}], api_key=secret
            )
        assert refused.value.status == 401


def test_sqlite_readers_do_not_wait_for_a_writer(
    tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    """A usage report (or a key lookup) reads while another process holds the write lock."""
    database = tmp_path / "busy.db"
    router = make_router(
        {
            "database_url": f"sqlite:///{database}",
            "providers": [{"name": "echo", "kind": "echo", "models": [{"id": "echo"}]}],
        }
    )
    key, _ = router.create_key("reader")
    writer = sqlite3.connect(database, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process, mid-transaction
    try:
        done = threading.Event()

        def read() -> None:
            router.usage()
            router.store.get_key(key.id)
            done.set()

        threading.Thread(target=read, daemon=True).start()
        # a writer's transaction would wait up to the 30 s busy timeout here
        assert done.wait(timeout=10)
    finally:
        writer.execute("ROLLBACK")
        writer.close()

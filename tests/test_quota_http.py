"""Quotas and usage over real HTTP, as the openai SDK and plain requests see them.
The served Router runs on a fake clock, so every Retry-After and X-RateLimit-* is exact."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import openai
import pytest
import requests
from sqlalchemy import select

from llmrouter import Router
from llmrouter.store.tables import ledger
from tests.conftest import gateway_config
from tests.upstreams.openai_server import FakeOpenAI, Fault

#: Saturday 14 March 2026, 10:00:00 UTC
START = int(datetime(2026, 3, 14, 10, 0, tzinfo=UTC).timestamp())
MIDNIGHT = START + 14 * 3600
HELLO = {"model": "echo", "messages": [{"role": "user", "content": "hello world"}]}


class FakeClock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def router(make_router: Callable[..., Router], fake_openai: FakeOpenAI, clock: FakeClock) -> Router:
    """The Router ``live_api`` serves: the shared test config, on the fake clock."""
    return make_router(gateway_config(fake_openai.url), clock=clock)


def post(base: str, secret: str, body: dict[str, Any] = HELLO, **kwargs: Any) -> requests.Response:
    return requests.post(
        base + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json=body,
        timeout=5,
        **kwargs,
    )


def rate_headers(response: Any) -> dict[str, str]:
    wanted = ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
    return {name: response.headers[name] for name in wanted if name in response.headers}


def usage(base: str, secret: str, **params: str) -> requests.Response:
    return requests.get(
        base + "/v1/usage", headers={"Authorization": f"Bearer {secret}"}, params=params, timeout=5
    )


# ---------------------------------------------------------------------- 429


def test_throttled_key_gets_429_in_openai_shape_with_exact_headers(
    live_api: str, router: Router, clock: FakeClock
) -> None:
    _, secret = router.create_key("throttled", daily_requests=1, throttle_seconds=600)
    last_free = post(live_api, secret)
    assert last_free.status_code == 200
    # no allowance left, and the next throttle slot is open right now
    assert rate_headers(last_free) == {
        "X-RateLimit-Limit": "1",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(START),
    }
    slot = post(live_api, secret)
    assert slot.status_code == 200
    assert slot.headers["X-RateLimit-Reset"] == str(START + 600)

    rejected = post(live_api, secret)
    assert rejected.status_code == 429
    error = rejected.json()["error"]
    assert set(rejected.json()) == {"error"}
    assert (error["type"], error["code"], error["param"]) == (
        "rate_limit_error",
        "rate_limit_exceeded",
        None,
    )
    assert "Try again in 600 s" in error["message"]
    assert rate_headers(rejected) == {
        "Retry-After": "600",
        "X-RateLimit-Limit": "1",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(START + 600),
    }

    clock.at = START + 250
    later = post(live_api, secret)
    assert (later.status_code, later.headers["Retry-After"]) == (429, "350")
    assert later.headers["X-RateLimit-Reset"] == str(START + 600)


def test_sdk_raises_rate_limit_error_carrying_code_and_headers(
    live_api: str, router: Router
) -> None:
    _, secret = router.create_key("sdk", daily_requests=2, throttle_seconds=900)
    client = openai.OpenAI(base_url=live_api + "/v1", api_key=secret, max_retries=0)
    first = client.chat.completions.with_raw_response.create(**HELLO)
    assert first.parse().choices[0].message.content == "hello world"
    assert (first.headers["x-ratelimit-limit"], first.headers["x-ratelimit-remaining"]) == (
        "2",
        "1",
    )
    assert first.headers["x-ratelimit-reset"] == str(MIDNIGHT)  # allowance remains
    client.chat.completions.create(**HELLO)  # the last of the allowance
    client.chat.completions.create(**HELLO)  # the throttle slot

    with pytest.raises(openai.RateLimitError) as rejected:
        client.chat.completions.create(**HELLO)
    assert (rejected.value.status_code, rejected.value.code, rejected.value.type) == (
        429,
        "rate_limit_exceeded",
        "rate_limit_error",
    )
    assert rate_headers(rejected.value.response) == {
        "Retry-After": "900",
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(START + 900),
    }


def test_reset_is_midnight_while_credits_pay(live_api: str, router: Router) -> None:
    _, secret = router.create_key("paying", daily_requests=1, credits="1")
    assert post(live_api, secret).status_code == 200  # the allowance
    paid = post(live_api, secret)
    assert paid.status_code == 200
    assert rate_headers(paid) == {
        "X-RateLimit-Limit": "1",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(MIDNIGHT),
    }


def test_wait_for_a_slot_past_midnight_is_cut_at_midnight(
    live_api: str, router: Router, clock: FakeClock
) -> None:
    clock.at = MIDNIGHT - 300  # 23:55:00
    _, secret = router.create_key("late", daily_requests=1, throttle_seconds=600)
    post(live_api, secret)
    assert post(live_api, secret).headers["X-RateLimit-Reset"] == str(MIDNIGHT)  # the slot
    rejected = post(live_api, secret)
    assert rejected.status_code == 429
    assert (rejected.headers["Retry-After"], rejected.headers["X-RateLimit-Reset"]) == (
        "300",
        str(MIDNIGHT),
    )
    clock.at = MIDNIGHT
    fresh = post(live_api, secret)
    assert (fresh.status_code, fresh.headers["X-RateLimit-Remaining"]) == (200, "0")


# ---------------------------------------------------------------------- 402


def test_premium_model_without_credits_is_402_insufficient_credits(
    live_api: str, router: Router
) -> None:
    key, secret = router.create_key("premium")
    body = {"model": "echo#echo-premium", "messages": [{"role": "user", "content": "hi"}]}
    refused = post(live_api, secret, body)
    assert refused.status_code == 402
    assert refused.json() == {
        "error": {
            "message": refused.json()["error"]["message"],
            "type": "insufficient_credits",
            "param": None,
            "code": "insufficient_credits",
        }
    }
    # (2 bytes + 4) × $0.00001 + 100 output tokens × $0.00002
    assert "$0 available, up to $0.00206 needed" in refused.json()["error"]["message"]
    assert refused.headers["X-RateLimit-Remaining"] == "200"

    client = openai.OpenAI(base_url=live_api + "/v1", api_key=secret, max_retries=0)
    with pytest.raises(openai.APIStatusError) as sdk_refused:
        client.chat.completions.create(**body)
    assert (sdk_refused.value.status_code, sdk_refused.value.code) == (402, "insufficient_credits")

    router.top_up(key.id, "0.00206")
    paid = client.chat.completions.with_raw_response.create(**body)
    assert paid.parse().choices[0].message.content == "hi"
    assert paid.headers["x-ratelimit-remaining"] == "200"  # premium never uses the allowance
    # 1 + 3 prompt tokens × $0.00001, 1 completion token × $0.00002
    assert router.store.get_key(key.id).balance_nanos == 2_060_000 - 60_000


# ---------------------------------------------------------------------- GET /v1/usage


def test_usage_shows_a_key_its_own_rows_and_an_admin_everyones(
    live_api: str, router: Router
) -> None:
    alice, alice_secret = router.create_key("alice")
    bob, bob_secret = router.create_key("bob")
    _, admin_secret = router.create_key("admin", admin=True)
    for secret in (alice_secret, alice_secret, bob_secret):
        assert post(live_api, secret).status_code == 200

    # "hello world": 2 words + 3 marker tokens at $0.000001, 2 words at $0.000002
    def row(key_id: str, calls: int) -> dict[str, Any]:
        return {
            "key_id": key_id,
            "date": "2026-03-14",
            "provider": "echo",
            "model": "echo#echo",
            "requests": calls,
            "failed": 0,
            "abandoned": 0,
            "prompt_tokens": 5 * calls,
            "completion_tokens": 2 * calls,
            "cost": {1: "0.000009", 2: "0.000018"}[calls],
            "charged": "0",
        }

    own = usage(live_api, alice_secret)
    assert own.status_code == 200
    assert own.json() == {
        "object": "list",
        "data": [row(alice.id, 2)],
        "total": {
            "requests": 2,
            "prompt_tokens": 10,
            "completion_tokens": 4,
            "cost": "0.000018",
            "charged": "0",
        },
    }
    assert usage(live_api, alice_secret, key_id=alice.id).json() == own.json()

    forbidden = usage(live_api, alice_secret, key_id=bob.id)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "permission_denied"
    assert forbidden.json()["error"]["param"] == "key_id"

    everyone = usage(live_api, admin_secret).json()
    assert sorted(everyone["data"], key=lambda r: r["key_id"]) == sorted(
        [row(alice.id, 2), row(bob.id, 1)], key=lambda r: r["key_id"]
    )
    assert (everyone["total"]["requests"], everyone["total"]["cost"]) == (3, "0.000027")
    assert usage(live_api, admin_secret, key_id=bob.id).json()["data"] == [row(bob.id, 1)]
    assert usage(live_api, "sk-llmr-wrong").status_code == 401


# ---------------------------------------------------------------------- disconnects


def test_client_disconnect_mid_stream_bills_the_delivered_text_as_partial(
    live_api: str, router: Router, api_key: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.append(Fault(chunk_pause=0.2, no_usage=True))
    said = " ".join(f"w{i}" for i in range(30))  # 109 characters; the answer takes 6 s
    body = {
        "model": "OpenAI#gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": said}],
    }
    response = post(live_api, api_key, body, stream=True)
    events = (line for line in response.iter_lines() if line)
    first, second = next(events), next(events)
    assert b'"role":"assistant"' in first and b'"content":"You"' in second
    response.close()

    row = None
    for _ in range(50):
        with router.store.transaction() as conn:
            row = conn.execute(select(ledger).where(ledger.c.status != "pending")).first()
        if row is not None:
            break
        time.sleep(0.1)
    assert row is not None, "the cut-off stream was never settled"

    # the upstream sent no usage: 4 characters a token, plus 4 per message
    pieces = ("You said: " + said).split(" ")
    delivered = [len(" ".join(pieces[:n])) for n in range(1, len(pieces))]
    assert row.status == "partial" and row.usage_estimated
    assert row.prompt_tokens == math.ceil(len(said) / 4) + 4 == 32
    assert row.completion_tokens in {math.ceil(chars / 4) for chars in delivered}
    assert row.completion_tokens < math.ceil(len("You said: " + said) / 4)
    price = (
        Fraction("0.00000015") * row.prompt_tokens + Fraction("0.0000006") * row.completion_tokens
    )
    assert row.cost_nanos == math.ceil(price * 10**9)
    assert (row.admission, row.charged_nanos) == ("allowance", 0)
    (total,) = [t for t in router.provider_totals() if t.provider == "OpenAI"]
    assert (total.requests, total.prompt_tokens, total.completion_tokens, total.cost_nanos) == (
        1,
        row.prompt_tokens,
        row.completion_tokens,
        row.cost_nanos,
    )
    assert fake_openai.answered == 1

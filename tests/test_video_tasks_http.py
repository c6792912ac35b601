"""Seed 001's video tasks end to end over HTTP: a served Router on the fake Ark and
OpenRouter upstreams; tasks created and polled with plain requests, then the key's ledger,
balance and provider totals read — success charged once from the provider's report (never
above the reservation), failure, cancel, expiry and a refused create released in full.
Helpers and fixtures: ``tests.video_http``.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from llmrouter import Router
from llmrouter.store import KeyRecord
from tests.upstreams.ark_server import FakeArk, Fault, TaskPlan
from tests.upstreams.openrouter_server import FakeOpenRouter
from tests.video_http import (
    EXPIRY_SECONDS,
    OPENROUTER_BODY,
    PER_SECOND,
    SEED_BODY,
    TOKEN_PRICE,
    Client,
    FakeClock,
    assert_error,
    assert_released,
    balance,
    created,
    expected_tokens,
    ledger_rows,
    nanos,
    next_poll,
    totals,
    usd,
)

pytest_plugins = ["tests.video_fixtures", "tests.video_http"]


@pytest.fixture
def router(video_router: Router) -> Router:
    return video_router


@pytest.fixture
def clock(video_clock: FakeClock) -> FakeClock:
    return video_clock


@pytest.fixture
def base(video_api: str) -> str:
    return video_api


# --------------------------------------------------------------------------- the seed's story


def test_seed_body_creates_polls_and_settles_once(
    router: Router, payer: tuple[KeyRecord, Client], fake_ark: FakeArk, clock: FakeClock
) -> None:
    key, client = payer
    reported_tokens = 100_000
    fake_ark.book.plan = TaskPlan.succeeding(completion_tokens=reported_tokens)
    estimate = TOKEN_PRICE * expected_tokens("720p", 6)  # 129600 tokens
    assert estimate == Decimal("0.324")

    task = created(client.create(SEED_BODY))
    token = task["status_token"]
    assert token and task["altllm_status_token"] == token
    assert task["status"] == "queued"
    assert (task["reserved"], task["charged"]) == (usd(estimate), "0")
    assert (task["model"], task["prompt"], task["duration"], task["resolution"]) == (
        "Seedance#seedance-2.0",  # as a chat answer names its model: the one that serves
        SEED_BODY["prompt"],
        6,
        "720p",
    )
    assert task["video_url"] is None and task["error"] is None
    # reserved at create, one pending ledger row
    assert balance(router, key) == key.balance_nanos - nanos(estimate)
    (row,) = ledger_rows(router, key)
    assert (row.status, row.reserved_nanos) == ("pending", nanos(estimate))
    # what Ark was asked for
    (post,) = [r for r in fake_ark.book.requests if r.method == "POST"]
    assert post.body["model"] == "seedance-2.0"
    assert post.body["content"] == [{"type": "text", "text": SEED_BODY["prompt"]}]
    assert (post.body["duration"], post.body["resolution"]) == (6, "720p")

    # polls inside the interval are answered without the provider
    assert client.poll(token).json()["status"] == "queued"
    assert fake_ark.book.count("GET") == 0
    assert next_poll(client, clock, token)["status"] == "running"
    done = next_poll(client, clock, token)
    assert done["status"] == "succeeded"
    assert done["video_url"].startswith("https://ark-content.example/")
    assert done["video_url_expires_at"]

    charged = TOKEN_PRICE * reported_tokens
    assert charged <= estimate
    assert (done["reserved"], done["charged"]) == (usd(estimate), usd(charged))
    (row,) = ledger_rows(router, key)
    assert (row.status, row.charged_nanos, row.cost_nanos, row.completion_tokens) == (
        "ok",
        nanos(charged),
        nanos(charged),
        reported_tokens,
    )
    fresh = router.get_key(key.id)
    assert fresh.balance_nanos == key.balance_nanos - nanos(charged)
    assert fresh.spent_nanos == nanos(charged)
    assert totals(router, "Seedance") == (1, reported_tokens, nanos(charged))

    # a finished task is never fetched again, and nothing moves twice
    gets = fake_ark.book.count("GET")
    for _ in range(3):
        assert next_poll(client, clock, token) == done
    assert fake_ark.book.count("GET") == gets
    assert len(ledger_rows(router, key)) == 1
    assert balance(router, key) == key.balance_nanos - nanos(charged)


def test_charge_is_never_above_the_reservation(
    router: Router, payer: tuple[KeyRecord, Client], fake_ark: FakeArk, clock: FakeClock
) -> None:
    key, client = payer
    estimate_tokens = expected_tokens("480p", 4)
    fake_ark.book.plan = TaskPlan.succeeding(completion_tokens=estimate_tokens * 3)
    body = {**SEED_BODY, "duration": 4, "resolution": "480p"}
    token = created(client.create(body))["status_token"]
    next_poll(client, clock, token)
    done = next_poll(client, clock, token)
    reserved = TOKEN_PRICE * estimate_tokens
    assert (done["status"], done["reserved"], done["charged"]) == (
        "succeeded",
        usd(reserved),
        usd(reserved),
    )
    (row,) = ledger_rows(router, key)
    assert row.charged_nanos == nanos(reserved)
    assert balance(router, key) == key.balance_nanos - nanos(reserved)


def test_the_fast_alias_and_defaults(
    router: Router, payer: tuple[KeyRecord, Client], fake_ark: FakeArk
) -> None:
    """No duration or resolution: the model's first resolution and its duration bounds."""
    _, client = payer
    task = created(client.create({"model": "altllm-flex-seedance-2.0-fast", "prompt": "a cat"}))
    assert task["model"] == "Seedance#seedance-2.0-fast"
    (post,) = [r for r in fake_ark.book.requests if r.method == "POST"]
    assert post.body["model"] == "seedance-2.0-fast"
    seconds, resolution = task["duration"], task["resolution"]
    assert (resolution, post.body["duration"]) == ("480p", seconds)
    assert 2 <= seconds <= 12
    assert task["reserved"] == usd(TOKEN_PRICE * expected_tokens("480p", seconds))


# --------------------------------------------------------------------------- per second


def test_openrouter_is_charged_its_reported_cost(
    router: Router,
    payer: tuple[KeyRecord, Client],
    fake_openrouter: FakeOpenRouter,
    clock: FakeClock,
) -> None:
    key, client = payer
    fake_openrouter.book.plan = TaskPlan.succeeding(cost="0.0321")
    task = created(client.create(OPENROUTER_BODY))
    estimate = PER_SECOND["480p"] * 5
    assert task["reserved"] == usd(estimate)
    (post,) = [r for r in fake_openrouter.book.requests if r.method == "POST"]
    assert post.body["model"] == "bytedance/seedance-2.0"
    assert next_poll(client, clock, task["status_token"])["status"] == "running"
    done = next_poll(client, clock, task["status_token"])
    assert done["status"] == "succeeded"
    assert done["video_url"].startswith("https://storage.openrouter.example/")
    assert done["charged"] == "0.0321"
    (row,) = ledger_rows(router, key)
    assert (row.status, row.charged_nanos, row.cost_nanos) == ("ok", 32_100_000, 32_100_000)
    assert balance(router, key) == key.balance_nanos - 32_100_000
    assert totals(router, "OpenRouter") == (1, 0, 32_100_000)


def test_openrouter_cost_above_the_reservation_is_capped(
    router: Router,
    payer: tuple[KeyRecord, Client],
    fake_openrouter: FakeOpenRouter,
    clock: FakeClock,
) -> None:
    key, client = payer
    fake_openrouter.book.plan = TaskPlan.succeeding(cost="0.0734")
    token = created(client.create(OPENROUTER_BODY))["status_token"]
    next_poll(client, clock, token)
    done = next_poll(client, clock, token)
    assert (done["reserved"], done["charged"]) == ("0.05", "0.05")
    (row,) = ledger_rows(router, key)
    # the ledger keeps what the provider's report came to; the key pays the reservation
    assert (row.cost_nanos, row.charged_nanos) == (73_400_000, 50_000_000)
    assert balance(router, key) == key.balance_nanos - 50_000_000


def test_openrouter_without_a_cost_is_charged_seconds_times_rate(
    router: Router,
    payer: tuple[KeyRecord, Client],
    fake_openrouter: FakeOpenRouter,
    clock: FakeClock,
) -> None:
    key, client = payer
    body = {**OPENROUTER_BODY, "duration": 4, "resolution": "1080p"}
    task = created(client.create(body))
    estimate = PER_SECOND["1080p"] * 4
    assert task["reserved"] == usd(estimate) == "0.2"
    (job_id,) = fake_openrouter.book.tasks
    # a completed job whose answer has no usage at all
    fake_openrouter.script.append(
        Fault(raw=json.dumps({"id": job_id, "status": "completed", "urls": ["https://x/v.mp4"]}))
    )
    done = next_poll(client, clock, task["status_token"])
    assert (done["status"], done["charged"]) == ("succeeded", "0.2")
    (row,) = ledger_rows(router, key)
    assert (row.status, row.charged_nanos) == ("ok", nanos(estimate))
    assert balance(router, key) == key.balance_nanos - nanos(estimate)


# --------------------------------------------------------------------------- released


def test_a_failed_task_costs_nothing(
    router: Router, payer: tuple[KeyRecord, Client], fake_ark: FakeArk, clock: FakeClock
) -> None:
    key, client = payer
    fake_ark.book.plan = TaskPlan.failing()
    token = created(client.create(SEED_BODY))["status_token"]
    assert next_poll(client, clock, token)["status"] == "running"
    failed = next_poll(client, clock, token)
    assert "OutputVideoSensitiveContentDetected" in failed["error"]
    assert_released(router, key, failed, "failed")
    assert totals(router, "Seedance")[2] == 0


def test_a_cancelled_queued_task_costs_nothing(
    router: Router, payer: tuple[KeyRecord, Client], fake_ark: FakeArk, clock: FakeClock
) -> None:
    key, client = payer
    fake_ark.book.plan = TaskPlan.staying_queued()
    token = created(client.create(SEED_BODY))["status_token"]
    assert next_poll(client, clock, token)["status"] == "queued"
    answer = client.cancel(token)
    assert answer.status_code == 200, answer.text
    assert_released(router, key, answer.json(), "cancelled")
    assert fake_ark.book.count("DELETE") == 1
    # cancelled is final: polls and a second cancel change nothing upstream or in the books
    gets = fake_ark.book.count("GET")
    assert next_poll(client, clock, token)["status"] == "cancelled"
    assert_error(client.cancel(token), 409, "task_not_cancellable", "status_token")
    assert (fake_ark.book.count("GET"), fake_ark.book.count("DELETE")) == (gets, 1)
    assert_released(router, key, client.poll(token).json(), "cancelled")


@pytest.mark.parametrize("seen_running", [True, False], ids=["seen-running", "not-seen-yet"])
def test_cancelling_a_running_task_is_409(
    router: Router,
    payer: tuple[KeyRecord, Client],
    fake_ark: FakeArk,
    clock: FakeClock,
    seen_running: bool,
) -> None:
    """Whether the router has seen the task start or only the provider knows it."""
    key, client = payer
    fake_ark.book.plan = TaskPlan.running()
    token = created(client.create(SEED_BODY))["status_token"]
    if seen_running:
        assert next_poll(client, clock, token)["status"] == "running"
    assert_error(client.cancel(token), 409, "task_not_cancellable", "status_token")
    assert fake_ark.book.count("DELETE") == 0
    (row,) = ledger_rows(router, key)
    assert row.status == "pending"  # still running: its reservation stays held
    assert next_poll(client, clock, token)["status"] == "running"


def test_an_expired_task_costs_nothing(
    router: Router, payer: tuple[KeyRecord, Client], fake_ark: FakeArk, clock: FakeClock
) -> None:
    """Past video_task_expiry_seconds with the provider still at it: ended here."""
    key, client = payer
    fake_ark.book.plan = TaskPlan.staying_queued()
    token = created(client.create(SEED_BODY))["status_token"]
    clock.at += EXPIRY_SECONDS
    expired = client.poll(token).json()
    assert_released(router, key, expired, "expired")
    gets = fake_ark.book.count("GET")
    assert next_poll(client, clock, token)["status"] == "expired"
    assert fake_ark.book.count("GET") == gets


def test_a_task_the_provider_expires_costs_nothing(
    router: Router, payer: tuple[KeyRecord, Client], fake_ark: FakeArk, clock: FakeClock
) -> None:
    key, client = payer
    fake_ark.book.plan = TaskPlan.expiring()
    token = created(client.create(SEED_BODY))["status_token"]
    assert_released(router, key, next_poll(client, clock, token), "expired")


@pytest.mark.parametrize("status", [500, 401])
def test_a_refused_create_is_502_and_costs_nothing(
    router: Router, payer: tuple[KeyRecord, Client], fake_ark: FakeArk, status: int
) -> None:
    key, client = payer
    fake_ark.script.append(Fault(status=status))
    answer = client.create(SEED_BODY)
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "upstream_error"
    assert error["code"] == ("upstream_auth_error" if status == 401 else "upstream_error")
    (row,) = ledger_rows(router, key)
    assert (row.status, row.charged_nanos) == ("failed", 0)
    fresh = router.get_key(key.id)
    assert (fresh.balance_nanos, fresh.spent_nanos) == (key.balance_nanos, 0)
    (task,) = client.list().json()["data"]
    assert (task["status"], task["charged"]) == ("failed", "0")

"""Seed 001's video task API at its edges, over HTTP: who pays (402, a free key pays
anyway, requests_per_minute), whose tasks a token reaches (another key's, an altered one:
404 alike; across a restart), the key's list, every bad field named, the routes without a
key or a secret_key, and the video models in /v1/models. Helpers: ``tests.video_http``.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from llmrouter import Router
from llmrouter.store import KeyRecord
from tests.upstreams.ark_server import FakeArk
from tests.upstreams.openrouter_server import FakeOpenRouter
from tests.video_http import (
    FPS,
    OPENROUTER_MODEL,
    SEED_BODY,
    TASKS,
    TOKEN_PRICE,
    Client,
    FakeClock,
    assert_error,
    balance,
    created,
    expected_tokens,
    ledger_rows,
    nanos,
    next_poll,
    paid_key,
    serve,
    usd,
    video_config,
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


# --------------------------------------------------------------------------- admission


def test_a_balance_short_of_the_estimate_is_402_with_nothing_made(
    router: Router, base: str, fake_ark: FakeArk
) -> None:
    estimate = TOKEN_PRICE * expected_tokens("720p", 6)
    record, secret = router.create_key("short")
    router.top_up(record.id, str(estimate - Decimal("0.000000001")))
    client = Client(base, secret)
    assert_error(client.create(SEED_BODY), 402, "insufficient_credits", None)
    assert fake_ark.book.requests == []
    assert ledger_rows(router, record) == []
    assert client.list().json()["data"] == []
    assert balance(router, record) == nanos(estimate) - 1
    router.top_up(record.id, "0.000000001")  # now exactly the estimate: admitted
    task = created(client.create(SEED_BODY))
    assert task["reserved"] == usd(estimate)
    assert balance(router, record) == 0


def test_a_free_key_with_allowance_left_still_pays(
    router: Router, base: str, fake_ark: FakeArk
) -> None:
    record, secret = router.create_key("free", daily_requests=100)
    client = Client(base, secret)
    assert_error(client.create(SEED_BODY), 402, "insufficient_credits", None)
    assert fake_ark.book.requests == []
    router.top_up(record.id, "1")
    task = created(client.create(SEED_BODY))
    (row,) = ledger_rows(router, record)
    assert row.admission == "credits" and row.reserved_nanos == nanos(Decimal(task["reserved"]))
    assert balance(router, record) == nanos(Decimal(1) - Decimal(task["reserved"]))


def test_requests_per_minute_applies(router: Router, base: str, fake_ark: FakeArk) -> None:
    record, secret = router.create_key("rpm", requests_per_minute=1)
    router.top_up(record.id, "10")
    client = Client(base, secret)
    created(client.create(SEED_BODY))
    limited = client.create(SEED_BODY)
    assert_error(limited, 429, "rate_limit_exceeded", None)
    assert "Retry-After" in limited.headers
    assert fake_ark.book.count("POST") == 1
    assert len(ledger_rows(router, record)) == 1


# --------------------------------------------------------------------------- tokens


def test_tokens_are_bound_to_their_key(
    router: Router, payer: tuple[KeyRecord, Client], base: str, fake_ark: FakeArk
) -> None:
    _, client = payer
    token = created(client.create(SEED_BODY))["status_token"]
    _, stranger = paid_key(router, base, "other")
    garbage = stranger.poll("not-a-token")
    assert_error(garbage, 404, "task_not_found", "status_token")
    for answer in (stranger.poll(token), stranger.cancel(token), client.poll("x" + token)):
        assert (answer.status_code, answer.json()) == (404, garbage.json())
    assert stranger.list().json()["data"] == []
    assert fake_ark.book.count("DELETE") == 0
    assert client.poll(token).status_code == 200


def test_a_token_altered_in_any_byte_is_404(
    router: Router, payer: tuple[KeyRecord, Client]
) -> None:
    _, client = payer
    token = created(client.create(SEED_BODY))["status_token"]
    garbage = client.poll("garbage").json()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    for index, char in enumerate(token):
        swapped = alphabet[(alphabet.index(char) + 1) % len(alphabet)]
        altered = token[:index] + swapped + token[index + 1 :]
        answer = client.poll(altered)
        assert (answer.status_code, answer.json()) == (404, garbage), (index, altered)
    for altered in (token[:-1], token + "A", token[1:]):
        assert client.poll(altered).status_code == 404


def test_a_token_outlives_its_router(
    router: Router,
    payer: tuple[KeyRecord, Client],
    make_router: Callable[..., Router],
    fake_ark: FakeArk,
    fake_openrouter: FakeOpenRouter,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """Another Router with the same secret_key and database answers the token."""
    config = video_config(fake_ark, fake_openrouter, database_url=f"sqlite:///{tmp_path}/v.db")
    first = make_router(config, clock=clock)
    record, secret = first.create_key("restart")
    first.top_up(record.id, "5")
    for url in serve(first):
        token = created(Client(url, secret).create(SEED_BODY))["status_token"]
    first.close()
    second = make_router(config, clock=clock)
    for url in serve(second):
        client = Client(url, secret)
        assert next_poll(client, clock, token)["status"] == "running"
        assert next_poll(client, clock, token)["status"] == "succeeded"
    (row,) = ledger_rows(second, record)
    assert row.status == "ok"


def test_the_list_is_the_keys_own_newest_first_in_pages(
    router: Router, payer: tuple[KeyRecord, Client], base: str, clock: FakeClock
) -> None:
    _, client = payer
    _, stranger = paid_key(router, base, "other")
    created(stranger.create(SEED_BODY))
    tokens = []
    for index in range(5):
        clock.at += 1
        tokens.append(
            created(client.create({**SEED_BODY, "prompt": f"take {index}"}))["status_token"]
        )
    newest_first = tokens[::-1]
    whole = client.list().json()
    assert [t["status_token"] for t in whole["data"]] == newest_first
    assert [t["prompt"] for t in whole["data"]] == [f"take {i}" for i in (4, 3, 2, 1, 0)]
    page = client.list(limit=2).json()
    assert [t["status_token"] for t in page["data"]] == newest_first[:2]
    assert page["has_more"] is True
    page = client.list(limit=2, before=page["next_before"]).json()
    assert [t["status_token"] for t in page["data"]] == newest_first[2:4]
    page = client.list(limit=2, before=page["next_before"]).json()
    assert [t["status_token"] for t in page["data"]] == newest_first[4:]
    assert page["has_more"] is False
    # a page ending exactly at the oldest task has no more either
    page = client.list(limit=5).json()
    assert len(page["data"]) == 5 and page["has_more"] is False
    assert client.list(before=page["next_before"]).json()["data"] == []
    assert len(stranger.list().json()["data"]) == 1
    # another key's token as the cursor is no hint either
    foreign = stranger.list().json()["data"][0]["status_token"]
    assert_error(client.list(before=foreign), 404, "task_not_found", "status_token")
    assert_error(client.list(limit=0), 400, "invalid_request", "limit")
    assert_error(client.list(limit="x"), 400, "invalid_request", "limit")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("change", "param", "code"),
    [
        ({"prompt": ""}, "prompt", "invalid_request"),
        ({"prompt": "   "}, "prompt", "invalid_request"),
        ({"resolution": "4k"}, "resolution", "invalid_request"),
        ({"duration": 1}, "duration", "invalid_request"),
        ({"duration": 13}, "duration", "invalid_request"),
        ({"duration": 0}, "duration", "invalid_request"),
        ({"ratio": "5:4"}, "ratio", "invalid_request"),
        ({"colour": "blue"}, "colour", "invalid_request"),
        ({"duration": "6"}, "duration", "invalid_request"),
        ({"duration": 6.5}, "duration", "invalid_request"),
        ({"duration": True}, "duration", "invalid_request"),
        ({"prompt": 7}, "prompt", "invalid_request"),
        ({"resolution": 720}, "resolution", "invalid_request"),
        ({"model": "echo"}, "model", "not_a_video_model"),
        ({"model": "nope"}, "model", "model_not_found"),
        ({"model": None}, "model", "invalid_request"),
        ({"images": "x"}, "images", "invalid_request"),
        (
            {"images": [{"url": "https://x/a.png", "role": "middle"}]},
            "images[0].role",
            "invalid_request",
        ),
    ],
)
def test_bad_input_is_400_naming_the_field(
    router: Router,
    payer: tuple[KeyRecord, Client],
    fake_ark: FakeArk,
    change: dict[str, Any],
    param: str,
    code: str,
) -> None:
    key, client = payer
    answer = client.create({**SEED_BODY, **change})
    assert_error(answer, 404 if code == "model_not_found" else 400, code, param)
    assert fake_ark.book.requests == []
    assert ledger_rows(router, key) == []
    assert balance(router, key) == key.balance_nanos


def test_missing_parts_are_named(payer: tuple[KeyRecord, Client], fake_ark: FakeArk) -> None:
    _, client = payer
    for field in ("model", "prompt"):
        body = {k: v for k, v in SEED_BODY.items() if k != field}
        assert_error(client.create(body), 400, "invalid_request", field)
    for body in ([SEED_BODY], "text", None):
        assert client.create(body).status_code == 400
    answer = requests.post(
        client.base + TASKS, data=b"{not json", headers=client.headers, timeout=10
    )
    assert answer.status_code == 400
    assert fake_ark.book.requests == []


def test_a_video_model_used_for_chat_is_400(
    payer: tuple[KeyRecord, Client], base: str, fake_ark: FakeArk
) -> None:
    _, client = payer
    answer = requests.post(
        base + "/v1/chat/completions",
        json={"model": "altllm-flex-seedance-2.0", "messages": [{"role": "user", "content": "hi"}]},
        headers=client.headers,
        timeout=10,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "model"
    assert fake_ark.book.requests == []


def test_no_key_is_401(base: str, payer: tuple[KeyRecord, Client]) -> None:
    _, client = payer
    token = created(client.create(SEED_BODY))["status_token"]
    anonymous = Client(base, None)
    wrong = Client(base, "sk-not-a-key")
    for who in (anonymous, wrong):
        for answer in (who.create(SEED_BODY), who.poll(token), who.cancel(token), who.list()):
            assert answer.status_code == 401, answer.text
            assert answer.json()["error"]["code"] == "invalid_api_key"


def test_a_router_without_secret_key_is_409(
    make_router: Callable[..., Router], fake_ark: FakeArk, fake_openrouter: FakeOpenRouter
) -> None:
    config = video_config(fake_ark, fake_openrouter)
    del config["secret_key"]
    bare = make_router(config)
    record, secret = bare.create_key("bare")
    bare.top_up(record.id, "5")
    for url in serve(bare):
        client = Client(url, secret)
        for answer in (client.create(SEED_BODY), client.poll("anything"), client.list()):
            assert_error(answer, 409, "secret_key_missing", None)
    assert fake_ark.book.requests == []
    assert ledger_rows(bare, record) == []


# --------------------------------------------------------------------------- /v1/models


def test_models_show_the_video_models_and_their_terms(base: str) -> None:
    listed = requests.get(base + "/v1/models", timeout=10).json()["data"]
    cards = {card["id"]: card for card in listed}
    for name in ("altllm-flex-seedance-2.0", "altllm-flex-seedance-2.0-fast"):
        card = cards[name]
        assert card["output_modalities"] == ["video"]
        assert card["pricing"]["completion"] == str(TOKEN_PRICE)
        assert card["video"]["resolutions"] == ["480p", "720p", "1080p"]
        assert card["video"]["ratios"] == ["16:9", "9:16", "1:1"]
        assert (card["video"]["min_duration"], card["video"]["max_duration"]) == (2, 12)
        assert card["video"]["fps"] == FPS
    per_second = cards[OPENROUTER_MODEL]
    assert per_second["output_modalities"] == ["video"]
    assert per_second["video"]["price_per_second"] == {
        "480p": "0.01",
        "720p": "0.02",
        "1080p": "0.05",
    }
    one = requests.get(base + "/v1/models/altllm-flex-seedance-2.0", timeout=10).json()
    assert one["video"] == cards["altllm-flex-seedance-2.0"]["video"]
    assert cards["echo#echo"]["output_modalities"] == ["text"]
    assert cards["echo#echo"]["video"] is None


def test_an_idempotency_key_replays_its_task(
    router: Router, payer: tuple[KeyRecord, Client], fake_ark: FakeArk
) -> None:
    key, client = payer
    first = created(client.create(SEED_BODY, **{"Idempotency-Key": "order-17"}))
    again = created(client.create(SEED_BODY, **{"Idempotency-Key": "order-17"}))
    assert again["status_token"] == first["status_token"]
    assert fake_ark.book.count("POST") == 1
    assert len(ledger_rows(router, key)) == 1
    assert balance(router, key) == key.balance_nanos - nanos(Decimal(first["reserved"]))
    other_body = {**SEED_BODY, "duration": 5}
    conflict = client.create(other_body, **{"Idempotency-Key": "order-17"})
    assert_error(conflict, 409, "idempotency_conflict", "Idempotency-Key")
    assert fake_ark.book.count("POST") == 1
    # another key's same Idempotency-Key is its own
    _, stranger = paid_key(router, client.base, "other")
    theirs = created(stranger.create(SEED_BODY, **{"Idempotency-Key": "order-17"}))
    assert theirs["status_token"] != first["status_token"]
    assert fake_ark.book.count("POST") == 2

"""Video task polls against the provider: however many clients poll one task, and however
fast, at most one upstream GET per ``video_poll_seconds``; a finished task is never
fetched again; a poll the provider does not answer is not a final status."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from llmrouter import Router
from tests.upstreams.ark_server import FakeArk, Fault, TaskPlan
from tests.upstreams.openrouter_server import FakeOpenRouter
from tests.video_http import (
    POLL_SECONDS,
    SEED_BODY,
    TASKS,
    FakeClock,
    created,
    ledger_rows,
    serve,
    video_config,
)

pytest_plugins = ["tests.video_fixtures", "tests.video_http"]
CLIENTS = 20


def storm(url: str, secret: str, token: str) -> list[dict[str, Any]]:
    """``CLIENTS`` polls of ``token`` at once, each on its own connection."""
    headers = {"Authorization": f"Bearer {secret}"}

    def poll(_: int) -> dict[str, Any]:
        answer = requests.get(f"{url}{TASKS}/{token}", headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(poll, range(CLIENTS)))


def test_a_poll_storm_reaches_the_provider_once_per_interval(
    make_router: Callable[..., Router],
    fake_ark: FakeArk,
    fake_openrouter: FakeOpenRouter,
) -> None:
    clock = FakeClock(1_800_000_000)
    router = make_router(video_config(fake_ark, fake_openrouter), clock=clock)
    record, secret = router.create_key("storm")
    router.top_up(record.id, "5")
    fake_ark.book.plan = TaskPlan(steps=("queued", "running", "running", "succeeded"))
    for url in serve(router):
        token = created(
            requests.post(
                url + TASKS, json=SEED_BODY, headers={"Authorization": f"Bearer {secret}"}
            )
        )["status_token"]
        # inside the first interval: nobody reaches the provider
        assert {t["status"] for t in storm(url, secret, token)} == {"queued"}
        assert fake_ark.book.count("GET") == 0
        seen = []
        for interval in range(1, 4):
            clock.at += POLL_SECONDS
            answers = storm(url, secret, token)
            assert fake_ark.book.count("GET") == interval, interval
            seen.append({t["status"] for t in answers})
        # each storm saw the provider's one answer (or, for a poll that lost the race to
        # the one that asked, the state before it)
        assert seen[0] <= {"queued", "running"} and seen[1] == {"running"}
        assert "succeeded" in seen[2]
        # finished: never fetched again, however long and hard it is polled
        for _ in range(3):
            clock.at += POLL_SECONDS * 10
            assert {t["status"] for t in storm(url, secret, token)} == {"succeeded"}
        assert fake_ark.book.count("GET") == 3
    (row,) = ledger_rows(router, record)
    assert row.status == "ok"


def test_real_time_fast_polls_stay_under_one_get_per_interval(
    make_router: Callable[..., Router],
    fake_ark: FakeArk,
    fake_openrouter: FakeOpenRouter,
) -> None:
    """On the real clock: 20 clients polling as fast as they can for ~1 s at a 0.25 s
    interval cause at most one GET per interval begun."""
    import time

    interval = 0.25
    config = video_config(fake_ark, fake_openrouter, video_poll_seconds=interval)
    router = make_router(config)
    record, secret = router.create_key("fast")
    router.top_up(record.id, "5")
    fake_ark.book.plan = TaskPlan.staying_queued()
    for url in serve(router):
        token = created(
            requests.post(
                url + TASKS, json=SEED_BODY, headers={"Authorization": f"Bearer {secret}"}
            )
        )["status_token"]
        began = time.monotonic()
        while time.monotonic() - began < 1.0:
            storm(url, secret, token)
        elapsed = time.monotonic() - began
    assert 1 <= fake_ark.book.count("GET") <= int(elapsed / interval) + 1


def test_a_poll_the_provider_does_not_answer_is_not_final(
    make_router: Callable[..., Router],
    fake_ark: FakeArk,
    fake_openrouter: FakeOpenRouter,
) -> None:
    clock = FakeClock(1_800_000_000)
    router = make_router(video_config(fake_ark, fake_openrouter), clock=clock)
    record, secret = router.create_key("flaky")
    router.top_up(record.id, "5")
    headers = {"Authorization": f"Bearer {secret}"}
    for url in serve(router):
        token = created(requests.post(url + TASKS, json=SEED_BODY, headers=headers))["status_token"]
        for fault in (Fault(status=500), Fault(status=503), Fault(reset_mid_body=True)):
            fake_ark.script.append(fault)
            clock.at += POLL_SECONDS
            answer = requests.get(f"{url}{TASKS}/{token}", headers=headers, timeout=10)
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "queued"
        (row,) = ledger_rows(router, record)
        assert row.status == "pending"
        clock.at += POLL_SECONDS
        # the fake's task moves a step per answered GET: the faults did not answer
        assert requests.get(f"{url}{TASKS}/{token}", headers=headers).json()["status"] in (
            "running",
            "succeeded",
        )

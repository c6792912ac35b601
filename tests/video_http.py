"""Helpers of the video task tests over HTTP (a pytest plugin: its fixtures are the test
modules' when they name it in ``pytest_plugins``): a Router serving the fake Ark and
OpenRouter upstreams on a fake clock, a key's client, and the books read after a story.

A poll reaches the provider only once the clock has moved ``POLL_SECONDS`` on, so every
count of upstream GETs is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import select

from flask_ext import LLMRouter
from llmrouter import Router
from llmrouter.store import KeyRecord
from llmrouter.store.tables import ledger
from tests.upstreams.ark_server import FakeArk
from tests.upstreams.loopback import LoopbackServer
from tests.upstreams.openrouter_server import FakeOpenRouter

START = datetime(2026, 3, 14, 10, 0, tzinfo=UTC).timestamp()
POLL_SECONDS = 2.0
EXPIRY_SECONDS = 3600.0
SECRET_KEY = "video-test-secret-key-0123456789"
#: Seedance's price per token (Ark bills a video by its tokens)
TOKEN_PRICE = Decimal("0.0000025")
#: the per-second model's rates by resolution
PER_SECOND = {"480p": Decimal("0.01"), "720p": Decimal("0.02"), "1080p": Decimal("0.05")}
FPS = 24
#: each resolution bucket's pixels, as pricing.py documents them (16:9)
PIXELS = {"480p": (864, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
TASKS = "/v1/contents/generations/tasks"
#: seed 001's own request body, verbatim
SEED_BODY = {
    "model": "altllm-flex-seedance-2.0",
    "prompt": "A cinematic 6-second product reveal of a crypto analytics dashboard, smooth "
    "camera push-in, crisp UI reflections",
    "duration": 6,
    "resolution": "720p",
}
OPENROUTER_MODEL = "openrouter-seedance"
OPENROUTER_BODY = {"model": OPENROUTER_MODEL, "prompt": "a lighthouse at dusk", "duration": 5}


def expected_tokens(resolution: str, seconds: int) -> int:
    """Ark's formula: width × height × fps × seconds / 1024, rounded up."""
    width, height = PIXELS[resolution]
    return math.ceil(Decimal(width * height * FPS * seconds) / 1024)


def usd(value: Decimal) -> str:
    """A USD amount as the API writes it (a decimal string, no exponent, no trailing 0)."""
    text = format(value.quantize(Decimal("1e-9")), "f").rstrip("0").rstrip(".")
    return text or "0"


def nanos(value: Decimal) -> int:
    return int(value * 1_000_000_000)


class FakeClock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def video_models() -> list[dict[str, Any]]:
    common = {
        "output_modalities": ["video"],
        "input_modalities": ["text", "image"],
        "resolutions": ["480p", "720p", "1080p"],
        "ratios": ["16:9", "9:16", "1:1"],
        "min_duration": 2,
        "max_duration": 12,
        "fps": FPS,
        "completion_price": str(TOKEN_PRICE),
    }
    return [{"id": "seedance-2.0", **common}, {"id": "seedance-2.0-fast", **common}]


def video_config(ark: FakeArk, openrouter: FakeOpenRouter, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "database_url": "sqlite://",
        "secret_key": SECRET_KEY,
        "video_poll_seconds": POLL_SECONDS,
        "video_task_expiry_seconds": EXPIRY_SECONDS,
        "providers": [
            {"name": "echo", "kind": "echo", "models": [{"id": "echo"}]},
            ark.provider(name="Seedance", models=video_models()),
            openrouter.provider(
                models=[
                    {
                        "id": "bytedance/seedance-2.0",
                        "output_modalities": ["video"],
                        "resolutions": ["480p", "720p", "1080p"],
                        "min_duration": 2,
                        "max_duration": 10,
                        "price_per_second": {k: str(v) for k, v in PER_SECOND.items()},
                    }
                ],
            ),
        ],
        "aliases": {
            "altllm-flex-seedance-2.0": "Seedance#seedance-2.0",
            "altllm-flex-seedance-2.0-fast": "Seedance#seedance-2.0-fast",
            OPENROUTER_MODEL: "OpenRouter#bytedance/seedance-2.0",
        },
    }
    config.update(overrides)
    return config


# The fixtures are named video_*: a plugin's fixtures lose to conftest's of the same name
# (``router``); a test module names them as it likes.


@pytest.fixture
def video_clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def video_router(
    make_router: Callable[..., Router],
    fake_ark: FakeArk,
    fake_openrouter: FakeOpenRouter,
    video_clock: FakeClock,
) -> Router:
    """A Router on the fake upstreams and the fake clock, with ``video_config``."""
    return make_router(video_config(fake_ark, fake_openrouter), clock=video_clock)


def serve(router: Router) -> Iterator[str]:
    app = Flask("host-app")
    LLMRouter(app, router=router)
    with LoopbackServer(app) as server:
        yield server.url


@pytest.fixture
def video_api(video_router: Router) -> Iterator[str]:
    """``video_router`` served on loopback: the base URL."""
    yield from serve(video_router)


class Client:
    """One API key's view of the served API."""

    def __init__(self, base: str, secret: str | None) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    def create(self, body: Any, **headers: str) -> requests.Response:
        return requests.post(
            self.base + TASKS, json=body, headers={**self.headers, **headers}, timeout=10
        )

    def poll(self, token: str) -> requests.Response:
        return requests.get(f"{self.base}{TASKS}/{token}", headers=self.headers, timeout=10)

    def cancel(self, token: str) -> requests.Response:
        return requests.delete(f"{self.base}{TASKS}/{token}", headers=self.headers, timeout=10)

    def list(self, **params: Any) -> requests.Response:
        return requests.get(self.base + TASKS, headers=self.headers, params=params, timeout=10)


def paid_key(router: Router, base: str, name: str, amount: str = "10") -> tuple[KeyRecord, Client]:
    """A new key with ``amount`` USD on it, and its client."""
    record, secret = router.create_key(name)
    router.top_up(record.id, amount)
    return router.get_key(record.id), Client(base, secret)


@pytest.fixture
def payer(video_router: Router, video_api: str) -> tuple[KeyRecord, Client]:
    """A key with 10 USD on it, and its client."""
    return paid_key(video_router, video_api, "payer")


def ledger_rows(router: Router, key: KeyRecord) -> list[Any]:
    with router.store.transaction() as conn:
        return list(conn.execute(select(ledger).where(ledger.c.key_id == key.id)).all())


def balance(router: Router, key: KeyRecord) -> int:
    return router.get_key(key.id).balance_nanos


def totals(router: Router, provider: str) -> tuple[int, int, int]:
    for total in router.provider_totals():
        if total.provider == provider:
            return total.requests, total.completion_tokens, total.cost_nanos
    return 0, 0, 0


def created(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


def next_poll(client: Client, clock: FakeClock, token: str) -> dict[str, Any]:
    """A poll once the poll interval has passed (so it reaches the provider)."""
    clock.at += POLL_SECONDS
    answer = client.poll(token)
    assert answer.status_code == 200, answer.text
    task: dict[str, Any] = answer.json()
    return task


def assert_error(answer: requests.Response, status: int, code: str, param: str | None) -> None:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert (error["code"], error["param"]) == (code, param), error


def assert_released(router: Router, key: KeyRecord, task: dict[str, Any], status: str) -> None:
    """The task ended ``status``, cost nothing, and handed its reservation back in full:
    one ledger row, ``failed``, charged 0; the balance as before the create."""
    assert task["status"] == status, task
    assert task["charged"] == "0"
    assert task["video_url"] is None
    (row,) = ledger_rows(router, key)
    assert (row.status, row.charged_nanos, row.cost_nanos) == ("failed", 0, 0)
    fresh = router.get_key(key.id)
    assert (fresh.balance_nanos, fresh.spent_nanos) == (key.balance_nanos, 0)

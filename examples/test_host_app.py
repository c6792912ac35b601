"""How a host app unit-tests its use of llmrouter: an in-memory store and the offline
``echo`` provider, a fresh Router per test, no network and no files.

Run: python -m pytest examples/test_host_app.py
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask, jsonify, request

from flask_ext import LLMRouter, current_router
from llmrouter import RateLimitError, Router

TEST_CONFIG = {
    "database_url": "sqlite://",  # in memory: gone when the Router is closed
    "quota": {"daily_requests": 3},
    "providers": [
        {
            "name": "echo",
            "kind": "echo",
            "models": [{"id": "echo", "prompt_price": "0.000001", "completion_price": "0.000002"}],
        }
    ],
}


# --- the host's code under test --------------------------------------------------------


def summarise(router: Router, api_key: str, text: str) -> str:
    """The host's own feature: here it only asks a model (echo answers with the text)."""
    reply = router.chat(
        model="echo#echo", messages=[{"role": "user", "content": text}], api_key=api_key
    )
    return reply.choices[0].message.content or ""


def create_app(router: Router) -> Flask:
    app = Flask(__name__)
    LLMRouter(app, router=router)

    @app.post("/summary")
    def summary():
        # The host reaches the app's Router with current_router(), not app.extensions.
        text = summarise(current_router(), request.headers["X-Key"], request.get_json()["text"])
        return jsonify(summary=text)

    return app


# --- the tests -------------------------------------------------------------------------


@pytest.fixture
def router() -> Iterator[Router]:
    router = Router.from_config(TEST_CONFIG)
    yield router
    router.close()


@pytest.fixture
def secret(router: Router) -> str:
    _, secret = router.create_key("test-user")
    return secret


def test_summarise_asks_the_model(router: Router, secret: str) -> None:
    assert summarise(router, secret, "short text") == "short text"
    (row,) = router.usage()
    assert (row.requests, row.model) == (1, "echo#echo")
    assert row.cost_nanos > 0  # echo is priced in TEST_CONFIG, so billing is exercised


def test_the_quota_applies(router: Router, secret: str) -> None:
    for _ in range(3):  # the allowance, then the throttle slot
        summarise(router, secret, "again")
    summarise(router, secret, "throttle slot")
    with pytest.raises(RateLimitError):
        summarise(router, secret, "one too many")


def test_through_the_host_app_and_the_mounted_api(router: Router, secret: str) -> None:
    client = create_app(router).test_client()
    answer = client.post("/summary", json={"text": "hello"}, headers={"X-Key": secret})
    assert answer.get_json() == {"summary": "hello"}
    # The OpenAI-compatible API is mounted beside the host's routes.
    completion = client.post(
        "/v1/chat/completions",
        json={"model": "echo#echo", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert completion.status_code == 200
    assert completion.get_json()["choices"][0]["message"]["content"] == "hi"
    assert int(completion.headers["X-RateLimit-Remaining"]) == 1


def test_a_stream_closed_early_is_billed_partial(router: Router, secret: str) -> None:
    stream = router.chat(
        model="echo#echo",
        messages=[{"role": "user", "content": "one two three four"}],
        api_key=secret,
        stream=True,
    )
    with stream:
        first_words = ""
        while not first_words.strip():  # the first chunk carries only the role
            chunk = next(stream)
            first_words += chunk.choices[0].delta.content or ""
    # Leaving the block closed the stream: billed for what was delivered, not failed.
    (row,) = router.usage()
    assert (row.requests, row.failed) == (1, 0)
    assert 0 < row.completion_tokens < 4

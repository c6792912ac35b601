"""The openai-compatible kind against the fake OpenAI upstream: what such servers differ in.

Unknown fields travel through, ``drop_fields`` keeps some back, ``stream_usage = false``
sends no ``stream_options``, extra headers arrive; upstream errors keep their meaning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from sqlalchemy import select

from llmrouter import Router
from llmrouter.errors import ConfigError
from llmrouter.store.tables import ledger
from tests.conftest import UPSTREAM_KEY
from tests.upstreams.openai_server import FakeOpenAI

MODEL = "Local#llama-3"
HELLO = [{"role": "user", "content": "hello there"}]
WRONG_KEY = "sk-wrong-key-0123456789abcdef"


def local_provider(openai_url: str, **settings: Any) -> dict[str, Any]:
    return {
        "name": "Local",
        "kind": "openai-compatible",
        "base_url": openai_url + "/v1",
        "api_key": UPSTREAM_KEY,
        "retry_backoff": 0,
        "models": [{"id": "llama-3", "prompt_price": "0.0000001", "completion_price": "0.0000002"}],
        **settings,
    }


def config(*providers: dict[str, Any]) -> dict[str, Any]:
    return {"database_url": "sqlite://", "providers": list(providers)}


@pytest.fixture
def router(make_router: Callable[..., Router], fake_openai: FakeOpenAI) -> Router:
    """Served by ``live_api``: the Local server, and Locked, which holds a wrong key."""
    locked = local_provider(fake_openai.url, name="Locked", api_key=WRONG_KEY)
    return make_router(config(local_provider(fake_openai.url), locked))


@pytest.fixture
def client(live_api: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_api + "/v1", api_key=api_key, max_retries=0)


def local_router(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI, **settings: Any
) -> tuple[Router, str]:
    """A router with only the Local server (configured with ``settings``), and a key."""
    router = make_router(config(local_provider(fake_openai.url, **settings)))
    return router, router.create_key("test")[1]


# --------------------------------------------------------------------------- request fields


def test_unknown_fields_pass_through_when_the_upstream_accepts_them(
    router: Router, api_key: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_openai, "extra_fields", {"top_k", "repetition_penalty"})

    router.chat(model=MODEL, messages=HELLO, api_key=api_key, top_k=40, repetition_penalty=1.1)

    assert fake_openai.requests[-1]["top_k"] == 40
    assert fake_openai.requests[-1]["repetition_penalty"] == 1.1


def test_drop_fields_are_never_sent(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router, key = local_router(make_router, fake_openai, drop_fields=["top_k", "user"])
    fields = {"top_k": 40, "user": "u1"}

    router.chat(model=MODEL, messages=HELLO, api_key=key, **fields)
    list(router.chat(model=MODEL, messages=HELLO, api_key=key, stream=True, **fields))

    # The upstream refuses top_k: both calls succeeding shows it was kept back.
    assert len(fake_openai.requests) == 2
    for body in fake_openai.requests:
        assert not set(fields) & set(body)


def test_stream_usage_false_sends_no_stream_options(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router, key = local_router(make_router, fake_openai, stream_usage=False)

    chunks = list(
        router.chat(
            model=MODEL,
            messages=HELLO,
            api_key=key,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert "stream_options" not in fake_openai.requests[-1]
    with router.store.transaction() as conn:
        [row] = conn.execute(select(ledger)).all()
    assert row.status == "ok" and row.usage_estimated
    # The client asked for usage: it gets the estimate that was billed, as OpenAI's last chunk.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == row.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_usage_is_asked_for_by_default(
    router: Router, api_key: str, fake_openai: FakeOpenAI
) -> None:
    list(router.chat(model=MODEL, messages=HELLO, api_key=api_key, stream=True))

    assert fake_openai.requests[-1]["stream_options"] == {"include_usage": True}


def test_extra_headers_arrive(make_router: Callable[..., Router], fake_openai: FakeOpenAI) -> None:
    headers = {"X-Tenant": "acme", "HTTP-Referer": "https://example.com/app"}
    router, key = local_router(make_router, fake_openai, headers=headers)

    router.chat(model=MODEL, messages=HELLO, api_key=key)

    received = fake_openai.headers[-1]
    assert received["X-Tenant"] == "acme"
    assert received["Http-Referer"] == "https://example.com/app"
    assert received["Authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_a_server_without_base_url_is_a_config_error(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    provider = local_provider(fake_openai.url)
    del provider["base_url"]

    with pytest.raises(ConfigError) as caught:
        make_router(config(provider))

    assert "base_url" in caught.value.message
    assert caught.value.key is not None and caught.value.key.endswith("base_url")


# --------------------------------------------------------------------------- upstream errors


def test_upstream_401_is_our_502_and_its_key_is_not_shown(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="Locked#llama-3", messages=HELLO)

    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_auth_error"
    assert fake_openai.answered == 1  # a refused key is not retried
    text = caught.value.response.text
    assert "refused the router's credentials" in text and "Incorrect API key" not in text
    assert WRONG_KEY not in text and UPSTREAM_KEY not in text


def test_upstream_400_is_our_400_with_its_message(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            extra_body={"top_k": 5},
        )

    assert caught.value.code == "upstream_rejected_request"
    assert "Unrecognized request argument supplied: top_k" in caught.value.message
    assert fake_openai.answered == 1

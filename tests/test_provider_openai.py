"""The openai kind against the fake OpenAI upstream: the output limit reasoning models take.

OpenAI's reasoning models (o1, o3, o4, gpt-5…) refuse the deprecated ``max_tokens``, and
every chat model takes ``max_completion_tokens``, so the openai kind always sends the
latter; the openai-compatible kind keeps ``max_tokens``, which many such servers know only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from llmrouter.config import ProviderSettings
from llmrouter.errors import UpstreamRejectedError
from llmrouter.providers.base import ProviderAdapter
from llmrouter.providers.registry import build_adapter
from llmrouter.schemas import ChatRequest
from tests.conftest import UPSTREAM_KEY
from tests.upstreams.openai_server import FakeOpenAI

REFUSAL = (
    "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead."
)


def build(fake_openai: FakeOpenAI, kind: str) -> ProviderAdapter:
    settings = ProviderSettings(
        name="Up", kind=kind, base_url=fake_openai.url + "/v1", api_key=UPSTREAM_KEY
    )
    return build_adapter(settings)


@pytest.fixture
def adapter(fake_openai: FakeOpenAI) -> Iterator[ProviderAdapter]:
    built = build(fake_openai, "openai")
    yield built
    built.close()


@pytest.fixture
def compatible(fake_openai: FakeOpenAI) -> Iterator[ProviderAdapter]:
    built = build(fake_openai, "openai-compatible")
    yield built
    built.close()


def ask(**fields: Any) -> ChatRequest:
    messages = [{"role": "user", "content": "one two three four"}]
    return ChatRequest.model_validate({"model": "Up#m", "messages": messages, **fields})


@pytest.mark.parametrize("model", ["o1", "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini"])
def test_the_fake_refuses_max_tokens_for_reasoning_models(
    fake_openai: FakeOpenAI, model: str
) -> None:
    response = requests.post(
        fake_openai.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        headers={"Authorization": f"Bearer {UPSTREAM_KEY}"},
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == REFUSAL


@pytest.mark.parametrize("model", ["o3-mini", "gpt-5", "gpt-4o-mini"])
def test_max_tokens_is_sent_as_max_completion_tokens(
    adapter: ProviderAdapter, fake_openai: FakeOpenAI, model: str
) -> None:
    completion = adapter.chat(ask(max_tokens=3), model)

    assert completion.choices[0].message.content == "You said: one"
    sent = fake_openai.requests[-1]
    assert sent["max_completion_tokens"] == 3
    assert "max_tokens" not in sent


def test_max_tokens_in_a_stream_too(adapter: ProviderAdapter, fake_openai: FakeOpenAI) -> None:
    with adapter.stream(ask(max_tokens=3, stream=True), "gpt-5") as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert text == "You said: one"
    assert fake_openai.requests[-1]["max_completion_tokens"] == 3


def test_the_clients_max_completion_tokens_wins(
    adapter: ProviderAdapter, fake_openai: FakeOpenAI
) -> None:
    adapter.chat(ask(max_tokens=50, max_completion_tokens=2), "o4-mini")

    sent = fake_openai.requests[-1]
    assert sent["max_completion_tokens"] == 2
    assert "max_tokens" not in sent


def test_no_limit_sends_neither(adapter: ProviderAdapter, fake_openai: FakeOpenAI) -> None:
    adapter.chat(ask(), "gpt-5")

    assert not {"max_tokens", "max_completion_tokens"} & set(fake_openai.requests[-1])


def test_openai_compatible_keeps_max_tokens(
    compatible: ProviderAdapter, fake_openai: FakeOpenAI
) -> None:
    completion = compatible.chat(ask(max_tokens=3), "llama-3")

    assert completion.choices[0].message.content == "You said: one"
    assert fake_openai.requests[-1]["max_tokens"] == 3
    assert "max_completion_tokens" not in fake_openai.requests[-1]
    # Such a server serving a reasoning model says so, as OpenAI would.
    with pytest.raises(UpstreamRejectedError) as caught:
        compatible.chat(ask(max_tokens=3), "gpt-5")
    assert REFUSAL in caught.value.message


@pytest.mark.parametrize("field", ["prompt_cache_key", "safety_identifier"])
def test_newer_openai_fields_pass(
    adapter: ProviderAdapter, fake_openai: FakeOpenAI, field: str
) -> None:
    adapter.chat(ask(**{field: "tenant-7"}), "gpt-5")

    assert fake_openai.requests[-1][field] == "tenant-7"

"""One OpenAI-format request through every provider, with the ``openai`` SDK as the client.

Plain, streamed, with tools (streamed too) and with a tool-result round trip, the answers
through ``OpenAI#``, ``Claude#``/``Anthropic#``, ``Gemini#`` and ``Mistral#`` agree, and every
call is billed to its provider.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from flask import Flask

from flask_ext import LLMRouter
from llmrouter import Router
from tests.client_view import assembled_tool_calls, streamed_text
from tests.conftest import UPSTREAM_KEY
from tests.upstreams import anthropic_server, gemini_server, mistral_server
from tests.upstreams.loopback import LoopbackServer
from tests.upstreams.openai_server import FakeOpenAI

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
PRICES = {"prompt_price": "0.000001", "completion_price": "0.000002"}
NAMES = [
    "OpenAI#gpt-4o-mini",
    "Claude#claude-sonnet-4-5",
    "Anthropic#claude-sonnet-4-5",
    "Gemini#gemini-2.5-flash",
    "Mistral#mistral-small-latest",
]


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, Router]]:
    """Four fake providers on loopback, one Router in front of them, served over HTTP."""
    fake_openai = FakeOpenAI(api_key=UPSTREAM_KEY)
    with (
        LoopbackServer(fake_openai.app()) as openai_up,
        LoopbackServer(anthropic_server.FakeAnthropic()) as anthropic_up,
        LoopbackServer(gemini_server.FakeGemini().app) as gemini_up,
        LoopbackServer(mistral_server.FakeMistral().app()) as mistral_up,
    ):
        router = Router.from_config(
            {
                "database_url": "sqlite://",
                "providers": [
                    provider(
                        "OpenAI", "openai", openai_up.url + "/v1", UPSTREAM_KEY, "gpt-4o-mini"
                    ),
                    {
                        **provider(
                            "Anthropic",
                            "anthropic",
                            anthropic_up.url,
                            anthropic_server.TEST_KEY,
                            "claude-sonnet-4-5",
                        ),
                        "aliases": ["Claude"],
                    },
                    provider(
                        "Gemini",
                        "gemini",
                        gemini_up.url + "/v1beta",
                        gemini_server.API_KEY,
                        "gemini-2.5-flash",
                    ),
                    provider(
                        "Mistral",
                        "mistral",
                        mistral_up.url + "/v1",
                        mistral_server.API_KEY,
                        "mistral-small-latest",
                    ),
                ],
            }
        )
        app = Flask("conformance")
        LLMRouter(app, router=router)
        with LoopbackServer(app) as gateway_server:
            yield gateway_server.url + "/v1", router
        router.close()


def provider(name: str, kind: str, base_url: str, key: str, model: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "base_url": base_url,
        "api_key": key,
        "max_retries": 0,
        "models": [{"id": model, **PRICES, "max_output_length": 1024}],
    }


@pytest.fixture(scope="module")
def client(gateway: tuple[str, Router]) -> openai.OpenAI:
    base_url, router = gateway
    return openai.OpenAI(base_url=base_url, api_key=router.create_key("sdk")[1], max_retries=0)


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("model", NAMES)
def test_plain_and_streamed_answers_agree(client: openai.OpenAI, model: str) -> None:
    plain = client.chat.completions.create(model=model, messages=ask("hello conformance"))
    text = plain.choices[0].message.content or ""
    assert "hello conformance" in text
    assert plain.choices[0].finish_reason == "stop"
    assert plain.model.lower() == model.lower().replace("claude#", "anthropic#")
    assert plain.usage is not None and plain.usage.prompt_tokens > 0

    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=ask("hello conformance"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert streamed_text(chunks) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("model", NAMES)
def test_tool_calls_streamed_and_not_agree(client: openai.OpenAI, model: str) -> None:
    plain = client.chat.completions.create(
        model=model, messages=ask("weather in Paris?"), tools=[WEATHER], tool_choice="required"
    )
    assert plain.choices[0].finish_reason == "tool_calls"
    (call,) = plain.choices[0].message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}

    streamed = assembled_tool_calls(
        client.chat.completions.create(
            model=model,
            messages=ask("weather in Paris?"),
            tools=[WEATHER],
            tool_choice="required",
            stream=True,
        )
    )
    assert [(c["name"], set(json.loads(c["arguments"]))) for c in streamed] == [
        ("get_weather", {"city"})
    ]
    assert streamed[0]["id"]


@pytest.mark.parametrize("model", NAMES)
def test_tool_result_round_trip(client: openai.OpenAI, model: str) -> None:
    first = client.chat.completions.create(
        model=model, messages=ask("weather in Paris?"), tools=[WEATHER], tool_choice="required"
    )
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *ask("weather in Paris?"),
        {
            "role": "assistant",
            "content": first.choices[0].message.content,
            "tool_calls": [call.model_dump()],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "sunny and 21 degrees"},
    ]
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert "sunny and 21 degrees" in (second.choices[0].message.content or "")
    assert second.choices[0].finish_reason == "stop"


def test_every_provider_is_billed(client: openai.OpenAI, gateway: tuple[str, Router]) -> None:
    _, router = gateway
    for model in NAMES:
        client.chat.completions.create(model=model, messages=ask("bill me"))
    rows = {row.provider: row for row in router.usage()}
    assert set(rows) == {"OpenAI", "Anthropic", "Gemini", "Mistral"}
    for row in rows.values():
        assert row.prompt_tokens > 0 and row.completion_tokens > 0 and row.cost_nanos > 0
    totals = {t.provider: t.cost_nanos for t in router.provider_totals()}
    assert totals == {p: sum(r.cost_nanos for r in router.usage() if r.provider == p) for p in rows}


def test_a_request_a_provider_cannot_carry_is_400_and_no_call(
    client: openai.OpenAI, gateway: tuple[str, Router]
) -> None:
    _, router = gateway
    before = sum(row.requests for row in router.usage())
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="Claude#claude-sonnet-4-5", messages=ask("two answers"), n=2
        )
    assert refused.value.body["param"] == "n"
    assert sum(row.requests for row in router.usage()) == before

"""The blueprint over real HTTP, with the official ``openai`` SDK as the client."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import openai
import pytest
import requests
from flask import Flask
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from flask_ext import LLMRouter
from llmrouter import Router
from llmrouter.store import Store
from tests.client_view import WEATHER_TOOL
from tests.conftest import gateway_config
from tests.upstreams.loopback import LoopbackServer
from tests.upstreams.openai_server import FakeOpenAI


@pytest.fixture
def client(live_api: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_api + "/v1", api_key=api_key, max_retries=0)


def test_sdk_lists_models_with_seed_fields(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {"echo#echo", "OpenAI#gpt-4o-mini", "altllm-basic"} <= set(models)
    card = models["OpenAI#gpt-4o-mini"].model_dump()
    assert card["pricing"] == {"prompt": "0.00000015", "completion": "0.0000006"}
    for key in (
        "name",
        "created",
        "description",
        "context_length",
        "max_output_length",
        "input_modalities",
        "output_modalities",
        "supported_sampling_parameters",
        "supported_features",
    ):
        assert key in card


def test_sdk_retrieves_a_model_whose_id_has_a_hash(client: openai.OpenAI) -> None:
    assert client.models.retrieve("OpenAI#gpt-4o-mini").id == "OpenAI#gpt-4o-mini"


def test_sdk_chat_through_openai_upstream(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    completion = client.chat.completions.create(
        model="openai#gpt-4o-mini",
        messages=[{"role": "user", "content": "hello world"}],
        max_tokens=20,
    )
    assert completion.choices[0].message.content == "You said: hello world"
    assert completion.model == "OpenAI#gpt-4o-mini"
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert fake_openai.requests[-1]["model"] == "gpt-4o-mini"
    assert fake_openai.headers[-1]["Authorization"] != client.api_key


def test_sdk_streams_chunks_and_done(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="OpenAI#gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: one two three"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # not asked for


def test_sdk_stream_with_usage_when_asked(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="OpenAI#gpt-4o-mini",
            messages=[{"role": "user", "content": "count me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_sdk_receives_tool_call_from_openai_compatible_upstream(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="OpenAI#gpt-4o-mini",
        messages=[{"role": "user", "content": "what is the weather?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "42"}


def test_sdk_streamed_tool_call_assembles(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="OpenAI#gpt-4o-mini",
        messages=[{"role": "user", "content": "use get_weather"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    name, arguments, ids = "", "", set()
    for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            assert call.index == 0
            ids.add(call.id) if call.id else None
            name += call.function.name or ""
            arguments += call.function.arguments or ""
    assert name == "get_weather" and json.loads(arguments) == {"city": "42"} and len(ids) == 1


def test_sdk_gets_echo_tool_call_and_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="altllm-basic",
        messages=[{"role": "user", "content": "call get_weather"}],
        tools=[WEATHER_TOOL],
    )
    call = first.choices[0].message.tool_calls[0]
    second = client.chat.completions.create(
        model="altllm-basic",
        messages=[
            {"role": "user", "content": "call get_weather"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert second.choices[0].message.content == "get_weather returned: sunny"


def test_routes_answer_with_and_without_v1(live_api: str, api_key: str) -> None:
    for base in (live_api, live_api + "/v1"):
        sdk = openai.OpenAI(base_url=base, api_key=api_key, max_retries=0)
        assert (
            sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
            .choices[0]
            .message.content
            == "hi"
        )


def test_rate_limit_headers_and_provider_header(live_api: str, api_key: str) -> None:
    response = requests.post(
        live_api + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
        timeout=5,
    )
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "200"
    assert response.headers["X-RateLimit-Remaining"] == "199"
    assert int(response.headers["X-RateLimit-Reset"]) % 86400 == 0
    assert response.headers["X-LLMRouter-Provider"] == "echo"


def test_stream_is_sent_as_sse_lines_ending_with_done(live_api: str, api_key: str) -> None:
    with requests.post(
        live_api + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={
            "model": "echo",
            "stream": True,
            "messages": [{"role": "user", "content": "Hello !"}],
        },
        stream=True,
        timeout=5,
    ) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    first = json.loads(lines[0].removeprefix(b"data: "))
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(lines[-2].removeprefix(b"data: "))["choices"][0]["finish_reason"] == "stop"


def test_health_and_provider_are_public(live_api: str) -> None:
    health = requests.get(live_api + "/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    assert set(health.json()) == {"status", "service", "version"}
    provider = requests.get(live_api + "/v1/provider", timeout=5).json()
    assert provider["model_naming"] == "Provider#Model"
    assert "api_key" not in json.dumps(provider) and "base_url" not in json.dumps(provider)


def test_health_reports_unreachable_store(tmp_path: Path) -> None:
    database = tmp_path / "store.db"
    reachable = True

    def connect() -> sqlite3.Connection:
        if not reachable:
            raise sqlite3.OperationalError("unable to open database file")
        return sqlite3.connect(database, check_same_thread=False)

    engine = create_engine("sqlite://", creator=connect, poolclass=NullPool)
    router = Router.from_config(gateway_config(), store=Store("sqlite://", engine=engine))
    app = Flask("host")
    LLMRouter(app, router=router)
    with LoopbackServer(app) as server:
        assert requests.get(server.url + "/v1/health", timeout=5).status_code == 200
        reachable = False
        response = requests.get(server.url + "/v1/health", timeout=5)
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"

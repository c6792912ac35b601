"""The mistral adapter against a fake Mistral chat API over real HTTP on 127.0.0.1.

The fake refuses what Mistral refuses, so a request it answers is one Mistral accepts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from sqlalchemy import select

from llmrouter import Router
from llmrouter.config import ProviderSettings
from llmrouter.errors import UpstreamAuthError, UpstreamError, UpstreamRejectedError
from llmrouter.providers.base import ProviderAdapter
from llmrouter.providers.mistral import MistralAdapter, mistral_tool_call_id
from llmrouter.providers.registry import build_adapter
from llmrouter.schemas import ChatCompletionChunk, ChatRequest
from llmrouter.store.tables import ledger
from tests.client_view import WEATHER_TOOL, streamed_text
from tests.upstreams.loopback import LoopbackServer
from tests.upstreams.mistral_server import API_KEY, FakeMistral

MODEL = "mistral-small-latest"
TIME = {"type": "function", "function": {"name": "get_time"}}
NINE_CHARACTERS = re.compile(r"[a-zA-Z0-9]{9}")


@pytest.fixture(scope="module")
def fake_app() -> FakeMistral:
    return FakeMistral()


@pytest.fixture(scope="module")
def base_url(fake_app: FakeMistral) -> Iterator[str]:
    with LoopbackServer(fake_app.app()) as server:
        yield server.url + "/v1"


@pytest.fixture(autouse=True)
def fake(fake_app: FakeMistral) -> FakeMistral:
    fake_app.reset()
    return fake_app


@pytest.fixture
def adapter(base_url: str) -> Iterator[ProviderAdapter]:
    built = build_adapter(
        ProviderSettings(name="Mistral", kind="mistral", base_url=base_url, api_key=API_KEY)
    )
    yield built
    built.close()


def ask(*messages: dict[str, Any] | str, **fields: Any) -> ChatRequest:
    listed = [{"role": "user", "content": m} if isinstance(m, str) else m for m in messages]
    return ChatRequest.model_validate({"model": "Mistral#m", "messages": listed, **fields})


def collect(adapter: ProviderAdapter, request: ChatRequest) -> list[ChatCompletionChunk]:
    with adapter.stream(request, MODEL) as stream:
        return list(stream)


def tool_round_trip(call_ids: list[str]) -> list[dict[str, Any]]:
    """A history in which the assistant called get_weather once per id, with the results."""
    calls = [
        {"id": i, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        for i in call_ids
    ]
    results = [{"role": "tool", "tool_call_id": i, "content": f"sunny {i}"} for i in call_ids]
    return [
        {"role": "user", "content": "Weather in Paris and Lyon?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *results,
    ]


# --------------------------------------------------------------------------- chat


def test_registry_knows_mistral_and_its_default_url() -> None:
    adapter = build_adapter(ProviderSettings(name="M", kind="mistral", api_key="k"))
    assert isinstance(adapter, MistralAdapter)
    assert adapter.url == "https://api.mistral.ai/v1/chat/completions"
    adapter.close()


def test_plain_chat(adapter: ProviderAdapter, fake: FakeMistral) -> None:
    completion = adapter.chat(ask("Bonjour Mistral"), MODEL)

    assert completion.choices[0].message.content == "You said: Bonjour Mistral"
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    assert fake.last == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Bonjour Mistral"}],
    }
    assert fake.headers[-1]["Authorization"] == f"Bearer {API_KEY}"


def test_stream_has_usage_in_its_last_chunk_without_stream_options(
    adapter: ProviderAdapter, fake: FakeMistral
) -> None:
    request = ask("count the words", stream=True, stream_options={"include_usage": True})

    chunks = collect(adapter, request)

    assert streamed_text(chunks) == "You said: count the words"
    assert "stream_options" not in fake.last
    assert fake.last["stream"] is True
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_seed_and_max_completion_tokens_take_mistral_names(
    adapter: ProviderAdapter, fake: FakeMistral
) -> None:
    completion = adapter.chat(ask("one two three", seed=7, max_completion_tokens=3), MODEL)

    assert completion.choices[0].message.content == "You said: one"
    assert fake.last["random_seed"] == 7
    assert fake.last["max_tokens"] == 3
    assert "seed" not in fake.last and "max_completion_tokens" not in fake.last


def test_openai_only_fields_are_dropped_and_shared_ones_kept(
    adapter: ProviderAdapter, fake: FakeMistral
) -> None:
    request = ask(
        "hi",
        user="user-42",
        store=True,
        service_tier="auto",
        logit_bias={"50256": -100},
        logprobs=True,
        top_logprobs=2,
        metadata={"team": "a"},
        parallel_tool_calls=False,
        temperature=0.2,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
    )

    adapter.chat(request, MODEL)

    assert set(fake.last) == {
        "model",
        "messages",
        "metadata",
        "parallel_tool_calls",
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
    }


def test_mistral_fields_pass_and_unknown_ones_are_mistrals_to_refuse(
    adapter: ProviderAdapter, fake: FakeMistral
) -> None:
    adapter.chat(ask("hi", safe_prompt=True), MODEL)
    assert fake.last["safe_prompt"] is True

    with pytest.raises(UpstreamRejectedError) as caught:
        adapter.chat(ask("hi", top_k=5), MODEL)
    assert "422" in caught.value.message and "top_k" in caught.value.message
    assert "{" not in caught.value.message  # Mistral's detail list is rendered, not dumped
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt_cache_key", "tenant-7"),
        ("guardrails", [{"block_on_error": True, "moderation_llm_v1": {}}]),
    ],
)
def test_newer_mistral_fields_pass(
    adapter: ProviderAdapter, fake: FakeMistral, field: str, value: Any
) -> None:
    adapter.chat(ask("hi", **{field: value}), MODEL)

    assert fake.last[field] == value


def test_developer_role_becomes_system_and_names_leave_non_tool_messages(
    adapter: ProviderAdapter, fake: FakeMistral
) -> None:
    request = ask(
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "hi", "name": "alice"},
    )

    adapter.chat(request, MODEL)

    assert fake.last["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_images_json_mode_and_stop_sequences_pass_unchanged(
    adapter: ProviderAdapter, fake: FakeMistral
) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    request = ask(
        {"role": "user", "content": [{"type": "text", "text": "look here STOP now"}, image]},
        stop=["STOP"],
        response_format={"type": "json_object"},
    )

    completion = adapter.chat(request, MODEL)

    assert json.loads(completion.choices[0].message.content or "") == {
        "echo": "You said: look here "
    }
    assert fake.last["messages"][0]["content"][1] == image
    assert fake.last["stop"] == ["STOP"]
    assert fake.last["response_format"] == {"type": "json_object"}


def test_wrong_key_is_an_auth_error(base_url: str) -> None:
    adapter = build_adapter(
        ProviderSettings(name="Mistral", kind="mistral", base_url=base_url, api_key="wrong-key")
    )
    with pytest.raises(UpstreamAuthError) as caught:
        adapter.chat(ask("hi"), MODEL)
    assert caught.value.upstream_status == 401
    assert "refused the router's credentials" in caught.value.message
    adapter.close()


# --------------------------------------------------------------------------- finish reasons


def test_a_full_context_window_is_length(adapter: ProviderAdapter, fake: FakeMistral) -> None:
    fake.finish_reason = "model_length"

    completion = adapter.chat(ask("hi"), MODEL)
    chunks = collect(adapter, ask("hi", stream=True))

    assert completion.choices[0].finish_reason == "length"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert streamed_text(chunks) == "You said: hi"


def test_a_failed_generation_is_an_upstream_error(
    adapter: ProviderAdapter, fake: FakeMistral
) -> None:
    fake.finish_reason = "error"

    with pytest.raises(UpstreamError) as in_chat:
        adapter.chat(ask("hi"), MODEL)
    received: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamError) as in_stream:
        received.extend(adapter.stream(ask("hi", stream=True), MODEL))

    for caught in (in_chat, in_stream):
        assert type(caught.value) is UpstreamError and caught.value.retryable
        assert caught.value.provider == "Mistral"
        assert "finish_reason 'error'" in caught.value.message
    assert streamed_text(received) == "You said: hi"  # what came before the failure


# --------------------------------------------------------------------------- tools


def test_tool_call_has_a_mistral_id(adapter: ProviderAdapter, fake: FakeMistral) -> None:
    completion = adapter.chat(ask("get_weather for Paris", tools=[WEATHER_TOOL, TIME]), MODEL)

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.id == "call00001"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "42"}
    assert fake.last["tools"] == [WEATHER_TOOL, TIME]


def test_required_tool_choice_is_sent_as_any(adapter: ProviderAdapter, fake: FakeMistral) -> None:
    completion = adapter.chat(ask("hi", tools=[TIME, WEATHER_TOOL], tool_choice="required"), MODEL)

    assert fake.last["tool_choice"] == "any"
    assert completion.choices[0].message.tool_calls is not None
    assert completion.choices[0].message.tool_calls[0].function.name == "get_time"


def test_named_and_none_tool_choices_pass_unchanged(
    adapter: ProviderAdapter, fake: FakeMistral
) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    adapter.chat(ask("hi", tools=[TIME, WEATHER_TOOL], tool_choice=named), MODEL)
    assert fake.last["tool_choice"] == named
    adapter.chat(ask("get_time", tools=[TIME], tool_choice="none"), MODEL)
    assert fake.last["tool_choice"] == "none"


def test_streamed_parallel_tool_calls(adapter: ProviderAdapter) -> None:
    chunks = collect(
        adapter, ask("get_weather and get_time", tools=[WEATHER_TOOL, TIME], stream=True)
    )

    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.id, d.function and d.function.name) for d in deltas] == [
        (0, "call00001", "get_weather"),
        (1, "call00002", "get_time"),
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage is not None


def test_streamed_tool_calls_without_index_are_numbered(
    adapter: ProviderAdapter, fake: FakeMistral, base_url: str
) -> None:
    fake.unindexed_tool_calls = True
    request = ask("get_weather and get_time", tools=[WEATHER_TOOL, TIME], stream=True)

    chunks = collect(adapter, request)

    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.id) for d in deltas] == [(0, "call00001"), (1, "call00002")]
    # What the fake sent: one call per chunk, neither with an index.
    sent = [
        call
        for line in requests.post(
            base_url + "/chat/completions",
            json=fake.last,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=5,
        ).text.splitlines()
        if line.startswith("data: {")
        for call in json.loads(line[6:])["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert len(sent) == 2 and not any("index" in call for call in sent)


def test_tool_calls_all_at_index_0_are_numbered_per_choice(adapter: MistralAdapter) -> None:
    def call(ident: str | None, arguments: str) -> dict[str, Any]:
        # Every call at index 0, the default of Mistral's schema; no id: more of a call.
        return {"index": 0, "function": {"arguments": arguments}} | ({"id": ident} if ident else {})

    def chunk(choice: int, *calls: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"index": choice, "delta": {"tool_calls": list(calls)}}]}

    stream = [
        chunk(0, call("aaaaaaaa1", "{")),
        chunk(0, call(None, "}")),
        chunk(1, call("bbbbbbbb1", "{}")),
        chunk(0, call("aaaaaaaa2", "{}"), call("aaaaaaaa3", "{}")),
    ]

    numbered = [
        [(c["index"], c.get("id")) for c in ch["choices"][0]["delta"]["tool_calls"]]
        for ch in adapter.from_dialect_chunks(iter(stream))
    ]

    assert numbered == [
        [(0, "aaaaaaaa1")],
        [(0, None)],
        [(0, "bbbbbbbb1")],
        [(1, "aaaaaaaa2"), (2, "aaaaaaaa3")],
    ]


def test_tool_round_trip_maps_foreign_ids_consistently(
    adapter: ProviderAdapter, fake: FakeMistral
) -> None:
    foreign = ["call_abc123def456", "toolu_01A09q90qw90lq917835lq9"]

    completion = adapter.chat(ask(*tool_round_trip(foreign), tools=[WEATHER_TOOL]), MODEL)

    answer = f"The tool said: sunny {foreign[0]}; sunny {foreign[1]}"
    assert completion.choices[0].message.content == answer
    sent = fake.last["messages"]
    call_ids = [call["id"] for call in sent[1]["tool_calls"]]
    assert [m["tool_call_id"] for m in sent[2:]] == call_ids
    assert call_ids == [mistral_tool_call_id(i) for i in foreign]
    assert len(set(call_ids)) == 2
    assert all(NINE_CHARACTERS.fullmatch(i) for i in call_ids)

    adapter.chat(ask(*tool_round_trip(foreign), tools=[WEATHER_TOOL]), MODEL)
    assert [c["id"] for c in fake.last["messages"][1]["tool_calls"]] == call_ids


def test_mistral_ids_come_back_unchanged(adapter: ProviderAdapter, fake: FakeMistral) -> None:
    adapter.chat(ask(*tool_round_trip(["D681PevKs"]), tools=[WEATHER_TOOL]), MODEL)

    assert fake.last["messages"][1]["tool_calls"][0]["id"] == "D681PevKs"
    assert fake.last["messages"][2]["tool_call_id"] == "D681PevKs"


# --------------------------------------------------------------------------- the fake


UNASKED_RESULT = {"role": "tool", "tool_call_id": "xyz987uvw", "content": "?"}


@pytest.mark.parametrize(
    ("change", "status", "complaint"),
    [
        ({"seed": 1}, 422, "seed"),
        ({"stream": True, "stream_options": {"include_usage": True}}, 422, "stream_options"),
        ({"messages": [{"role": "developer", "content": "x"}]}, 422, "developer"),
        ({"messages": [{"role": "user", "content": "x", "name": "a"}]}, 422, "name"),
        ({"messages": tool_round_trip(["call_abc123def456"])}, 400, "length of 9"),
        ({"messages": [*tool_round_trip(["abc123def"])[:2], UNASKED_RESULT]}, 400, "Unexpected"),
    ],
)
def test_the_fake_refuses_what_mistral_refuses(
    base_url: str, change: dict[str, Any], status: int, complaint: str
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **change}
    response = requests.post(
        base_url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    )
    assert response.status_code == status
    assert response.json()["object"] == "error"
    assert complaint in response.text


# --------------------------------------------------------------------------- through a Router


def mistral_router(
    make_router: Callable[..., Router],
    base_url: str,
    fallbacks: list[str] | None = None,
    **provider_settings: Any,
) -> Router:
    """A router with the fake Mistral (and echo, for fallbacks) at one set of prices."""
    prices = {"prompt_price": "0.0000001", "completion_price": "0.0000003"}
    mistral = {
        "name": "Mistral",
        "kind": "mistral",
        "base_url": base_url,
        "api_key": API_KEY,
        "models": [{"id": MODEL, "fallbacks": fallbacks or [], **prices}],
        **provider_settings,
    }
    echo = {"name": "echo", "kind": "echo", "models": [{"id": "echo", **prices}]}
    return make_router({"database_url": "sqlite://", "providers": [mistral, echo]})


def test_router_bills_a_mistral_stream_from_the_usage_in_its_last_chunk(
    make_router: Callable[..., Router], base_url: str
) -> None:
    router = mistral_router(make_router, base_url)
    key = router.create_key("test")[1]
    chunks = list(
        router.chat(
            model=f"Mistral#{MODEL}",
            messages=[{"role": "user", "content": "five words in this prompt"}],
            api_key=key,
            stream=True,
        )
    )

    assert streamed_text(chunks) == "You said: five words in this prompt"
    assert all(c.usage is None for c in chunks)  # the client did not ask for it
    with router.store.transaction() as conn:
        [row] = conn.execute(select(ledger)).all()
    assert (row.status, row.prompt_tokens, row.completion_tokens) == ("ok", 5, 7)
    assert not row.usage_estimated


def test_reasoning_answers_reach_the_client_as_text_without_the_thinking(
    adapter: ProviderAdapter, fake: FakeMistral
) -> None:
    answer = adapter.chat(ask("hello there"), "magistral-small-latest")
    assert answer.choices[0].message.content == "You said: hello there"
    streamed = adapter.stream(ask("hello there", stream=True), "magistral-small-latest")
    assert streamed_text(streamed) == "You said: hello there"


def test_router_retries_a_failed_generation_then_falls_back(
    make_router: Callable[..., Router], base_url: str, fake: FakeMistral
) -> None:
    fake.finish_reason = "error"
    router = mistral_router(
        make_router, base_url, max_retries=1, retry_backoff=0, fallbacks=["echo#echo"]
    )
    key = router.create_key("test")[1]
    messages = [{"role": "user", "content": "hello"}]

    answer = router.chat(model=f"Mistral#{MODEL}", messages=messages, api_key=key)
    assert answer.choices[0].message.content == "hello"
    assert len(fake.requests) == 2

    # A stream fails in its last chunk, once the client has the text: too late to retry.
    received: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamError):
        received.extend(
            router.chat(model=f"Mistral#{MODEL}", messages=messages, api_key=key, stream=True)
        )
    assert streamed_text(received) == "You said: hello"
    assert len(fake.requests) == 3

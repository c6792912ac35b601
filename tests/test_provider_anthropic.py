"""The anthropic adapter against a fake Messages API over real HTTP on 127.0.0.1.

The fake is as strict as Anthropic, so a request it accepts is a well-formed one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from llmrouter.config import ProviderSettings
from llmrouter.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamUnsupportedError,
)
from llmrouter.providers.base import ProviderAdapter
from llmrouter.providers.registry import build_adapter
from llmrouter.schemas import ChatCompletionChunk, ChatRequest
from tests.client_view import assembled_tool_calls, streamed_text
from tests.upstreams.anthropic_server import API_VERSION, TEST_KEY, FakeAnthropic, Shape
from tests.upstreams.faults import Fault
from tests.upstreams.loopback import LoopbackServer

MODEL = "claude-test-1"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}  # no parameters at all
PNG_DATA_URI = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fake_app() -> FakeAnthropic:
    return FakeAnthropic()


@pytest.fixture(scope="module")
def server(fake_app: FakeAnthropic) -> Iterator[LoopbackServer]:
    with LoopbackServer(fake_app) as running:
        yield running


@pytest.fixture(autouse=True)
def fake(fake_app: FakeAnthropic) -> FakeAnthropic:
    fake_app.reset()
    return fake_app


def make_adapter(server: LoopbackServer, **settings: Any) -> ProviderAdapter:
    fields = {"name": "Anthropic", "kind": "anthropic", "base_url": server.url, "api_key": TEST_KEY}
    return build_adapter(ProviderSettings.model_validate({**fields, **settings}))


@pytest.fixture
def adapter(server: LoopbackServer) -> Iterator[ProviderAdapter]:
    built = make_adapter(server)
    yield built
    built.close()


def ask(text: str, **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "anthropic-claude", "messages": [{"role": "user", "content": text}], **fields}
    )


def collect(adapter: ProviderAdapter, request: ChatRequest) -> list[ChatCompletionChunk]:
    with adapter.stream(request, MODEL) as stream:
        return list(stream)


def tool_history(*call_ids: str, **fields: Any) -> ChatRequest:
    """A question, then one get_time call per id and its result ("12:00", "12:01", …)."""
    calls = [
        {"id": call_id, "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
        for call_id in call_ids
    ]
    results = [
        {"role": "tool", "tool_call_id": call_id, "content": f"12:{n:02d}"}
        for n, call_id in enumerate(call_ids)
    ]
    messages = [
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "tool_calls": calls},
        *results,
    ]
    return ChatRequest.model_validate({"model": "m", "messages": messages, **fields})


def tool_call_deltas(chunks: list[ChatCompletionChunk]) -> list[dict[str, Any]]:
    return [
        d.model_dump(exclude_none=True)
        for c in chunks
        for choice in c.choices
        for d in choice.delta.tool_calls or []
    ]


# --------------------------------------------------------------------------- chat


def test_plain_chat(adapter: ProviderAdapter, fake: FakeAnthropic) -> None:
    completion = adapter.chat(ask("Hello there, Claude"), MODEL)

    assert completion.choices[0].message.content == "Hello there, Claude"
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id == "chatcmpl-msg_fake000001"
    assert completion.model == MODEL
    assert fake.last.headers["X-Api-Key"] == TEST_KEY
    assert fake.last.headers["Anthropic-Version"] == API_VERSION
    assert fake.last.body == {
        "model": MODEL,
        "max_tokens": 4096,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hello there, Claude"}]}
        ],
    }


def test_max_tokens_from_request_or_capped_by_model_limit(
    server: LoopbackServer, fake: FakeAnthropic
) -> None:
    small = make_adapter(server, models=[{"id": MODEL, "max_output_length": 1000}])

    small.chat(ask("hi"), MODEL)
    assert fake.last.body["max_tokens"] == 1000
    small.chat(ask("hi", max_completion_tokens=50), MODEL)
    assert fake.last.body["max_tokens"] == 50
    small.chat(ask("hi", max_tokens=60), "claude-unlisted")
    assert fake.last.body["max_tokens"] == 60


def test_base_url_ending_in_v1_and_extra_headers(
    server: LoopbackServer, fake: FakeAnthropic
) -> None:
    adapter = make_adapter(
        server, base_url=server.url + "/v1/", headers={"anthropic-beta": "some-feature"}
    )

    assert adapter.chat(ask("hi"), MODEL).choices[0].message.content == "hi"
    assert fake.last.headers["Anthropic-Beta"] == "some-feature"


def test_system_messages_and_content_parts_translated(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    request = ChatRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                        {"type": "image_url", "image_url": {"url": PNG_DATA_URI, "detail": "low"}},
                    ],
                },
            ],
        }
    )

    adapter.chat(request, MODEL)

    assert fake.last.body["system"] == "Be brief.\n\nAnswer in French."
    assert fake.last.body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": PNG_DATA_URI.split(",", 1)[1],
                    },
                },
            ],
        }
    ]


@pytest.mark.parametrize(
    ("part", "named"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}, "base64"),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "input_audio"),
    ],
)
def test_untranslatable_parts_refused_before_sending(
    adapter: ProviderAdapter, fake: FakeAnthropic, part: dict[str, Any], named: str
) -> None:
    request = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [part]}]}
    )

    with pytest.raises(UpstreamUnsupportedError, match=named) as caught:
        adapter.chat(request, MODEL)

    assert caught.value.param == "messages[0].content"
    assert fake.received == []


def test_sampling_fields_mapped_and_unknown_fields_dropped(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    request = ask(
        "hi",
        temperature=1.7,
        top_p=0.9,
        stop="END",
        user="user-42",
        n=1,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        logit_bias={"50256": -100},
        logprobs=True,
        top_logprobs=2,
        service_tier="default",
        some_vendor_field={"x": 1},
    )

    adapter.chat(request, MODEL)

    body = fake.last.body
    assert body["temperature"] == 1.0
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "user-42"}
    # top_p is dropped: current Claude models refuse it together with temperature
    assert set(body) == {
        "model",
        "max_tokens",
        "messages",
        "temperature",
        "stop_sequences",
        "metadata",
    }

    adapter.chat(ask("hi", temperature=0.3), MODEL)
    assert fake.last.body["temperature"] == 0.3
    adapter.chat(ask("hi", top_p=0.9), MODEL)
    assert (fake.last.body["top_p"], "temperature" in fake.last.body) == (0.9, False)


def test_n_above_one_refused(adapter: ProviderAdapter, fake: FakeAnthropic) -> None:
    with pytest.raises(UpstreamUnsupportedError) as caught:
        adapter.chat(ask("hi", n=2), MODEL)

    assert caught.value.param == "n"
    assert fake.received == []


# --------------------------------------------------------------------------- tools


@pytest.mark.parametrize(
    ("tool_choice", "sent", "called"),
    [
        (None, {"type": "auto"}, None),
        ("auto", {"type": "auto"}, None),
        ("required", {"type": "any"}, "get_weather"),
        ("none", {"type": "none"}, None),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"type": "tool", "name": "get_time"},
            "get_time",
        ),
    ],
)
def test_tools_and_tool_choice(
    adapter: ProviderAdapter,
    fake: FakeAnthropic,
    tool_choice: Any,
    sent: dict[str, Any],
    called: str | None,
) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER, TIME]}
    if tool_choice is not None:
        fields["tool_choice"] = tool_choice

    message = adapter.chat(ask("What now?", **fields), MODEL).choices[0].message

    assert fake.last.body["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": WEATHER["function"]["parameters"],
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert fake.last.body["tool_choice"] == sent
    if called is None:
        assert (message.content, message.tool_calls) == ("What now?", None)
    else:
        assert message.content is None
        assert [c.function.name for c in message.tool_calls or []] == [called]


def test_parallel_tool_calls_false_disables_parallel_use(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    request = ask(
        "get_weather and get_time please", tools=[WEATHER, TIME], parallel_tool_calls=False
    )

    message = adapter.chat(request, MODEL).choices[0].message

    assert fake.last.body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert [c.function.name for c in message.tool_calls or []] == ["get_weather"]


def test_parallel_tool_calls_with_text(adapter: ProviderAdapter) -> None:
    completion = adapter.chat(ask("Use get_weather and get_time", tools=[WEATHER, TIME]), MODEL)

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me call get_weather and get_time."
    calls = [c.model_dump() for c in choice.message.tool_calls or []]
    assert calls == [
        {
            "id": "toolu_00_00_get_weather",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "echo", "days": 7}'},
        },
        {
            "id": "toolu_00_01_get_time",
            "type": "function",
            "function": {"name": "get_time", "arguments": "{}"},
        },
    ]


def test_tool_results_round_trip_as_one_user_turn(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    request = ChatRequest.model_validate(
        {
            "model": "m",
            "tools": [WEATHER, TIME],
            "messages": [
                {"role": "user", "content": "Weather and time?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "toolu_a",
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": '{"city": "Oslo", "days": 1}',
                            },
                        },
                        {
                            "id": "toolu_b",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_a", "content": "18C"},
                {
                    "role": "tool",
                    "tool_call_id": "toolu_b",
                    "content": [{"type": "text", "text": "12:00"}],
                },
            ],
        }
    )

    completion = adapter.chat(request, MODEL)

    assert completion.choices[0].message.content == "Tool results: 18C; 12:00"
    assert fake.last.body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_a",
                    "name": "get_weather",
                    "input": {"city": "Oslo", "days": 1},
                },
                {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "12:00"},
            ],
        },
    ]


def test_foreign_tool_call_ids_mapped_to_ids_anthropic_accepts(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    # Ids as Kimi or DeepSeek make them, two of them alike once "." and ":" are replaced,
    # and an id Anthropic accepts as it is.
    request = tool_history(
        "functions.get_time:0", "functions:get_time.0", "toolu_kept", tools=[TIME]
    )

    completion = adapter.chat(request, MODEL)
    chunks = collect(adapter, request)

    # The same in every request, so a call and its result still match turns later.
    expected = ["functions_get_time_0_0e00d1fe", "functions_get_time_0_4f69c257", "toolu_kept"]
    for received in fake.received:
        calls, results = received.body["messages"][1:]
        assert [b["id"] for b in calls["content"]] == expected
        assert [b["tool_use_id"] for b in results["content"]] == expected
    answer = "Tool results: 12:00; 12:01; 12:02"
    assert completion.choices[0].message.content == answer
    assert streamed_text(chunks) == answer


def test_tool_history_without_tools_gets_a_placeholder_tool_never_called(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    completion = adapter.chat(tool_history("toolu_a"), MODEL)

    assert completion.choices[0].message.content == "Tool results: 12:00"
    assert fake.last.body["tools"] == [
        {
            "name": "no_tools_available",
            "description": "No tools are available. Never call this tool.",
            "input_schema": {"type": "object", "properties": {}},
        }
    ]
    assert fake.last.body["tool_choice"] == {"type": "none"}

    # Without tool calls in the history, no tools are sent.
    adapter.chat(ask("hi"), MODEL)
    assert "tools" not in fake.last.body


def test_unparseable_tool_arguments_refused(adapter: ProviderAdapter, fake: FakeAnthropic) -> None:
    request = ChatRequest.model_validate(
        {
            "model": "m",
            "tools": [WEATHER],
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "toolu_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{city"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_a", "content": "18C"},
            ],
        }
    )

    with pytest.raises(UpstreamUnsupportedError, match="toolu_a") as caught:
        adapter.chat(request, MODEL)

    assert caught.value.param == "messages[1].tool_calls"
    assert fake.received == []


def test_streamed_parallel_tool_calls_equal_the_non_streamed_ones(adapter: ProviderAdapter) -> None:
    request = ask("Use get_weather and get_time", tools=[WEATHER, TIME])
    message = adapter.chat(request, MODEL).choices[0].message

    chunks = collect(adapter, request)

    expected = [
        {
            "id": c.id,
            "type": c.type,
            "name": c.function.name,
            "arguments": json.loads(c.function.arguments),
        }
        for c in message.tool_calls or []
    ]
    assembled = [
        {**c, "arguments": json.loads(c["arguments"])} for c in assembled_tool_calls(chunks)
    ]
    assert assembled == expected
    assert streamed_text(chunks) == message.content
    assert all(choice.index == 0 for c in chunks for choice in c.choices)
    finishes = [
        choice.finish_reason for c in chunks for choice in c.choices if choice.finish_reason
    ]
    assert finishes == ["tool_calls"]


def test_streamed_tool_call_deltas_count_tool_calls_only(adapter: ProviderAdapter) -> None:
    # Anthropic numbers the text block 0 and the tools 1 and 2; OpenAI's indices are 0 and 1.
    chunks = collect(adapter, ask("Use get_weather and get_time", tools=[WEATHER, TIME]))

    deltas = tool_call_deltas(chunks)
    starts = [d for d in deltas if "id" in d]
    assert starts == [
        {
            "index": 0,
            "id": "toolu_00_00_get_weather",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {
            "index": 1,
            "id": "toolu_00_01_get_time",
            "type": "function",
            "function": {"name": "get_time", "arguments": ""},
        },
    ]
    fragments = [d for d in deltas if "id" not in d]
    assert all(
        set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in fragments
    )
    assert len([d for d in fragments if d["index"] == 0]) > 1  # the input came in several pieces
    assert [d["function"]["arguments"] for d in fragments if d["index"] == 1] == ["{}"]


def test_tool_without_input_gives_empty_object(adapter: ProviderAdapter) -> None:
    request = ask("hi", tools=[TIME], tool_choice="required")

    message = adapter.chat(request, MODEL).choices[0].message
    chunks = collect(adapter, request)

    assert message.tool_calls is not None
    assert message.tool_calls[0].function.arguments == "{}"
    assert assembled_tool_calls(chunks)[0]["arguments"] == "{}"


# --------------------------------------------------------------------------- streaming


def test_stream_of_text(adapter: ProviderAdapter, fake: FakeAnthropic) -> None:
    chunks = collect(adapter, ask("One two three four"))

    assert fake.last.body["stream"] is True
    assert chunks[0].choices[0].delta.model_dump(exclude_none=True) == {
        "role": "assistant",
        "content": "",
    }
    content = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert content == ["One ", "two ", "three ", "four"]
    finish = chunks[-2]
    assert finish.choices[0].delta.model_dump(exclude_none=True) == {}
    assert finish.choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert {c.id for c in chunks} == {"chatcmpl-msg_fake000001"}
    assert {c.model for c in chunks} == {MODEL}


def test_thinking_blocks_are_not_content(adapter: ProviderAdapter, fake: FakeAnthropic) -> None:
    fake.shape_next(Shape(thinking="secret plan"), Shape(thinking="secret plan"))

    completion = adapter.chat(ask("hello"), MODEL)
    chunks = collect(adapter, ask("hello"))

    assert completion.choices[0].message.content == "hello"
    assert streamed_text(chunks) == "hello"


def test_usage_counts_cache_tokens_as_prompt_tokens(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    cache = Shape(cache_creation_input_tokens=100, cache_read_input_tokens=50)
    fake.shape_next(cache, cache)

    usage = adapter.chat(ask("one two three"), MODEL).usage
    streamed = collect(adapter, ask("one two three"))[-1].usage

    # 3 words + 3 per message from the fake, then 100 written to and 50 read from the cache
    expected = {
        "prompt_tokens": 156,
        "completion_tokens": 3,
        "total_tokens": 159,
        "prompt_tokens_details": {"cached_tokens": 50},
    }
    assert usage is not None and streamed is not None
    assert usage.model_dump(exclude_none=True) == expected
    assert streamed.model_dump(exclude_none=True) == expected


def test_stop_sequences(adapter: ProviderAdapter, fake: FakeAnthropic) -> None:
    completion = adapter.chat(ask("keep this STOP not this", stop=["STOP", "NEVER"]), MODEL)

    assert fake.last.body["stop_sequences"] == ["STOP", "NEVER"]
    assert completion.choices[0].message.content == "keep this "
    assert completion.choices[0].finish_reason == "stop"


def test_whitespace_only_stop_sequences_dropped(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    # Anthropic refuses them and cannot honour them: the answer goes on past a newline.
    completion = adapter.chat(ask("one\ntwo", stop="\n"), MODEL)

    assert "stop_sequences" not in fake.last.body
    assert completion.choices[0].message.content == "one\ntwo"

    completion = adapter.chat(ask("keep this END not this", stop=["\n", " \t", "", "END"]), MODEL)

    assert fake.last.body["stop_sequences"] == ["END"]
    assert completion.choices[0].message.content == "keep this "


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
def test_finish_reason_for_each_stop_reason(
    adapter: ProviderAdapter, fake: FakeAnthropic, stop_reason: str, finish_reason: str
) -> None:
    fake.shape_next(Shape(stop_reason=stop_reason), Shape(stop_reason=stop_reason))

    completion = adapter.chat(ask("hi"), MODEL)
    chunks = collect(adapter, ask("hi"))

    assert completion.choices[0].finish_reason == finish_reason
    assert chunks[-2].choices[0].finish_reason == finish_reason


def test_max_tokens_reached_is_length(adapter: ProviderAdapter) -> None:
    completion = adapter.chat(ask("one two three four five", max_tokens=2), MODEL)

    assert completion.choices[0].message.content == "one two"
    assert completion.choices[0].finish_reason == "length"


# --------------------------------------------------------------------------- JSON mode


def test_json_schema_answered_through_a_forced_tool(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    request = ask(
        "Answer in JSON",
        response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
    )

    completion = adapter.chat(request, MODEL)
    chunks = collect(adapter, request)

    assert fake.last.body["tools"][0]["input_schema"] == schema
    assert fake.last.body["tool_choice"] == {"type": "tool", "name": "json_response"}
    message = completion.choices[0].message
    assert json.loads(message.content or "") == {"answer": "echo"}
    assert message.tool_calls is None
    assert completion.choices[0].finish_reason == "stop"
    assert streamed_text(chunks) == message.content
    assert tool_call_deltas(chunks) == []
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_json_object_without_fields_streams_an_empty_object(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    chunks = collect(adapter, ask("hi", response_format={"type": "json_object"}))

    assert fake.last.body["tools"][0]["input_schema"] == {"type": "object"}
    assert streamed_text(chunks) == "{}"


def test_json_mode_with_client_tools_asks_through_the_system_prompt(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    request = ask(
        "hi", tools=[WEATHER], response_format={"type": "json_object"}, tool_choice="auto"
    )

    adapter.chat(request, MODEL)

    assert "JSON object only" in fake.last.body["system"]
    assert [t["name"] for t in fake.last.body["tools"]] == ["get_weather"]
    assert fake.last.body["tool_choice"] == {"type": "auto"}


# --------------------------------------------------------------------------- errors


def test_error_event_mid_stream_raises(adapter: ProviderAdapter, fake: FakeAnthropic) -> None:
    fake.script.append(
        Fault(error_event_after=4, error_type="overloaded_error", message="Overloaded")
    )
    stream = adapter.stream(ask("one two three four five six"), MODEL)
    received = []

    with pytest.raises(UpstreamError, match="Overloaded") as caught:
        for chunk in stream:
            received.append(chunk)

    assert "overloaded_error" in caught.value.message
    assert streamed_text(received) == "one "
    assert stream.closed


def test_error_event_before_any_chunk_raised_by_the_first_read(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    fake.script.append(
        Fault(error_event_after=0, error_type="overloaded_error", message="Overloaded")
    )

    # The dispatcher reads a stream's first chunk before anything reaches the client, so
    # an error here can still be retried or fall back.
    stream = adapter.stream(ask("hi"), MODEL)
    with pytest.raises(UpstreamError, match="Overloaded"):
        next(stream)
    assert stream.closed


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault(drop_after=3), "stream broke off"),
        (Fault(drop_after=9), "stream broke off"),
        (Fault(end_after=9), "stream ended before message_stop"),
        (Fault(raw='event: message_start\ndata: {"type": "message_st\n\n'), "unreadable"),
    ],
)
def test_broken_stream_raises(
    adapter: ProviderAdapter, fake: FakeAnthropic, fault: Fault, message: str
) -> None:
    fake.script.append(fault)

    with pytest.raises(UpstreamError, match=message):
        list(adapter.stream(ask("one two three four five six"), MODEL))


def test_unreadable_answer_is_an_upstream_error(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    fake.script.append(Fault(raw='{"type": "message", "content": "not blocks"}'))

    with pytest.raises(UpstreamError, match="not a Messages API message"):
        adapter.chat(ask("hi"), MODEL)


def test_refused_key_is_an_auth_error_without_the_key(server: LoopbackServer) -> None:
    wrong = "sk-ant-wrong-key-0000000000000000"
    adapter = make_adapter(server, api_key=wrong)

    for call in (adapter.chat, adapter.stream):
        with pytest.raises(UpstreamAuthError) as caught:
            call(ask("hi"), MODEL)
        assert "refused the router's credentials" in caught.value.message
        assert wrong not in caught.value.message
        assert caught.value.upstream_status == 401


def test_rate_limit_keeps_retry_after(adapter: ProviderAdapter, fake: FakeAnthropic) -> None:
    limited = Fault(status=429, error_type="rate_limit_error", message="Slow down", retry_after=7)
    fake.script.extend([limited, limited])

    for call in (adapter.chat, adapter.stream):
        with pytest.raises(UpstreamRateLimitError) as caught:
            call(ask("hi"), MODEL)
        assert caught.value.retry_after == 7.0
        assert "Slow down" in caught.value.message


def test_request_anthropic_refuses_is_rejected_with_its_message(adapter: ProviderAdapter) -> None:
    # OpenAI accepts a conversation opened by the assistant; Anthropic does not.
    request = ChatRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be kind."},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "hi"},
            ],
        }
    )

    with pytest.raises(UpstreamRejectedError, match='first message must use the "user" role'):
        adapter.chat(request, MODEL)


def test_overloaded_is_a_retryable_upstream_error(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    fake.script.append(Fault(status=529, error_type="overloaded_error", message="Overloaded"))

    with pytest.raises(UpstreamError) as caught:
        adapter.chat(ask("hi"), MODEL)

    assert type(caught.value) is UpstreamError
    assert caught.value.upstream_status == 529
    assert caught.value.retryable
    assert "Overloaded" in caught.value.message


def test_closing_a_stream_early_closes_the_connection(
    adapter: ProviderAdapter, fake: FakeAnthropic
) -> None:
    fake.script.append(Fault(chunk_pause=0.01))
    stream = adapter.stream(ask(" ".join(["word"] * 500)), MODEL)

    first = [next(stream) for _ in range(3)]
    stream.close()

    assert streamed_text(first) == "word word "
    deadline = time.monotonic() + 5
    while fake.aborted_streams == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.aborted_streams == 1
    assert list(stream) == []


# --------------------------------------------------------------------------- the fake itself


def _valid_body(**changes: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        **changes,
    }


_SPLIT_RESULTS = [
    {"role": "user", "content": "weather and time?"},
    {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "t1", "name": "get_time", "input": {}},
            {"type": "tool_use", "id": "t2", "name": "get_time", "input": {}},
        ],
    },
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "1"}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": "2"}]},
]


_TIME_TOOL = [{"name": "get_time", "input_schema": {"type": "object"}}]


def _with_ids(use_id: str, result_id: str) -> list[dict[str, Any]]:
    """A get_time call with ``use_id`` and its result for ``result_id``."""
    return [
        {"role": "user", "content": "time?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": use_id, "name": "get_time", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": result_id}]},
    ]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            400,
            "max_tokens: Field required",
        ),
        (
            _valid_body(response_format={"type": "json_object"}),
            400,
            "response_format: Extra inputs",
        ),
        (_valid_body(n=2), 400, "n: Extra inputs"),
        (_valid_body(presence_penalty=0.5), 400, "presence_penalty: Extra inputs"),
        (_valid_body(temperature=1.5), 400, "temperature"),
        (
            _valid_body(
                tools=[{"name": "get_time", "input_schema": {"type": "object"}}], tool_choice="auto"
            ),
            400,
            "tool_choice: Input should be a valid dictionary",
        ),
        (_valid_body(messages=[{"role": "system", "content": "x"}]), 400, "first message"),
        (
            _valid_body(
                messages=[{"role": "user", "content": "a"}, {"role": "system", "content": "x"}]
            ),
            400,
            "messages.1.role",
        ),
        (
            _valid_body(
                tools=[{"name": "get_time", "input_schema": {"type": "object"}}],
                messages=_SPLIT_RESULTS,
            ),
            400,
            "tool_use` ids were found without `tool_result` blocks immediately after: t2",
        ),
        (_valid_body(messages=_SPLIT_RESULTS[:3]), 400, "must define tools"),
        (
            _valid_body(temperature=0.5, top_p=0.9),
            400,
            "`temperature` and `top_p` cannot both be specified for this model",
        ),
        (_valid_body(stop_sequences=["\n"]), 400, "each stop sequence must contain non-whitespace"),
        (_valid_body(stop_sequences=[""]), 400, "each stop sequence must contain non-whitespace"),
        (
            _valid_body(tools=_TIME_TOOL, messages=_with_ids("functions.get_time:0", "t1")),
            400,
            "messages.1.content.0.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'",
        ),
        (
            _valid_body(tools=_TIME_TOOL, messages=_with_ids("t1", "functions.get_time:0")),
            400,
            "messages.2.content.0.tool_result.tool_use_id: String should match pattern",
        ),
        (
            _valid_body(tools=_TIME_TOOL, messages=_with_ids("t1\n", "t1\n")),
            400,
            "tool_use.id: String should match pattern",
        ),
        (
            _valid_body(
                tools=_TIME_TOOL,
                messages=[
                    *_SPLIT_RESULTS[:2],
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "t1", "content": "1"},
                            {"type": "tool_result", "tool_use_id": "t2", "content": "2"},
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "tool_use", "id": "t1", "name": "get_time", "input": {}}
                        ],
                    },
                ],
            ),
            400,
            "messages.3.content.0: `tool_use` ids must be unique",
        ),
    ],
)
def test_fake_refuses_what_anthropic_refuses(
    server: LoopbackServer, body: dict[str, Any], status: int, message: str
) -> None:
    headers = {"x-api-key": TEST_KEY, "anthropic-version": API_VERSION}

    response = requests.post(server.url + "/v1/messages", json=body, headers=headers, timeout=5)

    assert response.status_code == status
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert message in error["error"]["message"]


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({"anthropic-version": API_VERSION}, 401, "authentication_error"),
        ({"x-api-key": TEST_KEY}, 400, "invalid_request_error"),
    ],
)
def test_fake_requires_its_headers(
    server: LoopbackServer, headers: dict[str, str], status: int, kind: str
) -> None:
    response = requests.post(
        server.url + "/v1/messages", json=_valid_body(), headers=headers, timeout=5
    )

    assert response.status_code == status
    assert response.json()["error"]["type"] == kind

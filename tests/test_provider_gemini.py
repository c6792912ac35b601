"""The ``gemini`` adapter against a fake Gemini API over real loopback HTTP: translation both
ways, tool calls (parallel, streamed, replayed), usage, finish reasons and error mapping."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import closing
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
from llmrouter.providers.base import ChunkStream, ProviderAdapter
from llmrouter.providers.gemini import GeminiAdapter
from llmrouter.providers.registry import adapter_class, build_adapter
from llmrouter.schemas import ChatCompletionChunk, ChatRequest
from tests.client_view import WEATHER_TOOL, streamed_text
from tests.upstreams.faults import Fault
from tests.upstreams.gemini_server import API_KEY, THOUGHT_TOKENS, FakeGemini
from tests.upstreams.loopback import LoopbackServer

MODEL = "gemini-2.0-flash"
CALL_ID = re.compile(r"call_[0-9a-f]{24}")
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def fake() -> FakeGemini:
    return FakeGemini()


@pytest.fixture(scope="module")
def base_url(fake: FakeGemini) -> Iterator[str]:
    with LoopbackServer(fake.app) as server:
        yield server.url + "/v1beta"


@pytest.fixture(autouse=True)
def _fresh_fake(fake: FakeGemini) -> None:
    fake.reset()


def make_adapter(base_url: str, api_key: str | None = API_KEY) -> ProviderAdapter:
    settings = ProviderSettings(name="Gemini", kind="gemini", base_url=base_url, api_key=api_key)
    return build_adapter(settings)


@pytest.fixture
def adapter(base_url: str) -> Iterator[ProviderAdapter]:
    adapter = make_adapter(base_url)
    yield adapter
    adapter.close()


def chat_request(*messages: dict[str, Any] | str, **fields: Any) -> ChatRequest:
    """A request of ``messages``; a plain string is a user message."""
    listed = [{"role": "user", "content": m} if isinstance(m, str) else m for m in messages]
    return ChatRequest.model_validate({"model": f"Gemini#{MODEL}", "messages": listed, **fields})


def collect(stream: ChunkStream) -> list[ChatCompletionChunk]:
    with stream:
        return list(stream)


def streamed_calls(chunks: list[ChatCompletionChunk]) -> list[dict[str, Any]]:
    """The tool call deltas of a stream, in order, as plain dicts."""
    return [
        call.model_dump(exclude_none=True)
        for chunk in chunks
        for choice in chunk.choices
        for call in choice.delta.tool_calls or []
    ]


def finish_reasons(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]


def post_raw(base_url: str, model: str, body: dict[str, Any]) -> requests.Response:
    """``body`` sent to the fake as it stands, without the adapter."""
    return requests.post(
        f"{base_url}/models/{model}:generateContent",
        json=body,
        headers={"x-goog-api-key": API_KEY},
        timeout=5,
    )


def candidate(parts: list[dict[str, Any]], finish: str | None = "STOP") -> dict[str, Any]:
    """One scripted GenerateContentResponse with one candidate."""
    content: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if finish:
        content["finishReason"] = finish
    usage = {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6}
    return {"candidates": [content], "usageMetadata": usage, "modelVersion": MODEL}


# --------------------------------------------------------------------------- basics


def test_registry_builds_the_gemini_adapter() -> None:
    assert adapter_class("gemini") is GeminiAdapter
    with closing(build_adapter(ProviderSettings(name="G", kind="gemini"))) as adapter:
        assert isinstance(adapter, GeminiAdapter)
        assert adapter.base_url == "https://generativelanguage.googleapis.com/v1beta"


def test_plain_chat(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    completion = adapter.chat(chat_request("Hello there, Gemini"), MODEL)

    assert completion.choices[0].message.content == "Hello there, Gemini"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gemini-2.0-flash-001"  # modelVersion
    assert completion.usage is not None
    assert completion.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 3,
        "completion_tokens": 3,
        "total_tokens": 6,
    }
    received = fake.last
    assert (received.model, received.method) == (MODEL, "generateContent")
    assert received.headers["X-Goog-Api-Key"] == API_KEY
    assert received.query == {}  # the key never travels in the URL
    assert received.body == {
        "contents": [{"role": "user", "parts": [{"text": "Hello there, Gemini"}]}]
    }


def test_models_prefix_of_the_upstream_name_is_dropped(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    adapter.chat(chat_request("hi"), f"models/{MODEL}")
    assert fake.last.model == MODEL


def test_system_and_developer_become_system_instruction_and_roles_are_mapped(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    request = chat_request(
        {"role": "system", "content": "Be brief."},
        "Hi",
        {"role": "assistant", "content": "Hello!"},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        "Say it again",
    )
    completion = adapter.chat(request, MODEL)

    body = fake.last.body
    assert body["systemInstruction"] == {
        "parts": [{"text": "Be brief."}, {"text": "Answer in English."}]
    }
    assert [(c["role"], c["parts"]) for c in body["contents"]] == [
        ("user", [{"text": "Hi"}]),
        ("model", [{"text": "Hello!"}]),
        ("user", [{"text": "Say it again"}]),
    ]
    assert completion.choices[0].message.content == "Say it again"


def test_image_parts(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    content = [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?size=2"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/photo", "detail": "low"}},
    ]
    completion = adapter.chat(chat_request({"role": "user", "content": content}), MODEL)

    assert fake.last.body["contents"][0]["parts"] == [
        {"text": "Compare"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?size=2"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/photo"}},
    ]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 1 + 3 * 258  # the fake counts images as Gemini does


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png,not-base64"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    ],
)
def test_untranslatable_content_is_refused_before_sending(
    adapter: ProviderAdapter, fake: FakeGemini, part: dict[str, Any]
) -> None:
    with pytest.raises(UpstreamUnsupportedError) as raised:
        adapter.chat(chat_request({"role": "user", "content": [part]}), MODEL)
    assert raised.value.param == "messages[0].content"
    assert fake.received == []


# --------------------------------------------------------------------------- tools


@pytest.mark.parametrize(
    ("tool_choice", "said", "tool_config", "called"),
    [
        (None, "use get_time please", None, ["get_time"]),
        ("auto", "use get_time please", {"mode": "AUTO"}, ["get_time"]),
        ("none", "use get_time please", {"mode": "NONE"}, []),
        ("required", "anything", {"mode": "ANY"}, ["get_weather"]),
        (
            {"type": "function", "function": {"name": "get_time"}},
            "use get_weather please",
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
            ["get_time"],
        ),
    ],
)
def test_tools_and_each_tool_choice(
    adapter: ProviderAdapter,
    fake: FakeGemini,
    tool_choice: Any,
    said: str,
    tool_config: dict[str, Any] | None,
    called: list[str],
) -> None:
    fields = {"tools": [WEATHER_TOOL, TIME]}
    if tool_choice is not None:
        fields["tool_choice"] = tool_choice
    completion = adapter.chat(chat_request(said, **fields), MODEL)

    body = fake.last.body
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parameters": {
                        "type": "OBJECT",
                        "properties": {"city": {"type": "STRING"}},
                        "required": ["city"],
                    },
                },
                {
                    "name": "get_time",
                    "parameters": {"type": "OBJECT", "properties": {"zone": {"type": "STRING"}}},
                },
            ]
        }
    ]
    assert body.get("toolConfig") == (tool_config and {"functionCallingConfig": tool_config})
    message = completion.choices[0].message
    assert [call.function.name for call in message.tool_calls or []] == called
    assert completion.choices[0].finish_reason == ("tool_calls" if called else "stop")
    if not called:
        assert message.content == said


def test_a_function_without_parameters_declares_none(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    tools = [
        {"type": "function", "function": {"name": "ping"}},
        {"type": "function", "function": {"name": "pong", "parameters": {"type": "object"}}},
    ]
    completion = adapter.chat(chat_request("ping and pong", tools=tools), MODEL)

    assert fake.last.body["tools"][0]["functionDeclarations"] == [
        {"name": "ping"},
        {"name": "pong"},
    ]
    calls = completion.choices[0].message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("ping", "{}"),
        ("pong", "{}"),
    ]


MESSY_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Booking",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "guest": {"$ref": "#/$defs/Guest", "description": "Who stays."},
        "nights": {"type": "integer", "minimum": 1, "exclusiveMaximum": 30, "default": 1},
        "room": {"enum": ["single", "double"], "examples": ["double"]},
        "note": {"type": ["string", "null"], "maxLength": 200},
        "arrival": {"type": "string", "format": "date-time"},
        "website": {"type": "string", "format": "uri"},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "pet": {"anyOf": [{"$ref": "#/$defs/Pet"}, {"type": "null"}]},
        "pay": {"oneOf": [{"const": "card"}, {"type": "integer", "title": "Voucher"}]},
        "vip": {"allOf": [{"type": "boolean"}], "description": "Very important."},
        "contact": {
            "type": "object",
            "oneOf": [
                {"properties": {"email": {"type": "string"}}, "required": ["email"]},
                {"properties": {"phone": {"type": "string"}}, "required": ["phone"]},
            ],
        },
    },
    "required": ["guest", "nights", "ghost"],
    "$defs": {
        "Guest": {
            "type": "object",
            "title": "Guest",
            "additionalProperties": False,
            "properties": {"name": {"type": "string", "title": "Name"}},
            "required": ["name"],
        },
        "Pet": {"type": "object", "properties": {"kind": {"type": "string"}}},
    },
}
REDUCED_SCHEMA = {
    "type": "OBJECT",
    "properties": {
        "guest": {
            "type": "OBJECT",
            "properties": {"name": {"type": "STRING"}},
            "required": ["name"],
            "description": "Who stays.",
        },
        "nights": {"type": "INTEGER", "minimum": 1},
        "room": {"enum": ["single", "double"], "type": "STRING"},
        "note": {"type": "STRING", "maxLength": 200, "nullable": True},
        "arrival": {"type": "STRING", "format": "date-time"},
        "website": {"type": "STRING"},
        "tags": {"type": "ARRAY", "items": {"type": "STRING"}},
        "pet": {"type": "OBJECT", "properties": {"kind": {"type": "STRING"}}, "nullable": True},
        "pay": {"anyOf": [{"enum": ["card"], "type": "STRING"}, {"type": "INTEGER"}]},
        "vip": {"type": "BOOLEAN", "description": "Very important."},
        "contact": {
            "anyOf": [
                {
                    "type": "OBJECT",
                    "properties": {"email": {"type": "STRING"}},
                    "required": ["email"],
                },
                {
                    "type": "OBJECT",
                    "properties": {"phone": {"type": "STRING"}},
                    "required": ["phone"],
                },
            ]
        },
    },
    "required": ["guest", "nights"],
}


def test_tool_schemas_are_reduced_to_what_gemini_accepts(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    tool = {
        "type": "function",
        "function": {"name": "book", "parameters": MESSY_SCHEMA, "strict": True},
    }
    completion = adapter.chat(chat_request("book it", tools=[tool], tool_choice="required"), MODEL)

    assert fake.last.body["tools"][0]["functionDeclarations"][0] == {
        "name": "book",
        "parameters": REDUCED_SCHEMA,
    }
    arguments = json.loads((completion.choices[0].message.tool_calls or [])[0].function.arguments)
    assert arguments["guest"] == {"name": "sample"}


def test_the_fake_rejects_what_the_reduction_removes(base_url: str) -> None:
    # Guards the test above: unreduced, the same schema is refused as Gemini refuses it.
    body = {
        "contents": [{"role": "user", "parts": [{"text": "book it"}]}],
        "tools": [{"functionDeclarations": [{"name": "book", "parameters": MESSY_SCHEMA}]}],
    }
    response = post_raw(base_url, MODEL, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    for name in ("$schema", "additionalProperties", "$ref", "$defs", "oneOf", "allOf"):
        assert f'Unknown name "{name}"' in error["message"]


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        (
            {
                "type": "object",
                "properties": {"n": {"$ref": "#/$defs/N"}},
                "$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}},
            },
            "recursively",
        ),
        (
            {"type": "object", "properties": {"n": {"$ref": "https://example.com/n.json"}}},
            "not a local definition",
        ),
        (
            {"type": "object", "properties": {"meta": {"type": "object"}}},
            "object without properties",
        ),
        ({"type": "object", "properties": {"any": {"description": "Anything."}}}, "no type"),
        ({"type": "object", "properties": {"list": {"type": "array"}}}, "without one items"),
    ],
)
def test_schemas_gemini_cannot_express_are_refused_clearly(
    adapter: ProviderAdapter, fake: FakeGemini, schema: dict[str, Any], problem: str
) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    with pytest.raises(UpstreamUnsupportedError) as raised:
        adapter.chat(chat_request("f", tools=[tool]), MODEL)
    assert problem in raised.value.message
    assert raised.value.message.startswith("tools[0].function.parameters.properties.")
    assert raised.value.param == "tools[0]"
    assert fake.received == []


def test_tool_result_round_trip(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    call = {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    request = chat_request(
        "weather in Paris?",
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"celsius": 21}'},
        tools=[WEATHER_TOOL],
    )
    # Gemini 3 refuses replayed calls without a thought signature, as the fake does.
    completion = adapter.chat(request, "gemini-3-pro-preview")

    contents = fake.last.body["contents"]
    assert contents[1:] == [
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "skip_thought_signature_validator",
                }
            ],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"celsius": 21}}}],
        },
    ]
    assert completion.choices[0].message.content == 'get_weather returned {"celsius": 21}'


def test_results_of_parallel_calls_share_one_turn(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"},
        },
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
    ]
    request = chat_request(
        "weather and time?",
        {"role": "assistant", "content": "Checking.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_2", "content": "[1, 2]"},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        tools=[WEATHER_TOOL, TIME],
    )
    completion = adapter.chat(request, MODEL)

    model_turn, results_turn = fake.last.body["contents"][1:]
    assert model_turn["parts"] == [
        {"text": "Checking."},
        {
            "functionCall": {"name": "get_weather", "args": {}},
            "thoughtSignature": "skip_thought_signature_validator",
        },
        {"functionCall": {"name": "get_time", "args": {}}},  # signed: the first call only
    ]
    assert results_turn == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_time", "response": {"content": "[1, 2]"}}},
            {"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}},
        ],
    }
    assert completion.choices[0].message.content == (
        'get_time returned {"content": "[1, 2]"}; get_weather returned {"content": "sunny"}'
    )


@pytest.mark.parametrize(
    ("content", "response"),
    [
        ('{"celsius": 21}', {"celsius": 21}),
        ("{}", {}),
        ("sunny", {"content": "sunny"}),
        ("42", {"content": "42"}),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], {"content": "ab"}),
    ],
)
def test_tool_results_become_objects(
    adapter: ProviderAdapter, fake: FakeGemini, content: Any, response: dict[str, Any]
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    request = chat_request(
        "f?",
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": content},
    )
    adapter.chat(request, MODEL)

    last_turn = fake.last.body["contents"][-1]
    assert last_turn == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "f", "response": response}}],
    }


@pytest.mark.parametrize(
    ("assistant", "tool_call_id", "param"),
    [
        (None, "call_missing", "messages[1].tool_call_id"),
        ({"name": "get_weather", "arguments": "[1]"}, "call_1", "messages[1].tool_calls"),
    ],
)
def test_tool_history_that_cannot_be_translated_is_refused(
    adapter: ProviderAdapter,
    fake: FakeGemini,
    assistant: dict[str, str] | None,
    tool_call_id: str,
    param: str,
) -> None:
    messages: list[dict[str, Any] | str] = ["hi"]
    if assistant:
        call = {"id": "call_1", "type": "function", "function": assistant}
        messages.append({"role": "assistant", "tool_calls": [call]})
    messages.append({"role": "tool", "tool_call_id": tool_call_id, "content": "x"})
    with pytest.raises(UpstreamUnsupportedError) as raised:
        adapter.chat(chat_request(*messages, tools=[WEATHER_TOOL]), MODEL)
    assert raised.value.param == param
    assert fake.received == []


def test_parallel_calls(adapter: ProviderAdapter) -> None:
    request = chat_request("get_weather and get_time, please", tools=[WEATHER_TOOL, TIME])
    completion = adapter.chat(request, MODEL)

    choice = completion.choices[0]
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "sample"}),
        ("get_time", {"zone": "sample"}),
    ]
    assert all(CALL_ID.fullmatch(c.id) for c in calls)
    assert calls[0].id != calls[1].id
    assert choice.message.content is None
    assert choice.finish_reason == "tool_calls"


def test_streamed_parallel_calls_match_the_non_streamed_ones(adapter: ProviderAdapter) -> None:
    request = chat_request("get_weather and get_time, please", tools=[WEATHER_TOOL, TIME])
    expected = adapter.chat(request, MODEL).choices[0].message.tool_calls or []

    chunks = collect(adapter.stream(request.model_copy(update={"stream": True}), MODEL))

    deltas = streamed_calls(chunks)
    assert [d["index"] for d in deltas] == [0, 1]
    assert all(CALL_ID.fullmatch(d["id"]) and d["type"] == "function" for d in deltas)
    assert deltas[0]["id"] != deltas[1]["id"]
    assert [(d["function"]["name"], d["function"]["arguments"]) for d in deltas] == [
        (c.function.name, c.function.arguments) for c in expected
    ]
    assert chunks[0].choices[0].delta.model_dump(exclude_none=True) == {
        "role": "assistant",
        "content": "",
    }
    assert finish_reasons(chunks) == ["tool_calls"]
    assert chunks[-2].choices[0].delta.model_dump(exclude_none=True) == {}


def test_calls_in_separate_events_keep_counting(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    def call(name: str) -> dict[str, Any]:
        return {"functionCall": {"name": name, "args": {"n": name}}}

    fake.reply_next(
        candidate([{"text": "Let me check. "}], finish=None),
        candidate([call("a")], finish=None),
        candidate([call("b"), call("c")]),
    )
    chunks = collect(adapter.stream(chat_request("go", stream=True), MODEL))

    deltas = streamed_calls(chunks)
    assert [(d["index"], d["function"]["name"]) for d in deltas] == [(0, "a"), (1, "b"), (2, "c")]
    assert len({d["id"] for d in deltas}) == 3
    assert streamed_text(chunks) == "Let me check. "
    assert finish_reasons(chunks) == ["tool_calls"]


# --------------------------------------------------------------------------- answers


def test_usage_counts_thinking_as_completion(adapter: ProviderAdapter) -> None:
    request = chat_request("one two three")
    completion = adapter.chat(request, "gemini-2.5-flash")
    chunks = collect(
        adapter.stream(request.model_copy(update={"stream": True}), "gemini-2.5-flash")
    )

    assert completion.usage is not None
    assert completion.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 3,
        "completion_tokens": 3 + THOUGHT_TOKENS,
        "total_tokens": 6 + THOUGHT_TOKENS,
        "completion_tokens_details": {"reasoning_tokens": THOUGHT_TOKENS},
    }
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage == completion.usage  # the last usageMetadata, not an earlier one
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)


def test_cached_thought_and_tool_use_tokens(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    reply = candidate([{"text": "ok"}])
    reply["usageMetadata"] = {
        "promptTokenCount": 100,
        "cachedContentTokenCount": 60,
        "toolUsePromptTokenCount": 10,
        "candidatesTokenCount": 5,
        "thoughtsTokenCount": 7,
        "totalTokenCount": 122,
    }
    fake.reply_next(reply)
    usage = adapter.chat(chat_request("hi"), MODEL).usage

    assert usage is not None
    assert usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 110,
        "completion_tokens": 12,
        "total_tokens": 122,
        "prompt_tokens_details": {"cached_tokens": 60},
        "completion_tokens_details": {"reasoning_tokens": 7},
    }


@pytest.mark.parametrize(
    ("gemini", "openai"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("LANGUAGE", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("IMAGE_PROHIBITED_CONTENT", "content_filter"),
        ("IMAGE_RECITATION", "content_filter"),
        ("IMAGE_OTHER", "content_filter"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
        # A failed generation with something to show ends as it can: "stop".
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("TOO_MANY_TOOL_CALLS", "stop"),
    ],
)
def test_finish_reasons(
    adapter: ProviderAdapter, fake: FakeGemini, gemini: str, openai: str
) -> None:
    fake.reply_next(candidate([{"text": "partial"}], finish=gemini))
    fake.reply_next(candidate([{"text": "partial"}], finish=gemini))

    assert adapter.chat(chat_request("hi"), MODEL).choices[0].finish_reason == openai
    chunks = collect(adapter.stream(chat_request("hi", stream=True), MODEL))
    assert finish_reasons(chunks) == [openai]


@pytest.mark.parametrize(
    "reason", ["MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", "OTHER"]
)
def test_a_failed_generation_without_output_is_an_upstream_error(
    adapter: ProviderAdapter, fake: FakeGemini, reason: str
) -> None:
    request = chat_request("use get_weather", tools=[WEATHER_TOOL])
    fake.finish_next(reason)
    with pytest.raises(UpstreamError, match=reason) as raised:
        adapter.chat(request, MODEL)
    assert type(raised.value) is UpstreamError and raised.value.retryable

    fake.finish_next(reason)
    with pytest.raises(UpstreamError, match=reason):  # from stream(): the Router can fall back
        adapter.stream(request.model_copy(update={"stream": True}), MODEL)


def test_a_stream_failing_after_empty_events_is_an_error(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    fake.reply_next(candidate([{"text": ""}], finish=None), candidate([], finish="OTHER"))
    stream = adapter.stream(chat_request("hi", stream=True), MODEL)
    with pytest.raises(UpstreamError, match="OTHER"):
        list(stream)


def test_thought_summaries_are_left_out(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    thought = {"text": "Weighing the options. ", "thought": True}
    fake.reply_next(candidate([thought, {"text": "Tea."}]))
    fake.reply_next(candidate([thought], finish=None), candidate([{"text": "Tea."}]))

    assert adapter.chat(chat_request("tea?"), MODEL).choices[0].message.content == "Tea."
    assert (
        streamed_text(collect(adapter.stream(chat_request("tea?", stream=True), MODEL))) == "Tea."
    )


def test_max_tokens_cut_the_answer(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    completion = adapter.chat(chat_request("one two three four", max_completion_tokens=2), MODEL)

    assert fake.last.body["generationConfig"] == {"maxOutputTokens": 2}
    assert completion.choices[0].message.content == "one two"
    assert completion.choices[0].finish_reason == "length"


def test_a_blocked_prompt_answers_content_filter(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    blocked = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5},
        "modelVersion": MODEL,
    }
    fake.reply_next(blocked)
    fake.reply_next(blocked)

    completion = adapter.chat(chat_request("something bad"), MODEL)
    assert completion.choices[0].message.content == ""
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.usage is not None and completion.usage.prompt_tokens == 5

    chunks = collect(adapter.stream(chat_request("something bad", stream=True), MODEL))
    assert streamed_text(chunks) == ""
    assert finish_reasons(chunks) == ["content_filter"]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 5


def test_generation_config_and_dropped_fields(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    request = chat_request(
        "alpha beta END gamma",
        temperature=0.3,
        top_p=0.9,
        max_tokens=50,
        stop=["END", "never"],
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        user="someone",
        logit_bias={"42": 5},
        parallel_tool_calls=False,
        logprobs=True,
        top_logprobs=2,
        metadata={"trace": "x"},
    )
    completion = adapter.chat(request, MODEL)

    assert fake.last.body == {
        "contents": [{"role": "user", "parts": [{"text": "alpha beta END gamma"}]}],
        "generationConfig": {
            "temperature": 0.3,
            "topP": 0.9,
            "maxOutputTokens": 50,
            "stopSequences": ["END", "never"],
            "seed": 7,
            "presencePenalty": 0.5,
            "frequencyPenalty": -0.5,
        },
    }
    assert completion.choices[0].message.content == "alpha beta "
    assert completion.choices[0].finish_reason == "stop"


def test_a_single_stop_string(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    adapter.chat(chat_request("a b", stop="b"), MODEL)
    assert fake.last.body["generationConfig"] == {"stopSequences": ["b"]}


def test_json_object_mode(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    request = chat_request("reply in JSON", response_format={"type": "json_object"})
    completion = adapter.chat(request, MODEL)

    assert fake.last.body["generationConfig"] == {"responseMimeType": "application/json"}
    assert json.loads(completion.choices[0].message.content or "") == {"echo": "reply in JSON"}


def test_json_schema_mode(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "booking", "strict": True, "schema": MESSY_SCHEMA},
    }
    completion = adapter.chat(chat_request("book", response_format=response_format), MODEL)

    assert fake.last.body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": REDUCED_SCHEMA,
    }
    answer = json.loads(completion.choices[0].message.content or "")
    assert answer["guest"] == {"name": "sample"}
    assert answer["room"] == "single"


def test_a_json_schema_without_properties_is_plain_json_mode(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    schema = {"type": "object", "additionalProperties": True}
    response_format = {"type": "json_schema", "json_schema": {"name": "any", "schema": schema}}
    adapter.chat(chat_request("anything", response_format=response_format), MODEL)

    assert fake.last.body["generationConfig"] == {"responseMimeType": "application/json"}


CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CITY_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}}


@pytest.mark.parametrize(
    ("response_format", "ending"),
    [({"type": "json_object"}, "no code fence."), (CITY_FORMAT, json.dumps(CITY_SCHEMA))],
)
def test_json_output_beside_function_calling_is_asked_in_words_before_gemini_3(
    adapter: ProviderAdapter,
    fake: FakeGemini,
    response_format: dict[str, Any],
    ending: str,
) -> None:
    request = chat_request(
        {"role": "system", "content": "Be brief."},
        "Where is it sunny?",
        tools=[WEATHER_TOOL],
        response_format=response_format,
    )
    completion = adapter.chat(request, "gemini-2.5-flash")  # the fake refuses JSON mode here

    body = fake.last.body
    assert "generationConfig" not in body
    system, instruction = body["systemInstruction"]["parts"]
    assert system == {"text": "Be brief."}
    assert "reply with a single JSON object" in instruction["text"]
    assert instruction["text"].endswith(ending)
    assert completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("model", "tool_choice"), [("gemini-3-pro-preview", "auto"), ("gemini-2.5-flash", "none")]
)
def test_json_output_stays_in_the_config_where_gemini_takes_it(
    adapter: ProviderAdapter, fake: FakeGemini, model: str, tool_choice: str
) -> None:
    request = chat_request(
        "Where is it sunny?",
        tools=[WEATHER_TOOL],
        tool_choice=tool_choice,
        response_format=CITY_FORMAT,
    )
    completion = adapter.chat(request, model)

    assert "systemInstruction" not in fake.last.body
    assert fake.last.body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "OBJECT",
            "properties": {"city": {"type": "STRING"}},
            "required": ["city"],
        },
    }
    assert json.loads(completion.choices[0].message.content or "") == {"city": "sample"}


def test_penalties_go_to_gemini_2_0_only(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    request = chat_request("hi", presence_penalty=0.5, frequency_penalty=-0.5)
    adapter.chat(request, "gemini-2.5-flash")  # the fake refuses any penalty here
    assert "generationConfig" not in fake.last.body

    adapter.chat(request, "gemini-2.0-flash-lite")
    assert fake.last.body["generationConfig"] == {"presencePenalty": 0.5, "frequencyPenalty": -0.5}


@pytest.mark.parametrize(
    ("model", "effort", "thinking"),
    [
        ("gemini-3-pro-preview", "minimal", {"thinkingLevel": "low"}),
        ("gemini-3-pro-preview", "low", {"thinkingLevel": "low"}),
        ("gemini-3-pro-preview", "medium", {"thinkingLevel": "high"}),
        ("gemini-3-flash-preview", "high", {"thinkingLevel": "high"}),
        ("gemini-2.5-flash", "minimal", {"thinkingBudget": 0}),
        ("gemini-2.5-flash-lite", "low", {"thinkingBudget": 1024}),
        ("gemini-2.5-pro", "minimal", {"thinkingBudget": 128}),
        ("gemini-2.5-pro", "medium", {"thinkingBudget": 8192}),
        ("gemini-2.5-flash", "high", {"thinkingBudget": 24576}),
        ("gemini-2.0-flash", "high", None),
        ("gemini-2.5-flash", "extreme", None),
        ("gemini-2.5-flash", ["low"], None),
    ],
)
def test_reasoning_effort_becomes_thinking_config(
    adapter: ProviderAdapter, fake: FakeGemini, model: str, effort: Any, thinking: Any
) -> None:
    adapter.chat(chat_request("think", reasoning_effort=effort), model)
    assert fake.last.body.get("generationConfig", {}).get("thinkingConfig") == thinking


def _thinking(config: dict[str, Any]) -> dict[str, Any]:
    return {"generationConfig": {"thinkingConfig": config}}


PING = {"tools": [{"functionDeclarations": [{"name": "ping"}]}]}
JSON_MODE = {"generationConfig": {"responseMimeType": "application/json"}}
JSON_REFUSED = "Function calling with a response mime type: 'application/json' is unsupported"


@pytest.mark.parametrize(
    ("model", "fields", "refusal"),
    [
        ("gemini-2.5-flash", {**PING, **JSON_MODE}, JSON_REFUSED),
        (
            "gemini-2.0-flash",
            {**PING, **JSON_MODE, "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}},
            JSON_REFUSED,
        ),
        (
            "gemini-2.5-flash",
            {**PING, **JSON_MODE, "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}},
            None,
        ),
        ("gemini-3-pro-preview", {**PING, **JSON_MODE}, None),
        (
            "gemini-2.5-pro",
            {"generationConfig": {"presencePenalty": 0.5}},
            "Penalty is not enabled for models/gemini-2.5-pro",
        ),
        (
            "gemini-3-flash-preview",
            {"generationConfig": {"frequencyPenalty": -1}},
            "Penalty is not enabled for models/gemini-3-flash-preview",
        ),
        ("gemini-2.5-flash", {"generationConfig": {"presencePenalty": 0}}, None),
        ("gemini-2.0-flash", {"generationConfig": {"presencePenalty": 0.5}}, None),
        ("gemini-2.5-flash", _thinking({"thinkingLevel": "low"}), "Thinking level is not"),
        ("gemini-3-pro-preview", _thinking({"thinkingLevel": "medium"}), "level MEDIUM is not"),
        ("gemini-3-flash-preview", _thinking({"thinkingLevel": "minimal"}), None),
        ("gemini-3-pro-preview", _thinking({"thinkingLevel": "max"}), "Invalid value at"),
        ("gemini-3-pro-preview", _thinking({"thinkingEffort": "low"}), "Unknown name"),
        (
            "gemini-3-pro-preview",
            _thinking({"thinkingLevel": "high", "thinkingBudget": 1024}),
            "only set one of",
        ),
        ("gemini-2.5-pro", _thinking({"thinkingBudget": 0}), "Budget 0 is invalid"),
        ("gemini-2.5-flash-lite", _thinking({"thinkingBudget": 256}), "budget (256) is invalid"),
        ("gemini-2.5-flash", _thinking({"thinkingBudget": 32768}), "budget (32768) is invalid"),
        ("gemini-2.5-flash-lite", _thinking({"thinkingBudget": 0}), None),
        ("gemini-2.5-pro", _thinking({"thinkingBudget": -1}), None),
        ("gemini-2.0-flash", _thinking({"thinkingBudget": 1024}), "Thinking is not enabled"),
    ],
)
def test_the_fake_refuses_what_each_model_refuses(
    base_url: str, model: str, fields: dict[str, Any], refusal: str | None
) -> None:
    # Guards the tests above: what the adapter leaves out or rewords, Gemini would refuse.
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], **fields}
    response = post_raw(base_url, model, body)
    if refusal is None:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT"
        assert refusal in error["message"]


def test_n_becomes_candidate_count(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    completion = adapter.chat(chat_request("twice", n=2), MODEL)

    assert fake.last.body["generationConfig"] == {"candidateCount": 2}
    assert [(c.index, c.message.content) for c in completion.choices] == [
        (0, "twice"),
        (1, "twice"),
    ]

    chunks = collect(adapter.stream(chat_request("twice", n=2, stream=True), MODEL))
    by_index: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            by_index[choice.index] = by_index.get(choice.index, "") + (choice.delta.content or "")
    assert by_index == {0: "twice", 1: "twice"}
    assert [
        (c.index, c.finish_reason) for chunk in chunks for c in chunk.choices if c.finish_reason
    ] == [(0, "stop"), (1, "stop")]


def test_text_streams_in_several_chunks(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    said = "one two three four five six seven"
    chunks = collect(adapter.stream(chat_request(said, stream=True), MODEL))

    assert fake.last.method == "streamGenerateContent"
    assert fake.last.query == {"alt": "sse"}
    contents = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert contents == ["one two three ", "four five six ", "seven"]
    assert len({c.id for c in chunks}) == 1
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


# --------------------------------------------------------------------------- errors


def test_upstream_400_keeps_geminis_message(adapter: ProviderAdapter) -> None:
    # An empty message leaves nothing to send; Gemini refuses the empty conversation.
    with pytest.raises(UpstreamRejectedError) as raised:
        adapter.chat(chat_request(""), MODEL)
    assert "contents is not specified" in raised.value.message


def test_scripted_400(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    fake.script.append(Fault(status=400, message="Request contains an invalid argument."))
    with pytest.raises(UpstreamRejectedError, match="Request contains an invalid argument"):
        adapter.chat(chat_request("hi"), MODEL)


@pytest.mark.parametrize(
    ("api_key", "status"),
    [("AIza-wrong-key-0123456789", 400), (None, 403)],
)
def test_a_refused_key_is_an_auth_error_without_the_key(
    base_url: str, api_key: str | None, status: int
) -> None:
    with (
        closing(make_adapter(base_url, api_key)) as adapter,
        pytest.raises(UpstreamAuthError) as raised,
    ):
        adapter.chat(chat_request("hi"), MODEL)
    assert raised.value.upstream_status == status
    assert "AIza-wrong" not in raised.value.message


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_auth_errors_and_the_key_is_redacted(
    adapter: ProviderAdapter, fake: FakeGemini, status: int
) -> None:
    fake.script.append(Fault(status=status, message=f"Permission denied for API key {API_KEY}."))
    with pytest.raises(UpstreamAuthError) as raised:
        adapter.chat(chat_request("hi"), MODEL)
    assert raised.value.upstream_status == status
    assert API_KEY not in raised.value.message
    assert "refused the router's credentials" in raised.value.message


def test_a_failed_precondition_is_the_providers_failure(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    # Gemini refuses some regions and unbilled accounts with 400 FAILED_PRECONDITION: the
    # request is fine and another provider may serve it, so it is no client error.
    fake.script.append(
        Fault(
            status=400,
            message="User location is not supported for the API use.",
            error_type="FAILED_PRECONDITION",
        )
    )
    with pytest.raises(UpstreamError, match="User location is not supported") as raised:
        adapter.chat(chat_request("hi"), MODEL)
    assert type(raised.value) is UpstreamError
    assert raised.value.upstream_status == 400


def test_429_is_a_rate_limit_with_geminis_retry_delay(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    fake.script.append(Fault(status=429, retry_after=37))
    with pytest.raises(UpstreamRateLimitError) as raised:
        adapter.chat(chat_request("hi"), MODEL)
    assert raised.value.retry_after == 37.0
    assert "exceeded your current quota" in raised.value.message


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_upstream_errors(
    adapter: ProviderAdapter, fake: FakeGemini, status: int
) -> None:
    fake.script.append(Fault(status=status))
    with pytest.raises(UpstreamError) as raised:
        adapter.chat(chat_request("hi"), MODEL)
    assert type(raised.value) is UpstreamError
    assert raised.value.upstream_status == status
    assert raised.value.retryable


def test_an_unreadable_answer_is_an_upstream_error(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    fake.reply_next({"candidates": "not a list"})
    with pytest.raises(UpstreamError, match="not a GenerateContentResponse"):
        adapter.chat(chat_request("hi"), MODEL)


def test_stream_errors_before_the_first_chunk_raise_from_stream(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    fake.script.append(Fault(status=503))
    with pytest.raises(UpstreamError, match="overloaded"):
        adapter.stream(chat_request("hi", stream=True), MODEL)

    fake.script.append(Fault(error_event_after=0, status=500))  # the very first event
    with pytest.raises(UpstreamError, match="internal error") as raised:
        adapter.stream(chat_request("hi", stream=True), MODEL)
    assert raised.value.upstream_status == 500


def test_an_error_event_mid_stream(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    fake.script.append(Fault(error_event_after=1, status=503))
    stream = adapter.stream(chat_request("one two three four five", stream=True), MODEL)
    received: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamError, match="overloaded") as raised:
        received.extend(stream)
    assert streamed_text(received) == "one two three "
    assert raised.value.upstream_status == 503
    assert stream.closed


def test_a_broken_connection_mid_stream(adapter: ProviderAdapter, fake: FakeGemini) -> None:
    fake.script.append(Fault(drop_after=1))
    stream = adapter.stream(chat_request("one two three four five", stream=True), MODEL)
    with pytest.raises(UpstreamError, match="broke off"):
        list(stream)


def test_a_stream_cut_before_its_finish_is_an_error(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    fake.reply_next(candidate([{"text": "half"}], finish=None))
    stream = adapter.stream(chat_request("hi", stream=True), MODEL)
    with pytest.raises(UpstreamError, match="ended before it finished"):
        list(stream)


def test_closing_a_stream_early_closes_the_connection(
    adapter: ProviderAdapter, fake: FakeGemini
) -> None:
    fake.script.append(Fault(chunk_pause=0.02))
    stream = adapter.stream(chat_request(" ".join(["word"] * 600), stream=True), MODEL)
    next(stream), next(stream)
    stream.close()

    assert fake.abandoned.wait(timeout=5)  # the server saw the client go
    assert list(stream) == []

"""The built-in tool loop in process: the router runs the tools a model calls and asks it
again, streamed and not, billing every round and counting the exchange once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import pytest

from llmrouter import ChatCompletion, InsufficientCreditsError, Router
from llmrouter.billing import reservation_nanos
from llmrouter.router import ChatResult
from llmrouter.schemas import parse_chat_request
from llmrouter.tool_exchange import with_builtin_tools
from tests.conftest import UPSTREAM_KEY, gateway_config
from tests.upstreams.openai_server import FakeOpenAI

STOCK = {"item": "widget", "in_stock": 7}
ASK = [{"role": "user", "content": "how many widgets? use stock_level"}]


def stock_router(
    make_router: Callable[..., Router], config: dict[str, Any] | None = None
) -> Router:
    router = make_router(config or gateway_config())

    @router.tool
    def stock_level(item: str = "widget") -> dict[str, Any]:
        """How many of an item are in stock."""
        return {**STOCK, "item": item}

    return router


def complete(router: Router, key: str, **body: Any) -> ChatResult:
    return router.complete({"model": "echo#echo", "messages": ASK, **body}, api_key=key)


def rows_of(router: Router, request_id: str) -> list[Any]:
    return router.store.ledger_rows(request_id)


def test_the_answer_is_built_from_the_tools_result(make_router: Callable[..., Router]) -> None:
    router = stock_router(make_router)
    key = router.create_key("k")[1]
    result = complete(router, key)
    completion = result.body
    assert isinstance(completion, ChatCompletion)
    choice = completion.choices[0]
    assert choice.message.content == "stock_level returned: " + json.dumps(
        STOCK, separators=(",", ":")
    )
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    extension = completion.model_extra["llmrouter"]  # type: ignore[index]
    assert extension["rounds"] == 2
    turn, answer = extension["builtin_messages"]
    assert turn["role"] == "assistant" and "content" not in turn
    (call,) = turn["tool_calls"]
    assert call["function"]["name"] == "stock_level"
    assert answer == {
        "role": "tool",
        "tool_call_id": call["id"],
        "content": json.dumps(STOCK, separators=(",", ":")),
    }
    rows = rows_of(router, result.request_id)
    assert [(r.round, r.status) for r in rows] == [(1, "ok"), (2, "ok")]
    assert result.cost_nanos == sum(r.cost_nanos for r in rows) > 0
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == sum(r.prompt_tokens for r in rows)
    assert usage.completion_tokens == sum(r.completion_tokens for r in rows)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_a_stream_is_one_openai_stream_of_the_final_answer(
    make_router: Callable[..., Router],
) -> None:
    router = stock_router(make_router)
    key = router.create_key("k")[1]
    expected = complete(router, key).body
    assert isinstance(expected, ChatCompletion)
    result = complete(router, key, stream=True, stream_options={"include_usage": True})
    chunks = list(result.body)  # type: ignore[arg-type]
    assert len({c.id for c in chunks}) == 1
    choices = [choice for c in chunks for choice in c.choices]
    assert [c.finish_reason for c in choices if c.finish_reason] == ["stop"]
    assert choices[-1].finish_reason == "stop"
    assert not any(c.delta.tool_calls for c in choices)
    assert sum(1 for c in choices if c.delta.role) == 1
    text = "".join(c.delta.content or "" for c in choices)
    assert text == expected.choices[0].message.content
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    rows = rows_of(router, result.request_id)
    assert [(r.round, r.status) for r in rows] == [(1, "ok"), (2, "ok")]
    assert usage_chunks[0].usage.prompt_tokens == sum(r.prompt_tokens for r in rows)
    assert usage_chunks[0].usage.completion_tokens == sum(r.completion_tokens for r in rows)
    final = next(c for c in chunks if any(ch.finish_reason for ch in c.choices))
    assert final.model_extra["llmrouter"]["rounds"] == 2  # type: ignore[index]


def test_a_stream_without_usage_asked_sends_none(make_router: Callable[..., Router]) -> None:
    router = stock_router(make_router)
    key = router.create_key("k")[1]
    chunks = list(complete(router, key, stream=True).body)  # type: ignore[arg-type]
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_exchange_uses_one_allowance_unit(make_router: Callable[..., Router]) -> None:
    router = stock_router(make_router)
    key = router.create_key("k")[1]
    first = complete(router, key)
    second = router.complete(
        {"model": "echo#echo", "messages": [{"role": "user", "content": "hi"}]}, api_key=key
    )
    assert int(first.rate_limit.headers()["X-RateLimit-Remaining"]) == 199
    assert int(second.rate_limit.headers()["X-RateLimit-Remaining"]) == 198
    (day,) = router.usage()
    assert day.requests == 2


def test_a_paid_exchange_is_charged_the_sum_of_its_rounds(
    make_router: Callable[..., Router],
) -> None:
    router = stock_router(make_router)
    record, key = router.create_key("paid", credits="1")
    result = router.complete({"model": "echo#echo-premium", "messages": ASK}, api_key=key)
    rows = rows_of(router, result.request_id)
    assert [r.round for r in rows] == [1, 2]
    assert all(r.admission == "credits" for r in rows)
    charged = sum(r.charged_nanos for r in rows)
    assert charged == result.cost_nanos == sum(r.cost_nanos for r in rows) > 0
    assert router.get_key(record.id).balance_nanos == 1_000_000_000 - charged


def test_a_balance_that_cannot_cover_the_next_round_stops_the_loop(
    make_router: Callable[..., Router],
) -> None:
    router = stock_router(make_router)
    model = router.catalog.resolve("echo#echo-premium").model
    first = with_builtin_tools(
        parse_chat_request({"model": "echo#echo-premium", "messages": ASK}),
        [router.tools.get("stock_level")],  # type: ignore[list-item]
    )
    enough_for_one = reservation_nanos(first, model)
    record, key = router.create_key("paid", credits=f"{enough_for_one / 1e9:.9f}")
    assert router.get_key(record.id).balance_nanos == enough_for_one
    with pytest.raises(InsufficientCreditsError, match="round 2"):
        router.chat(model="echo#echo-premium", messages=ASK, api_key=key)
    ledger = router.store.tables.ledger
    with router.store.engine.connect() as conn:
        (request_id,) = conn.execute(
            ledger.select().with_only_columns(ledger.c.request_id)
        ).scalars()
    rows = rows_of(router, request_id)
    assert [(r.round, r.status) for r in rows] == [(1, "ok")]
    balance = router.get_key(record.id).balance_nanos
    assert balance == enough_for_one - rows[0].charged_nanos >= 0


def test_a_tool_that_raises_becomes_a_result_without_traceback_or_secret(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router = make_router(gateway_config(fake_openai.url))

    @router.tool
    def stock_level() -> str:
        """Stock."""
        raise RuntimeError(f"cannot connect with key {UPSTREAM_KEY}")

    key = router.create_key("k")[1]
    completion = router.chat(model="echo#echo", messages=ASK, api_key=key)
    content = completion.choices[0].message.content or ""
    assert "The tool stock_level failed: RuntimeError: cannot connect with key" in content
    assert UPSTREAM_KEY not in content and UPSTREAM_KEY[-12:] not in content
    assert "[redacted]" in content
    assert "Traceback" not in content and "line " not in content


def test_a_tool_past_its_timeout_becomes_a_result(make_router: Callable[..., Router]) -> None:
    router = make_router(gateway_config())
    finished = threading.Event()

    @router.tool(timeout=0.2)
    def stock_level() -> str:
        """Stock."""
        time.sleep(3)
        finished.set()
        return "late"

    key = router.create_key("k")[1]
    completion = router.chat(model="echo#echo", messages=ASK, api_key=key)
    assert completion.choices[0].message.content == (
        "stock_level returned: The tool stock_level did not answer within 0.2 seconds."
    )
    assert not finished.is_set()


def test_bad_arguments_become_a_result_naming_them(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router = make_router(gateway_config(fake_openai.url))
    ran = []

    @router.tool
    def stock_level(item: Literal["widget", "gadget"]) -> str:
        """Stock."""
        ran.append(item)
        return "never"

    key = router.create_key("k")[1]
    completion = router.chat(model="OpenAI#gpt-4o-mini", messages=ASK, api_key=key)
    content = completion.choices[0].message.content or ""
    assert content.startswith("The tool said: ")
    assert "item" in content and "widget" in content  # names the parameter and what fits
    assert ran == []


def test_builtin_tools_false_offers_none(make_router: Callable[..., Router]) -> None:
    router = stock_router(make_router)
    key = router.create_key("k")[1]
    result = complete(router, key, llmrouter={"builtin_tools": False})
    completion = result.body
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == ASK[0]["content"]
    assert [r.round for r in rows_of(router, result.request_id)] == [1]


def test_parallel_calls_run_at_once(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router = make_router(gateway_config(fake_openai.url))
    both = threading.Barrier(2, timeout=3)

    @router.tool
    def alpha() -> str:
        """A."""
        both.wait()
        return "a"

    @router.tool
    def beta() -> str:
        """B."""
        both.wait()
        return "b"

    key = router.create_key("k")[1]
    completion = router.chat(
        model="OpenAI#gpt-4o-mini",
        messages=[{"role": "user", "content": "use alpha and beta"}],
        api_key=key,
    )
    assert completion.choices[0].message.content == "The tool said: a; b"


def test_a_mixed_turn_returns_only_the_clients_calls(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router = make_router(gateway_config(fake_openai.url))

    @router.tool
    def stock_level() -> str:
        """Stock."""
        return "7 widgets"

    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
    key = router.create_key("k")[1]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "use stock_level and get_weather"}
    ]
    completion = router.chat(
        model="OpenAI#gpt-4o-mini", messages=messages, api_key=key, tools=[weather]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls or []] == ["get_weather"]
    builtin = completion.model_extra["llmrouter"]["builtin_messages"]  # type: ignore[index]
    assert [m["role"] for m in builtin] == ["assistant", "tool"]
    assert builtin[1]["content"] == "7 widgets"
    # The conversation the client keeps: the built-in exchange, then its own call.
    (call,) = choice.message.tool_calls or []
    messages += [
        *builtin,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    answer = router.chat(
        model="OpenAI#gpt-4o-mini", messages=messages, api_key=key, tools=[weather]
    )
    assert answer.choices[0].message.content == "The tool said: sunny"
    # A client that ignores the built-in exchange sends a valid conversation too.
    shorter = [messages[0], *messages[-2:]]
    again = router.chat(model="OpenAI#gpt-4o-mini", messages=shorter, api_key=key, tools=[weather])
    assert again.choices[0].message.content == "The tool said: sunny"


def test_past_max_tool_rounds_the_answer_ends_with_length(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router = make_router(gateway_config(fake_openai.url, tools={"max_tool_rounds": 2}))
    calls = []

    @router.tool
    def stock_level() -> str:
        """Stock."""
        calls.append(1)
        return str(len(calls))

    key = router.create_key("k")[1]
    result = router.complete(
        {
            "model": "OpenAI#gpt-4o-mini",
            "messages": [
                {"role": "user", "content": "use stock_level then stock_level then stock_level"}
            ],
        },
        api_key=key,
    )
    completion = result.body
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.tool_calls is None
    assert calls == [1]  # the second round's calls are not run: no round is left to read them
    assert [r.round for r in rows_of(router, result.request_id)] == [1, 2]
    assert len(fake_openai.requests) == 2


def test_a_required_tool_choice_holds_for_the_first_round_only(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router = make_router(gateway_config(fake_openai.url))

    @router.tool
    def stock_level() -> str:
        """Stock."""
        return "7"

    key = router.create_key("k")[1]
    completion = router.chat(
        model="OpenAI#gpt-4o-mini",
        messages=[{"role": "user", "content": "anything"}],
        api_key=key,
        tool_choice="required",
    )
    assert completion.choices[0].message.content == "The tool said: 7"
    first, second = fake_openai.requests
    assert first["tool_choice"] == "required"
    assert second["tool_choice"] == "auto"  # asked again, a model need not call again

"""The built-in tool loop at its edges: a stream closed before it started or between
rounds, tools that hang, flood, recurse, exit or return what no provider takes, an upstream
answer without choices, a stream sending a call's name in pieces, a forced built-in tool,
and a concurrent request of the same key while a paid exchange runs its tools."""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llmrouter import ChatCompletion, InsufficientCreditsError, Router
from llmrouter.errors import LLMRouterError
from tests.conftest import gateway_config, wait_for
from tests.upstreams.faults import Fault
from tests.upstreams.openai_server import FakeOpenAI

ASK = [{"role": "user", "content": "how many widgets? use stock_level"}]
GPT = "OpenAI#gpt-4o-mini"


def stock_router(
    make_router: Callable[..., Router], config: dict[str, Any] | None = None
) -> Router:
    router = make_router(config or gateway_config())

    @router.tool
    def stock_level() -> str:
        """Stock."""
        return "7 widgets"

    return router


def statuses(router: Router, request_id: str) -> list[tuple[int, str]]:
    return [(r.round, r.status) for r in router.store.ledger_rows(request_id)]


def test_a_stream_closed_before_its_first_chunk_settles_its_round(
    make_router: Callable[..., Router],
) -> None:
    router = stock_router(make_router)
    record, key = router.create_key("paid", credits="1")
    for close in ("close", "with", "drop"):
        result = router.complete(
            {"model": "echo#echo-premium", "messages": ASK, "stream": True}, api_key=key
        )
        if close == "close":
            result.body.close()  # type: ignore[union-attr]
        elif close == "with":
            with result.body:  # type: ignore[union-attr]
                pass
        else:
            request_id = result.request_id
            del result
            gc.collect()
            assert wait_for(lambda r=request_id: statuses(router, r) == [(1, "failed")])
            continue
        assert statuses(router, result.request_id) == [(1, "failed")]
    assert wait_for(lambda: router.get_key(record.id).balance_nanos == 1_000_000_000)


def test_a_stream_closed_at_a_progress_chunk_hands_back_the_next_round(
    make_router: Callable[..., Router],
) -> None:
    router = stock_router(make_router)
    record, key = router.create_key("paid", credits="1")
    result = router.complete(
        {
            "model": "echo#echo-premium",
            "messages": ASK,
            "stream": True,
            "llmrouter": {"tool_progress": True},
        },
        api_key=key,
    )
    stream = result.body
    for chunk in stream:  # type: ignore[union-attr]
        if chunk.model_extra and "llmrouter" in chunk.model_extra:
            break
    stream.close()  # type: ignore[union-attr]
    rows = router.store.ledger_rows(result.request_id)
    assert [(r.round, r.status) for r in rows] == [(1, "ok")]
    assert router.get_key(record.id).balance_nanos == 1_000_000_000 - rows[0].charged_nanos


def test_hung_tools_do_not_starve_other_requests_tools(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(gateway_config())
    release = threading.Event()

    @router.tool(timeout=0.05)
    def hang() -> str:
        """Hangs."""
        release.wait(30)
        return "late"

    @router.tool
    def fast() -> str:
        """Fast."""
        return "quick"

    key = router.create_key("k")[1]
    try:
        for _ in range(40):  # more than any worker pool the loop once had
            answer = router.chat(
                model="echo#echo", messages=[{"role": "user", "content": "use hang"}], api_key=key
            )
            assert "did not answer within 0.05 seconds" in (answer.choices[0].message.content or "")
        answer = router.chat(
            model="echo#echo", messages=[{"role": "user", "content": "use fast"}], api_key=key
        )
        assert answer.choices[0].message.content == "fast returned: quick"
    finally:
        release.set()


def test_a_tool_may_ask_the_router_itself_under_load(make_router: Callable[..., Router]) -> None:
    router = make_router(gateway_config(tools={"timeout_seconds": 10}))
    key = router.create_key("k")[1]

    @router.tool
    def leaf() -> str:
        """Leaf."""
        return "leaf ok"

    @router.tool
    def ask_again() -> str:
        """Asks the router."""
        inner = router.chat(
            model="echo#echo", messages=[{"role": "user", "content": "use leaf"}], api_key=key
        )
        return inner.choices[0].message.content or ""

    def ask(_: int) -> str:
        answer = router.chat(
            model="echo#echo", messages=[{"role": "user", "content": "use ask_again"}], api_key=key
        )
        return answer.choices[0].message.content or ""

    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(ask, range(40)))
    assert answers == ["ask_again returned: leaf returned: leaf ok"] * 40


def test_a_tool_that_exits_or_cannot_say_why_becomes_a_result(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(gateway_config())

    class Unspeakable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no words")

    @router.tool
    def quits() -> str:
        """Exits."""
        raise SystemExit(2)

    @router.tool
    def mute() -> str:
        """Raises what cannot be read."""
        raise Unspeakable

    key = router.create_key("k")[1]
    for name, said in (("quits", "SystemExit: 2"), ("mute", "Unspeakable")):
        answer = router.chat(
            model="echo#echo", messages=[{"role": "user", "content": f"use {name}"}], api_key=key
        )
        assert (
            answer.choices[0].message.content == f"{name} returned: The tool {name} failed: {said}"
        )


def test_a_result_no_provider_takes_is_made_readable(make_router: Callable[..., Router]) -> None:
    router = make_router(gateway_config())

    @router.tool
    def listing() -> dict[str, Any]:
        """File names, one of them not UTF-8."""
        return {"files": ["a.txt", "b\udcff.txt"]}

    key = router.create_key("k")[1]
    for stream in (False, True):
        result = router.complete(
            {
                "model": "echo#echo",
                "messages": [{"role": "user", "content": "use listing"}],
                "stream": stream,
            },
            api_key=key,
        )
        if stream:
            text = "".join(
                c.delta.content or ""
                for chunk in result.body
                for c in chunk.choices  # type: ignore[union-attr]
            )
        else:
            assert isinstance(result.body, ChatCompletion)
            text = result.body.choices[0].message.content or ""
        assert text == 'listing returned: {"files":["a.txt","b?.txt"]}'


def test_an_answer_without_choices_is_passed_on(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router = stock_router(make_router, gateway_config(fake_openai.url))
    key = router.create_key("k")[1]
    usage = {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10}
    raw = {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini"}
    fake_openai.script.append(Fault(raw=json.dumps({**raw, "choices": [], "usage": usage})))
    result = router.complete({"model": GPT, "messages": ASK}, api_key=key)
    assert isinstance(result.body, ChatCompletion)
    assert result.body.choices == []
    assert statuses(router, result.request_id) == [(1, "ok")]


def _sse(delta: dict[str, Any], finish: str | None = None) -> str:
    chunk = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return "data: " + json.dumps(chunk) + "\n\n"


def test_a_built_in_calls_name_sent_in_pieces_never_reaches_the_client(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router = stock_router(make_router, gateway_config(fake_openai.url))
    key = router.create_key("k")[1]

    def call(index: int, **function: str) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, "function": function}]}

    first = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "stock"}}
    client = {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get"}}
    raw = (
        _sse({"role": "assistant", "content": ""})
        + _sse({"tool_calls": [first]})
        + _sse(call(0, name="_level", arguments="{}"))
        + _sse({"tool_calls": [client]})
        + _sse(call(1, name="_weather"))
        + _sse({}, "tool_calls")
        + "data: [DONE]\n\n"
    )
    fake_openai.script.append(Fault(raw=raw))
    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    result = router.complete(
        {"model": GPT, "messages": ASK, "stream": True, "tools": [weather]}, api_key=key
    )
    deltas = [d for chunk in result.body for c in chunk.choices for d in c.delta.tool_calls or []]  # type: ignore[union-attr]
    names = "".join(d.function.name or "" for d in deltas if d.function is not None)
    assert names == "get_weather"
    assert {d.index for d in deltas} == {0}
    assert {d.id for d in deltas if d.id} == {"call_b"}


def test_a_named_tool_choice_may_force_a_built_in_tool(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router = stock_router(make_router, gateway_config(fake_openai.url))
    key = router.create_key("k")[1]
    forced = {"type": "function", "function": {"name": "stock_level"}}
    answer = router.chat(
        model=GPT, messages=[{"role": "user", "content": "hi"}], api_key=key, tool_choice=forced
    )
    assert answer.choices[0].message.content == "The tool said: 7 widgets"
    assert fake_openai.requests[0]["tool_choice"] == forced
    assert fake_openai.requests[1]["tool_choice"] == "auto"
    try:
        router.chat(
            model=GPT,
            messages=ASK,
            api_key=key,
            tool_choice={"type": "function", "function": {"name": "nowhere"}},
        )
    except LLMRouterError as exc:
        assert exc.status == 400 and exc.param == "tool_choice" and "nowhere" in exc.message
    else:
        raise AssertionError("a tool_choice naming no tool was accepted")


def test_another_request_of_the_key_cannot_take_the_exchanges_money_between_rounds(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(gateway_config())
    record, key = router.create_key("paid", credits="0.007")
    outcomes: list[str] = []

    @router.tool
    def stock_level() -> str:
        """Meanwhile, the same key asks for a paid answer of its own."""
        try:
            router.chat(
                model="echo#echo-premium",
                messages=[{"role": "user", "content": "x " * 20}],
                api_key=key,
            )
            outcomes.append("answered")
        except InsufficientCreditsError:
            outcomes.append("402")
        return "7 widgets"

    result = router.complete({"model": "echo#echo-premium", "messages": ASK}, api_key=key)
    assert isinstance(result.body, ChatCompletion)
    assert result.body.choices[0].message.content == "stock_level returned: 7 widgets"
    assert statuses(router, result.request_id) == [(1, "ok"), (2, "ok")]
    assert outcomes in (["answered"], ["402"])
    assert router.get_key(record.id).balance_nanos >= 0

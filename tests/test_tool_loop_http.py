"""The built-in tool loop over real HTTP, as clients that never heard of it see it: the
official ``openai`` SDK (plain, streamed, its stream helper) and LangChain's
``ChatOpenAI`` parse the exchange as one answer; the ``llmrouter`` request object's
mistakes are 400s in OpenAI's shape naming the field; a balance that cannot pay for the
next round stops the loop with a 402, or an error event once a stream has started."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from langchain_openai import ChatOpenAI
from sqlalchemy import select

from llmrouter import Router
from llmrouter.billing import reservation_nanos
from llmrouter.schemas import parse_chat_request
from llmrouter.tool_exchange import with_builtin_tools
from tests.conftest import gateway_config
from tests.upstreams.openai_server import FakeOpenAI

MODEL = "echo#echo"
QUESTION = "how many widgets? use stock_level"
ASK = [{"role": "user", "content": QUESTION}]
#: what the echo provider answers once stock_level has run
ANSWER = "stock_level returned: widget: 7 in stock"


@pytest.fixture
def router(make_router: Callable[..., Router], fake_openai: FakeOpenAI) -> Router:
    """The conftest's router (served by ``live_api``) with one built-in tool."""
    router = make_router(gateway_config(fake_openai.url))

    @router.tool
    def stock_level(item: str = "widget") -> str:
        """How many of an item are in stock."""
        return f"{item}: 7 in stock"

    return router


@pytest.fixture
def client(live_api: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_api + "/v1", api_key=api_key, max_retries=0)


def last_exchange_rows(router: Router) -> list[Any]:
    """The ledger rows of the latest exchange (this test's router has seen only its own)."""
    c = router.store.tables.ledger.c
    with router.store.engine.connect() as conn:
        request_id = conn.execute(select(c.request_id).order_by(c.id.desc()).limit(1)).scalar_one()
    return router.store.ledger_rows(request_id)


def assert_usage_is_the_sum(usage: Any, rows: list[Any]) -> None:
    assert usage.prompt_tokens == sum(r.prompt_tokens for r in rows)
    assert usage.completion_tokens == sum(r.completion_tokens for r in rows)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def progress_of(chunk: Any) -> dict[str, Any] | None:
    return ((chunk.model_extra or {}).get("llmrouter") or {}).get("tool_round")


# --------------------------------------------------------------------------- the SDK


def test_an_answer_built_from_the_tool_with_one_allowance_unit(
    client: openai.OpenAI, router: Router
) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK)
    completion = raw.parse()

    choice = completion.choices[0]
    assert choice.message.content == ANSWER
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    extension = (completion.model_extra or {})["llmrouter"]
    assert extension["rounds"] == 2
    assert [m["role"] for m in extension["builtin_messages"]] == ["assistant", "tool"]
    rows = last_exchange_rows(router)
    assert [(r.round, r.status) for r in rows] == [(1, "ok"), (2, "ok")]
    assert_usage_is_the_sum(completion.usage, rows)
    daily = router.settings.quota.daily_requests
    assert int(raw.headers["X-RateLimit-Remaining"]) == daily - 1  # two rounds, one unit


def test_a_stream_is_one_openai_stream_of_the_answer(client: openai.OpenAI, router: Router) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=ASK, stream=True, stream_options={"include_usage": True}
        )
    )

    assert len({chunk.id for chunk in chunks}) == 1
    choices = [choice for chunk in chunks for choice in chunk.choices]
    assert [c.finish_reason for c in choices if c.finish_reason] == ["stop"]
    assert choices[-1].finish_reason == "stop"
    assert not any(c.delta.tool_calls for c in choices)  # the built-in call is not the client's
    assert sum(1 for c in choices if c.delta.role) == 1
    assert "".join(c.delta.content or "" for c in choices) == ANSWER
    usages = [chunk for chunk in chunks if chunk.usage is not None]
    assert len(usages) == 1 and usages[0] is chunks[-1] and not chunks[-1].choices
    rows = last_exchange_rows(router)
    assert [(r.round, r.status) for r in rows] == [(1, "ok"), (2, "ok")]
    assert_usage_is_the_sum(usages[0].usage, rows)
    assert not any(progress_of(chunk) for chunk in chunks)  # not asked for


@pytest.mark.parametrize("progress", [False, True], ids=["plain", "with-progress"])
def test_the_sdks_stream_helper_parses_the_exchange(client: openai.OpenAI, progress: bool) -> None:
    extra = {"llmrouter": {"tool_progress": True}} if progress else None
    with client.chat.completions.stream(model=MODEL, messages=ASK, extra_body=extra) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()

    assert final.choices[0].message.content == ANSWER
    assert final.choices[0].finish_reason == "stop"
    assert not final.choices[0].message.tool_calls
    assert events.count("content.done") == 1
    assert not any(name.startswith("tool_calls.") for name in events)


def test_progress_chunks_follow_each_round_of_builtin_calls_when_asked(
    client: openai.OpenAI,
) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "use stock_level then stock_level"}],
            stream=True,
            extra_body={"llmrouter": {"tool_progress": True}},
        )
    )

    progress = [(n, progress_of(chunk)) for n, chunk in enumerate(chunks) if progress_of(chunk)]
    assert [p["round"] for _, p in progress] == [1, 2]
    for _, p in progress:
        (call,) = p["tool_calls"]
        assert call["name"] == "stock_level" and call["ok"] is True and call["id"]
    for n, _ in progress:  # an empty delta: nothing a parser would add to the answer
        (choice,) = chunks[n].choices
        assert not choice.delta.content and not choice.delta.tool_calls
        assert choice.finish_reason is None
    text = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    assert text == ANSWER
    assert progress[-1][0] < next(
        n for n, chunk in enumerate(chunks) if any(c.delta.content for c in chunk.choices)
    )  # the progress came before the answer's text


# --------------------------------------------------------------------------- LangChain


def test_langchain_invokes_and_streams_the_exchange(
    live_api: str, api_key: str, router: Router
) -> None:
    llm = ChatOpenAI(
        base_url=live_api + "/v1", api_key=api_key, model=MODEL, max_retries=0, stream_usage=True
    )

    answer = llm.invoke(QUESTION)
    assert answer.content == ANSWER
    assert answer.tool_calls == []  # the built-in call was the router's
    chunks = list(llm.stream(QUESTION))
    assert "".join(str(chunk.content) for chunk in chunks) == ANSWER
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.tool_call_chunks == []
    assert total.response_metadata.get("finish_reason") == "stop"
    rows = last_exchange_rows(router)
    assert total.usage_metadata is not None  # the one usage chunk: the sum of the rounds
    assert total.usage_metadata["input_tokens"] == sum(r.prompt_tokens for r in rows)
    assert total.usage_metadata["output_tokens"] == sum(r.completion_tokens for r in rows)


# --------------------------------------------------------------------------- refusals


def assert_openai_error(exc: openai.APIStatusError, status: int, param: str) -> dict[str, Any]:
    """``exc``'s body is OpenAI's error shape, blaming ``param``; returns the error."""
    assert exc.status_code == status
    body = exc.response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    return error  # type: ignore[no-any-return]


def test_a_client_tool_named_like_a_builtin_one_is_a_400_naming_it(
    client: openai.OpenAI,
) -> None:
    clash = {"type": "function", "function": {"name": "stock_level", "parameters": {}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK, tools=[clash])  # type: ignore[list-item]

    error = assert_openai_error(caught.value, 400, "tools")
    assert error["code"] == "tool_name_clash"
    assert "'stock_level'" in error["message"]


def test_an_unknown_builtin_tool_asked_for_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=ASK, extra_body={"llmrouter": {"builtin_tools": ["nope"]}}
        )

    error = assert_openai_error(caught.value, 400, "llmrouter.builtin_tools")
    assert error["code"] == "builtin_tool_unavailable"
    assert "'nope'" in error["message"]


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"unknown": True}, "llmrouter.unknown"),
        ({"tool_progress": "yes"}, "llmrouter.tool_progress"),
        ({"builtin_tools": 3}, "llmrouter.builtin_tools"),
        ({"builtin_tools": [7]}, "llmrouter.builtin_tools[0]"),
        ("all", "llmrouter"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_bad_llmrouter_object_is_a_400_naming_the_field(
    client: openai.OpenAI, router: Router, options: Any, param: str, stream: bool
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=ASK, stream=stream, extra_body={"llmrouter": options}
        )

    error = assert_openai_error(caught.value, 400, param)
    assert f"'{param}'" in error["message"]
    assert router.usage() == []  # refused before admission: nothing counted


# --------------------------------------------------------------------------- money


@pytest.fixture
def thin_key(router: Router) -> tuple[str, str, int]:
    """A paid key whose balance holds round 1's reservation and nothing more: (id,
    secret, balance in nano-dollars)."""
    model = router.catalog.resolve("echo#echo-premium").model
    first = with_builtin_tools(
        parse_chat_request({"model": "echo#echo-premium", "messages": ASK}),
        [router.tools.get("stock_level")],  # type: ignore[list-item]
    )
    enough_for_one = reservation_nanos(first, model)
    record, secret = router.create_key("thin", credits=f"{enough_for_one / 1e9:.9f}")
    assert router.get_key(record.id).balance_nanos == enough_for_one
    return record.id, secret, enough_for_one


def assert_round_one_paid_and_no_debt(router: Router, key_id: str, balance: int) -> None:
    rows = last_exchange_rows(router)
    assert [(r.round, r.status, r.admission) for r in rows] == [(1, "ok", "credits")]
    left = router.get_key(key_id).balance_nanos
    assert left == balance - rows[0].charged_nanos >= 0


def test_a_balance_short_of_round_two_is_a_402(
    live_api: str, router: Router, thin_key: tuple[str, str, int]
) -> None:
    key_id, secret, balance = thin_key
    paid = openai.OpenAI(base_url=live_api + "/v1", api_key=secret, max_retries=0)

    with pytest.raises(openai.APIStatusError) as caught:
        paid.chat.completions.create(model="echo#echo-premium", messages=ASK)

    assert caught.value.status_code == 402
    assert caught.value.code == "insufficient_credits"
    assert "round 2" in caught.value.message
    assert_round_one_paid_and_no_debt(router, key_id, balance)


def test_a_stream_short_of_round_two_ends_with_an_error_event(
    live_api: str, router: Router, thin_key: tuple[str, str, int]
) -> None:
    key_id, secret, balance = thin_key
    paid = openai.OpenAI(base_url=live_api + "/v1", api_key=secret, max_retries=0)
    stream = paid.chat.completions.create(model="echo#echo-premium", messages=ASK, stream=True)
    received = []

    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:  # the stream had started (200): the error comes as an event
            received.append(chunk)

    assert caught.value.code == "insufficient_credits"
    assert not isinstance(caught.value, openai.APIStatusError)
    assert not any(c.finish_reason or c.delta.tool_calls for r in received for c in r.choices)
    assert_round_one_paid_and_no_debt(router, key_id, balance)

"""The built-in tool loop through every chat adapter, end to end against each provider's
loopback fake, streamed and not (issue 11, item 6).

Each fake refuses what its provider refuses (tool-result ids, their order, a result
answering no call), so a loop that finishes here sent every round in a shape the
provider takes. The fakes call tools in stages (see ``tests/test_staged_tool_calls.py``):
"use alpha then beta" calls alpha, then beta, then answers, three rounds.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from llmrouter import ChatCompletion, Router
from llmrouter.router import ChatResult
from llmrouter.tool_exchange import ROUND_SEPARATOR
from tests.client_view import assembled_tool_calls, streamed_text
from tests.upstreams import anthropic_server, gemini_server, mistral_server
from tests.upstreams.anthropic_server import FakeAnthropic
from tests.upstreams.gemini_server import FakeGemini
from tests.upstreams.loopback import LoopbackServer
from tests.upstreams.mistral_server import FakeMistral
from tests.upstreams.openai_server import FakeOpenAI

PRICES = {"prompt_price": "0.000001", "completion_price": "0.000002", "max_output_length": 512}
WEATHER = {  # a client's own tool, without parameters
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


@dataclass(frozen=True)
class Upstream:
    """One provider of the matrix: its adapter kind, the model asked for, and what its
    fake says (the placeholder it fills a required string with, the text it puts before
    its calls, its answer after tool results)."""

    name: str
    kind: str
    model: str
    placeholder: str

    @property
    def public_id(self) -> str:
        return f"{self.name}#{self.model}"

    def before_calls(self, names: list[str]) -> str:
        """The text of a turn calling ``names`` ("" for the fakes that say nothing)."""
        return "Let me call " + " and ".join(names) + "." if self.kind == "anthropic" else ""

    def after_results(self, results: list[tuple[str, str]]) -> str:
        """The answer to these (tool name, result) pairs."""
        texts = [text for _, text in results]
        if self.kind == "anthropic":
            return "Tool results: " + "; ".join(texts)
        if self.kind == "gemini":
            return "; ".join(
                f"{name} returned {json.dumps(gemini_response(text))}" for name, text in results
            )
        return "The tool said: " + "; ".join(texts)

    def exchange_text(self, rounds: list[list[str]], results: list[tuple[str, str]]) -> str:
        """The content the client gets: every round's text, then the answer."""
        texts = [self.before_calls(names) for names in rounds]
        return ROUND_SEPARATOR.join([*filter(None, texts), self.after_results(results)])


def gemini_response(text: str) -> dict[str, Any]:
    """A tool result as the gemini adapter sends it: a JSON object as it is, anything else
    wrapped."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"content": text}


UPSTREAMS = [
    pytest.param(Upstream("OpenAI", "openai", "gpt-4o-mini", "42"), id="openai"),
    pytest.param(Upstream("Compat", "openai-compatible", "local-llm", "42"), id="compatible"),
    pytest.param(Upstream("Anthropic", "anthropic", "claude-test-1", "echo"), id="anthropic"),
    pytest.param(Upstream("Gemini", "gemini", "gemini-2.0-flash", "sample"), id="gemini"),
    # Gemini 3 signs its calls and refuses them replayed unsigned: every round replays
    pytest.param(Upstream("Gemini3", "gemini", "gemini-3-pro-preview", "sample"), id="gemini-3"),
    pytest.param(Upstream("Mistral", "mistral", "mistral-small-latest", "42"), id="mistral"),
]


# --------------------------------------------------------------------------- fixtures


@dataclass
class Fakes:
    openai: FakeOpenAI
    anthropic: FakeAnthropic
    gemini: FakeGemini
    mistral: FakeMistral
    urls: dict[str, str]
    keys: dict[str, str]

    def reset(self) -> None:
        for fake in (self.openai, self.anthropic, self.gemini, self.mistral):
            fake.reset()

    def tool_choices(self, kind: str) -> list[str]:
        """The tool choice of each request the fake of ``kind`` received, in its own
        words, upper-cased (absent: its default, AUTO)."""
        if kind == "anthropic":
            return [
                (r.body.get("tool_choice") or {"type": "auto"})["type"].upper()
                for r in self.anthropic.received
            ]
        if kind == "gemini":
            configs = [(r.body.get("toolConfig") or {}) for r in self.gemini.received]
            return [
                str(c.get("functionCallingConfig", {}).get("mode", "AUTO")).upper() for c in configs
            ]
        bodies = self.mistral.requests if kind == "mistral" else self.openai.requests
        return [str(body.get("tool_choice", "auto")).upper() for body in bodies]


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    openai, anthropic, gemini, mistral = FakeOpenAI(), FakeAnthropic(), FakeGemini(), FakeMistral()
    with ExitStack() as stack:

        def serve(app: Any) -> str:
            return stack.enter_context(LoopbackServer(app)).url

        openai_url = serve(openai.app()) + "/v1"
        urls = {
            "openai": openai_url,
            "openai-compatible": openai_url,
            "anthropic": serve(anthropic),
            "gemini": serve(gemini.app) + "/v1beta",
            "mistral": serve(mistral.app()) + "/v1",
        }
        keys = {
            "openai": openai.api_key,
            "openai-compatible": openai.api_key,
            "anthropic": anthropic_server.TEST_KEY,
            "gemini": gemini_server.API_KEY,
            "mistral": mistral_server.API_KEY,
        }
        yield Fakes(openai, anthropic, gemini, mistral, urls, keys)


@pytest.fixture(params=UPSTREAMS)
def upstream(request: pytest.FixtureRequest) -> Upstream:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=[False, True], ids=["whole", "streamed"])
def streamed(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def router(make_router: Callable[..., Router], fakes: Fakes, upstream: Upstream) -> Router:
    """A router with the one provider under test, in front of its fake."""
    fakes.reset()
    provider = {
        "name": upstream.name,
        "kind": upstream.kind,
        "base_url": fakes.urls[upstream.kind],
        "api_key": fakes.keys[upstream.kind],
        "retry_backoff": 0,
        "read_timeout": 5,
        "models": [{"id": upstream.model, **PRICES}],
    }
    return make_router({"database_url": "sqlite://", "providers": [provider]})


@dataclass
class Exchange:
    """What the client got from one exchange, streamed or not, and its ledger rows."""

    result: ChatResult
    text: str
    calls: list[dict[str, Any]]  # id, type, name, arguments
    finish_reason: str | None
    extension: dict[str, Any] | None
    usage: Any
    rows: list[Any]
    #: a stream's chunks (empty when not streamed)
    chunks: list[Any]

    def reply(self) -> dict[str, Any]:
        """The assistant message the client keeps in its conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in self.calls
            ]
        return message


Ask = Callable[..., Exchange]


@pytest.fixture
def ask(router: Router, upstream: Upstream, streamed: bool) -> Ask:
    key = router.create_key("k")[1]

    def send(messages: list[dict[str, Any]] | str, **fields: Any) -> Exchange:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        body = {"model": upstream.public_id, "messages": messages, **fields}
        if streamed:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        result = router.complete(body, api_key=key)
        if not streamed:
            completion = result.body
            assert isinstance(completion, ChatCompletion)
            choice = completion.choices[0]
            calls = [
                {
                    "id": c.id,
                    "type": c.type,
                    "name": c.function.name,
                    "arguments": c.function.arguments,
                }
                for c in choice.message.tool_calls or []
            ]
            extension = (completion.model_extra or {}).get("llmrouter")
            text = choice.message.content or ""
            return Exchange(
                result, text, calls, choice.finish_reason, extension, completion.usage,
                router.store.ledger_rows(result.request_id), [],
            )  # fmt: skip
        chunks = list(result.body)  # type: ignore[arg-type]
        finishes = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
        assert len(finishes) == 1, finishes  # one exchange, one finish
        final = next(chunk for chunk in chunks if any(c.finish_reason for c in chunk.choices))
        usages = [chunk.usage for chunk in chunks if chunk.usage is not None]
        assert len(usages) == 1 and chunks[-1].usage is not None  # one usage chunk, the last
        return Exchange(
            result, streamed_text(chunks), assembled_tool_calls(chunks), finishes[0],
            (final.model_extra or {}).get("llmrouter"), usages[0],
            router.store.ledger_rows(result.request_id), chunks,
        )  # fmt: skip

    return send


def assert_billed_per_round(exchange: Exchange, upstream: Upstream, rounds: int) -> None:
    """One ``ok`` row per round, at the provider under test; usage and (not streamed) the
    charge are the sums of the rows."""
    rows = exchange.rows
    assert [(r.round, r.status, r.provider) for r in rows] == [
        (n, "ok", upstream.name) for n in range(1, rounds + 1)
    ]
    assert all(r.cost_nanos > 0 for r in rows)
    if exchange.result.cost_nanos is not None:
        assert exchange.result.cost_nanos == sum(r.cost_nanos for r in rows)
    assert exchange.usage.prompt_tokens == sum(r.prompt_tokens for r in rows)
    assert exchange.usage.completion_tokens == sum(r.completion_tokens for r in rows)


def assert_one_stream(exchange: Exchange) -> None:
    """A stream is one OpenAI stream: one id, one role, no delta of a built-in call."""
    if not exchange.chunks:
        return
    assert len({chunk.id for chunk in exchange.chunks}) == 1
    deltas = [c.delta for chunk in exchange.chunks for c in chunk.choices]
    assert sum(1 for d in deltas if d.role) == 1
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert {c.function.name for c in calls if c.function and c.function.name} <= {"get_weather"}
    assert {c.index for c in calls} <= {0}  # the client's one call, numbered as its own


# --------------------------------------------------------------------------- the loop


def test_the_answer_is_built_from_the_tools_result(
    router: Router, upstream: Upstream, ask: Ask
) -> None:
    @router.tool
    def price_of(sku: str) -> str:
        """The price of a product."""
        return f"{sku} costs 9.99 USD"

    exchange = ask("what does it cost? use price_of")

    result = f"{upstream.placeholder} costs 9.99 USD"  # the fake's argument, through
    assert exchange.text == upstream.exchange_text([["price_of"]], [("price_of", result)])
    assert exchange.finish_reason == "stop"
    assert exchange.calls == []
    assert exchange.extension is not None and exchange.extension["rounds"] == 2
    turn, answer = exchange.extension["builtin_messages"]
    (call,) = turn["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"sku": upstream.placeholder}
    assert answer == {"role": "tool", "tool_call_id": call["id"], "content": result}
    assert_billed_per_round(exchange, upstream, rounds=2)
    assert_one_stream(exchange)


def test_two_stages_take_three_rounds_running_the_tools_in_order(
    router: Router, upstream: Upstream, ask: Ask
) -> None:
    ran: list[str] = []

    @router.tool
    def alpha() -> str:
        """A."""
        ran.append("alpha")
        return "a"

    @router.tool
    def beta() -> str:
        """B."""
        ran.append("beta")
        return "b"

    exchange = ask("use alpha then beta")

    assert ran == ["alpha", "beta"]
    # the last round answers the results since the last assistant turn: beta's
    assert exchange.text == upstream.exchange_text([["alpha"], ["beta"]], [("beta", "b")])
    assert exchange.finish_reason == "stop"
    assert exchange.extension is not None and exchange.extension["rounds"] == 3
    builtin = exchange.extension["builtin_messages"]
    assert [m["role"] for m in builtin] == ["assistant", "tool"] * 2
    assert [m["tool_calls"][0]["function"]["name"] for m in builtin[::2]] == ["alpha", "beta"]
    assert [m["content"] for m in builtin[1::2]] == ["a", "b"]
    ids = [m["tool_calls"][0]["id"] for m in builtin[::2]]
    assert [m["tool_call_id"] for m in builtin[1::2]] == ids and len(set(ids)) == 2
    assert_billed_per_round(exchange, upstream, rounds=3)
    assert_one_stream(exchange)


def test_parallel_calls_of_one_stage_run_at_once(
    router: Router, upstream: Upstream, ask: Ask
) -> None:
    both = threading.Barrier(2, timeout=3)  # broken, and a tool fails, unless both run at once

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

    exchange = ask("use alpha and beta")

    results = [("alpha", "a"), ("beta", "b")]
    assert exchange.text == upstream.exchange_text([["alpha", "beta"]], results)
    assert exchange.extension is not None
    turn, *answers = exchange.extension["builtin_messages"]
    assert [c["function"]["name"] for c in turn["tool_calls"]] == ["alpha", "beta"]
    assert [a["tool_call_id"] for a in answers] == [c["id"] for c in turn["tool_calls"]]
    assert_billed_per_round(exchange, upstream, rounds=2)
    assert_one_stream(exchange)


@pytest.mark.parametrize("keeps_builtin", [True, False], ids=["keeps-builtin", "ignores-builtin"])
def test_a_mixed_turn_returns_only_the_clients_call_and_the_next_request_is_valid(
    router: Router, upstream: Upstream, ask: Ask, keeps_builtin: bool
) -> None:
    @router.tool
    def stock_level() -> str:
        """Stock."""
        return "7 widgets"

    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "use get_weather and stock_level"}
    ]
    exchange = ask(messages, tools=[WEATHER])

    assert exchange.finish_reason == "tool_calls"
    assert [c["name"] for c in exchange.calls] == ["get_weather"]
    assert exchange.text == upstream.before_calls(["get_weather", "stock_level"])
    assert exchange.extension is not None
    builtin = exchange.extension["builtin_messages"]
    assert [m["role"] for m in builtin] == ["assistant", "tool"]
    assert [c["function"]["name"] for c in builtin[0]["tool_calls"]] == ["stock_level"]
    assert builtin[1]["content"] == "7 widgets"
    assert_billed_per_round(exchange, upstream, rounds=1)
    assert_one_stream(exchange)

    # The client runs its tool and sends the conversation on, with the built-in exchange
    # before its call or without it: the provider's fake takes either.
    (call,) = exchange.calls
    messages += [
        *(builtin if keeps_builtin else []),
        exchange.reply(),
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
    ]
    answer = ask(messages, tools=[WEATHER])

    assert answer.text == upstream.after_results([("get_weather", "sunny")])
    assert answer.finish_reason == "stop"
    assert answer.extension is None  # no built-in tool ran this time
    assert_billed_per_round(answer, upstream, rounds=1)


#: a required tool_choice in each provider's words
FORCED = {"openai": "REQUIRED", "openai-compatible": "REQUIRED", "anthropic": "ANY"}
FORCED |= {"gemini": "ANY", "mistral": "ANY"}


def test_a_required_tool_choice_forces_round_one_only(
    router: Router, upstream: Upstream, ask: Ask, fakes: Fakes
) -> None:
    @router.tool
    def stock_level() -> str:
        """Stock."""
        return "7 widgets"

    exchange = ask("anything", tool_choice="required")

    # forced, the model says nothing before its call; asked again, it may answer
    assert exchange.text == upstream.after_results([("stock_level", "7 widgets")])
    assert exchange.finish_reason == "stop"
    assert fakes.tool_choices(upstream.kind) == [FORCED[upstream.kind], "AUTO"]
    assert_billed_per_round(exchange, upstream, rounds=2)


def test_a_failing_tool_and_an_object_result_reach_the_model(
    router: Router, upstream: Upstream, ask: Ask
) -> None:
    @router.tool
    def stock_level() -> dict[str, int]:
        """Stock."""
        return {"in_stock": 7}

    @router.tool
    def warehouse() -> str:
        """The warehouse."""
        raise RuntimeError("the warehouse database is down")

    exchange = ask("use stock_level and warehouse")

    failed = "The tool warehouse failed: RuntimeError: the warehouse database is down"
    results = [("stock_level", '{"in_stock":7}'), ("warehouse", failed)]
    assert exchange.text == upstream.exchange_text([["stock_level", "warehouse"]], results)
    assert exchange.finish_reason == "stop"
    assert_billed_per_round(exchange, upstream, rounds=2)
    assert_one_stream(exchange)

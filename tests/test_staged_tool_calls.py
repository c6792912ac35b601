"""Tools called in stages, the rule the built-in tool loop's tests stand on (issue 11).

Every loopback fake and the echo provider split the last user message on " then " and,
for each tool-calling turn the assistant has made since (k), call every tool stage k
names; a stage naming none, or no stage left, is answered with text naming every tool
result since the last assistant turn. The conversations here are driven through the
router's own adapters, streamed and not, over real HTTP on 127.0.0.1; the second half
sends each fake, in its own wire format, the multi-round tool conversations its provider
refuses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from llmrouter.config import ProviderSettings
from llmrouter.providers.base import ProviderAdapter
from llmrouter.providers.registry import build_adapter
from llmrouter.schemas import ChatRequest
from tests.client_view import assembled_tool_calls, streamed_text
from tests.upstreams import anthropic_server, gemini_server, mistral_server
from tests.upstreams.anthropic_server import FakeAnthropic
from tests.upstreams.gemini_server import FakeGemini
from tests.upstreams.loopback import LoopbackServer
from tests.upstreams.mistral_server import FakeMistral
from tests.upstreams.openai_server import FakeOpenAI

KINDS = ["openai", "anthropic", "gemini", "mistral", "echo"]
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-test-1",
    "gemini": "gemini-2.0-flash",
    "mistral": "mistral-small-latest",
    "echo": "echo",
}
PRICE = {
    "type": "function",
    "function": {
        "name": "get_price",
        "description": "The price of an item.",
        "parameters": {
            "type": "object",
            "properties": {"item": {"type": "string"}},
            "required": ["item"],
        },
    },
}
STOCK = {"type": "function", "function": {"name": "get_stock", "description": "Items left."}}
TAX = {"type": "function", "function": {"name": "get_tax", "description": "The tax rate."}}
TOOLS = [PRICE, STOCK, TAX]
#: get_price's arguments: each fake's placeholder for its required string parameter
PRICE_ARGUMENTS = {
    "openai": {"item": "42"},
    "anthropic": {"item": "echo"},
    "gemini": {"item": "sample"},
    "mistral": {"item": "42"},
    "echo": {"item": "echo"},
}


def answer_to(kind: str, results: list[tuple[str, str]]) -> str:
    """What ``kind`` answers after these (tool name, result) pairs."""
    if kind in ("openai", "mistral"):
        return "The tool said: " + "; ".join(text for _, text in results)
    if kind == "anthropic":
        return "Tool results: " + "; ".join(text for _, text in results)
    if kind == "gemini":  # the adapter wraps a result that is not a JSON object
        return "; ".join(
            f"{name} returned {json.dumps({'content': text})}" for name, text in results
        )
    return "; ".join(f"{name} returned: {text}" for name, text in results)


# --------------------------------------------------------------------------- fixtures


@dataclass
class Fakes:
    openai: FakeOpenAI
    anthropic: FakeAnthropic
    gemini: FakeGemini
    mistral: FakeMistral
    urls: dict[str, str]

    def reset(self) -> None:
        for fake in (self.openai, self.anthropic, self.gemini, self.mistral):
            fake.reset()


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    openai, anthropic, gemini, mistral = FakeOpenAI(), FakeAnthropic(), FakeGemini(), FakeMistral()
    apps = {"openai": openai.app(), "anthropic": anthropic, "gemini": gemini.app}
    apps["mistral"] = mistral.app()
    with ExitStack() as stack:
        urls = {kind: stack.enter_context(LoopbackServer(app)).url for kind, app in apps.items()}
        yield Fakes(openai, anthropic, gemini, mistral, urls)


@pytest.fixture(autouse=True)
def _fresh(fakes: Fakes) -> None:
    fakes.reset()


def settings(kind: str, fakes: Fakes) -> ProviderSettings:
    if kind == "echo":
        return ProviderSettings(name="Echo", kind="echo")
    base_url, key = {
        "openai": (fakes.urls["openai"] + "/v1", FakeOpenAI.api_key),
        "anthropic": (fakes.urls["anthropic"], anthropic_server.TEST_KEY),
        "gemini": (fakes.urls["gemini"] + "/v1beta", gemini_server.API_KEY),
        "mistral": (fakes.urls["mistral"] + "/v1", mistral_server.API_KEY),
    }[kind]
    return ProviderSettings(name="Up", kind=kind, base_url=base_url, api_key=key)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def adapter(kind: str, fakes: Fakes) -> Iterator[ProviderAdapter]:
    built = build_adapter(settings(kind, fakes))
    yield built
    built.close()


@pytest.fixture(params=[False, True], ids=["whole", "streamed"])
def streamed(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@dataclass
class Turn:
    """One assistant answer as a client sees it."""

    text: str
    calls: list[dict[str, Any]]  # id, name, arguments
    finish_reason: str | None

    @property
    def names(self) -> list[str]:
        return [call["name"] for call in self.calls]

    def answered(self, *results: str) -> list[dict[str, Any]]:
        """This turn as an assistant message, then a tool message per call with ``results``."""
        assert len(results) == len(self.calls)
        calls = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
            for call in self.calls
        ]
        assistant = {"role": "assistant", "content": self.text or None, "tool_calls": calls}
        tools = [
            {"role": "tool", "tool_call_id": call["id"], "content": result}
            for call, result in zip(self.calls, results, strict=True)
        ]
        return [assistant, *tools]


Ask = Callable[..., Turn]


@pytest.fixture
def ask(adapter: ProviderAdapter, kind: str, streamed: bool) -> Ask:
    """Send ``messages`` (strings are user messages) with TOOLS, streamed or not."""

    def send(*messages: dict[str, Any] | str, **fields: Any) -> Turn:
        listed = [{"role": "user", "content": m} if isinstance(m, str) else m for m in messages]
        body = {"model": "m", "messages": listed, "tools": TOOLS, **fields}
        request = ChatRequest.model_validate({**body, "stream": streamed})
        if not streamed:
            choice = adapter.chat(request, MODELS[kind]).choices[0]
            calls = [
                {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                for c in choice.message.tool_calls or []
            ]
            return Turn(choice.message.content or "", calls, choice.finish_reason)
        with adapter.stream(request, MODELS[kind]) as stream:
            chunks = list(stream)
        finishes = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
        assembled = [
            {key: call[key] for key in ("id", "name", "arguments")}
            for call in assembled_tool_calls(chunks)
        ]
        return Turn(streamed_text(chunks), assembled, finishes[-1] if finishes else None)

    return send


# --------------------------------------------------------------------------- the stages


def test_three_stages_call_one_tool_then_two_in_parallel_then_answer(kind: str, ask: Ask) -> None:
    question = "Look up get_price then get_stock and get_tax then answer"

    first = ask(question)
    assert (first.names, first.finish_reason) == (["get_price"], "tool_calls")
    assert json.loads(first.calls[0]["arguments"]) == PRICE_ARGUMENTS[kind]

    history = [{"role": "user", "content": question}, *first.answered("9 EUR")]
    second = ask(*history)
    assert (second.names, second.finish_reason) == (["get_stock", "get_tax"], "tool_calls")

    history += second.answered("3 left", "20%")
    third = ask(*history)
    assert third.calls == []
    assert third.finish_reason == "stop"
    assert third.text == answer_to(kind, [("get_stock", "3 left"), ("get_tax", "20%")])
    ids = [call["id"] for call in first.calls + second.calls]
    assert len(set(ids)) == 3


def test_a_message_without_then_is_one_stage_answered_as_before(kind: str, ask: Ask) -> None:
    question = "What does get_price say?"

    first = ask(question)
    assert first.names == ["get_price"]

    after = ask(question, *first.answered("9 EUR"))
    # one result: the text every provider's fake gave before stages existed
    today = {
        "openai": "The tool said: 9 EUR",
        "mistral": "The tool said: 9 EUR",
        "anthropic": "Tool results: 9 EUR",
        "gemini": 'get_price returned {"content": "9 EUR"}',
        "echo": "get_price returned: 9 EUR",
    }
    assert (after.text, after.calls, after.finish_reason) == (today[kind], [], "stop")


def test_every_tool_a_stage_names_is_called_in_one_turn(kind: str, ask: Ask) -> None:
    turn = ask("Compare get_price and get_stock")

    assert turn.names == ["get_price", "get_stock"]
    assert [json.loads(call["arguments"]) for call in turn.calls] == [PRICE_ARGUMENTS[kind], {}]
    assert len({call["id"] for call in turn.calls}) == 2

    after = ask("Compare get_price and get_stock", *turn.answered("9 EUR", "3 left"))
    assert after.text == answer_to(kind, [("get_price", "9 EUR"), ("get_stock", "3 left")])


def test_a_stage_naming_no_tool_is_answered_with_text(kind: str, ask: Ask) -> None:
    turn = ask("Say hello then get_price")

    assert (turn.calls, turn.finish_reason) == ([], "stop")
    said = "Say hello then get_price"
    assert turn.text == (f"You said: {said}" if kind in ("openai", "mistral") else said)


def test_a_new_question_starts_the_stages_again_with_new_ids(ask: Ask) -> None:
    first = ask("get_price then answer")
    history = ["get_price then answer", *first.answered("9 EUR")]
    answer = ask(*history)
    history += [{"role": "assistant", "content": answer.text}, "And get_price then get_tax?"]

    again = ask(*history)
    assert again.names == ["get_price"]
    assert again.calls[0]["id"] != first.calls[0]["id"]
    history += again.answered("10 EUR")
    assert ask(*history).names == ["get_tax"]


def test_required_calls_the_first_tool_once_then_answers(kind: str, ask: Ask) -> None:
    first = ask("Hello", tool_choice="required")
    assert first.names == ["get_price"]

    after = ask("Hello", *first.answered("9 EUR"), tool_choice="required")
    assert (after.text, after.calls) == (answer_to(kind, [("get_price", "9 EUR")]), [])


@pytest.mark.parametrize("kind", ["openai", "anthropic", "mistral", "echo"], indirect=True)
def test_no_parallel_tool_calls_calls_the_first_only(ask: Ask) -> None:
    # Gemini has no such switch (the adapter drops it), so it is not asked here.
    turn = ask("Compare get_price and get_stock", parallel_tool_calls=False)

    assert turn.names == ["get_price"]


# --------------------------------------------------------------------------- refusals

# A round of calls as each fake's wire format writes it, for the conversations below.


def post(fakes: Fakes, kind: str, conversation: list[Any]) -> requests.Response:
    """``conversation`` sent to the ``kind`` fake as it stands, without an adapter."""
    url = fakes.urls[kind]
    if kind == "anthropic":
        tools = [{"name": t["function"]["name"], "input_schema": {"type": "object"}} for t in TOOLS]
        body = {"model": MODELS[kind], "max_tokens": 100, "messages": conversation, "tools": tools}
        headers = {
            "x-api-key": anthropic_server.TEST_KEY,
            "anthropic-version": anthropic_server.API_VERSION,
        }
        return requests.post(url + "/v1/messages", json=body, headers=headers, timeout=5)
    if kind == "gemini":
        declarations = [{"name": t["function"]["name"]} for t in TOOLS]
        body = {"contents": conversation, "tools": [{"functionDeclarations": declarations}]}
        return requests.post(
            f"{url}/v1beta/models/{MODELS[kind]}:generateContent",
            json=body,
            headers={"x-goog-api-key": gemini_server.API_KEY},
            timeout=5,
        )
    key = FakeOpenAI.api_key if kind == "openai" else mistral_server.API_KEY
    return requests.post(
        url + "/v1/chat/completions",
        json={"model": MODELS[kind], "messages": conversation, "tools": TOOLS},
        headers={"Authorization": f"Bearer {key}"},
        timeout=5,
    )


def error_message(kind: str, response: requests.Response) -> str:
    body = response.json()
    return str(body["message"] if kind == "mistral" else body["error"]["message"])


# Each conversation below is a question and a first round of calls already answered
# (ROUND_ONE, in the fake's wire format), then what the second round gets wrong.


# OpenAI and Mistral: an assistant message calling tools, and a tool message answering one.
def calling(*ids: str) -> dict[str, Any]:
    calls = [
        {"id": i, "type": "function", "function": {"name": "get_stock", "arguments": "{}"}}
        for i in ids
    ]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def result(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "3 left"}


USER = {"role": "user", "content": "get_stock then get_stock"}
OPENAI_ROUND_ONE = [USER, calling("call_a"), result("call_a")]
OPENAI_REFUSALS = {
    "second round before the first is answered": (
        [USER, calling("call_a", "call_b"), result("call_a"), calling("call_c")],
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        "call_b",
    ),
    "last round unanswered": (
        [*OPENAI_ROUND_ONE, calling("call_b")],
        "The following tool_call_ids did not have response messages: call_b",
    ),
    "an earlier round's id answered again": (
        [*OPENAI_ROUND_ONE, calling("call_b"), result("call_a")],
        "Invalid parameter: 'tool_call_id' of 'call_a' not found in 'tool_calls' of previous "
        "message.",
    ),
    "a tool message after a user message": (
        [*OPENAI_ROUND_ONE, USER, result("call_a")],
        "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
        "message with 'tool_calls'.",
    ),
}
MISTRAL_ROUND_ONE = [USER, calling("aaaaaaaa1"), result("aaaaaaaa1")]
MISTRAL_REFUSALS = {
    "second round before the first is answered": (
        [USER, calling("aaaaaaaa1", "aaaaaaaa2"), result("aaaaaaaa1"), calling("aaaaaaaa3")],
        "Not the same number of function calls and responses",
    ),
    "last round unanswered": (
        [*MISTRAL_ROUND_ONE, calling("aaaaaaaa2")],
        "Not the same number of function calls and responses",
    ),
    "an earlier round's id answered again": (
        [*MISTRAL_ROUND_ONE, calling("aaaaaaaa2"), result("aaaaaaaa1")],
        "Unexpected tool call id aaaaaaaa1 in tool results",
    ),
    "a user message right after a tool result": (
        [*MISTRAL_ROUND_ONE, USER],
        "Unexpected role 'user' after role 'tool'",
    ),
    "a second round's id that is not 9 characters": (
        [*MISTRAL_ROUND_ONE, calling("call_2"), result("call_2")],
        "Tool call id was call_2 but must be a-z, A-Z, 0-9, with a length of 9.",
    ),
}


# Anthropic: an assistant turn of tool_use blocks, and a user turn of blocks.
def using(*ids: str) -> dict[str, Any]:
    blocks = [{"type": "tool_use", "id": i, "name": "get_stock", "input": {}} for i in ids]
    return {"role": "assistant", "content": blocks}


def tool_result(call_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": "3 left"}


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


TEXT = {"type": "text", "text": "go on"}
ANTHROPIC_ROUND_ONE = [USER, using("a"), user(tool_result("a"))]
ANTHROPIC_REFUSALS = {
    "second round not answered in the next turn": (
        [*ANTHROPIC_ROUND_ONE, using("b"), user(TEXT)],
        "messages.3: `tool_use` ids were found without `tool_result` blocks immediately after: b",
    ),
    "an earlier round's id answered again": (
        [*ANTHROPIC_ROUND_ONE, using("b"), user(tool_result("a"))],
        "messages.4.content.0: unexpected `tool_use_id` found in `tool_result` blocks: a",
    ),
    "parallel results split over two user turns": (
        [*ANTHROPIC_ROUND_ONE, using("b", "c"), user(tool_result("b")), user(tool_result("c"))],
        "messages.3: `tool_use` ids were found without `tool_result` blocks immediately after: c",
    ),
    "an id of an earlier round used again": (
        [*ANTHROPIC_ROUND_ONE, using("a"), user(tool_result("a"))],
        "messages.3.content.0: `tool_use` ids must be unique",
    ),
    "a result after text in the user turn": (
        [*ANTHROPIC_ROUND_ONE, using("b"), user(TEXT, tool_result("b"))],
        "messages.4.content.1: tool_result blocks must come before any other content",
    ),
}


# Gemini: a model turn of functionCall parts, and a user turn of functionResponse parts.
def model(*names: str) -> dict[str, Any]:
    return {"role": "model", "parts": [{"functionCall": {"name": n, "args": {}}} for n in names]}


def responses(*names: str) -> dict[str, Any]:
    parts = [{"functionResponse": {"name": n, "response": {"left": 3}}} for n in names]
    return {"role": "user", "parts": parts}


ASKED = {"role": "user", "parts": [{"text": "get_stock then get_tax"}]}
GEMINI_ROUND_ONE = [ASKED, model("get_stock"), responses("get_stock")]
SAID = "Please ensure that "
GEMINI_REFUSALS = {
    "two call turns in a row": (
        [*GEMINI_ROUND_ONE, model("get_tax"), model("get_tax")],
        SAID + "function call turn comes immediately after a user turn or after a function "
        "response turn.",
    ),
    "fewer responses than calls in the second round": (
        [*GEMINI_ROUND_ONE, model("get_tax", "get_stock"), responses("get_tax")],
        SAID + "the number of function response parts is equal to the number of function call "
        "parts of the function call turn.",
    ),
    "second round answered with text": (
        [*GEMINI_ROUND_ONE, model("get_tax"), {"role": "user", "parts": [{"text": "go on"}]}],
        SAID + "the number of function response parts is equal to the number of function call "
        "parts of the function call turn.",
    ),
    "second round answered under another name": (
        [*GEMINI_ROUND_ONE, model("get_tax"), responses("get_stock")],
        SAID + "the name of each function response part matches the name of a function call "
        "part of the function call turn.",
    ),
    "responses after a text turn": (
        [*GEMINI_ROUND_ONE, {"role": "model", "parts": [{"text": "Done."}]}, responses("get_tax")],
        SAID + "function response turn comes immediately after a function call turn.",
    ),
}
REFUSALS = {
    "openai": OPENAI_REFUSALS,
    "mistral": MISTRAL_REFUSALS,
    "anthropic": ANTHROPIC_REFUSALS,
    "gemini": GEMINI_REFUSALS,
}
ACCEPTED = {
    "openai": [*OPENAI_ROUND_ONE, calling("call_b", "call_c"), result("call_b"), result("call_c")],
    "mistral": [
        *MISTRAL_ROUND_ONE,
        calling("aaaaaaaa2"),
        result("aaaaaaaa2"),
        {"role": "assistant", "content": "Done."},
        USER,
    ],
    "anthropic": [*ANTHROPIC_ROUND_ONE, using("b", "c"), user(tool_result("b"), tool_result("c"))],
    "gemini": [
        *GEMINI_ROUND_ONE,
        model("get_tax", "get_stock"),
        responses("get_tax", "get_stock"),
    ],
}


@pytest.mark.parametrize(
    ("kind", "conversation", "refusal"),
    [
        pytest.param(kind, conversation, refusal, id=f"{kind}: {case}")
        for kind, cases in REFUSALS.items()
        for case, (conversation, refusal) in cases.items()
    ],
)
def test_each_fake_refuses_what_its_provider_refuses_in_a_multi_round_conversation(
    fakes: Fakes, kind: str, conversation: list[Any], refusal: str
) -> None:
    response = post(fakes, kind, conversation)

    assert response.status_code == 400
    assert refusal in error_message(kind, response)


@pytest.mark.parametrize("kind", list(ACCEPTED))
def test_each_fake_takes_rounds_each_answered_in_the_next_turn(fakes: Fakes, kind: str) -> None:
    response = post(fakes, kind, ACCEPTED[kind])

    assert response.status_code == 200, response.text

"""Seed 003's chat with sessions: ``POST /llm-providers/{id}/chat`` and a connection's
sessions, over HTTP against loopback upstreams that speak the real wire formats (and
record what they receive), and from Python."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
from sqlalchemy import select

from llmrouter import Router
from llmrouter.billing import estimate_prompt_tokens
from llmrouter.schemas import parse_chat_request
from tests.conftest import UPSTREAM_KEY, gateway_config
from tests.upstreams.anthropic_server import TEST_KEY as ANTHROPIC_KEY
from tests.upstreams.anthropic_server import FakeAnthropic
from tests.upstreams.faults import Fault
from tests.upstreams.loopback import LoopbackServer
from tests.upstreams.openai_server import FakeOpenAI

SECRET_KEY = "session-tests-secret-key-0123456789abcdef"
PRICES = {"prompt_price": "0.000003", "completion_price": "0.000015"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def _anthropic_server() -> Iterator[tuple[FakeAnthropic, LoopbackServer]]:
    fake = FakeAnthropic()
    with LoopbackServer(fake) as server:
        yield fake, server


@pytest.fixture
def fake_anthropic(_anthropic_server: tuple[FakeAnthropic, LoopbackServer]) -> FakeAnthropic:
    fake, server = _anthropic_server
    fake.reset()
    fake.url = server.url  # type: ignore[attr-defined]
    return fake


class TickingClock:
    """The time, a millisecond further at each reading: the router's timestamps (a
    session's last use) never tie, so orders are deterministic."""

    def __init__(self) -> None:
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return time.time() + self.readings / 1000


@pytest.fixture
def router(make_router: Callable[..., Router], fake_openai: FakeOpenAI) -> Router:
    """This test's router (``live_api`` serves it): in-memory, with a secret_key, the
    echo provider and the config provider ``OpenAI`` on the fake upstream."""
    config = gateway_config(fake_openai.url, secret_key=SECRET_KEY)
    return make_router(config, clock=TickingClock())


@pytest.fixture
def admin(router: Router) -> str:
    return router.create_key("admin", admin=True)[1]


def call(
    base: str, method: str, path: str, secret: str | None, body: Any = None, **kwargs: Any
) -> requests.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return requests.request(method, base + path, json=body, headers=headers, timeout=10, **kwargs)


def data_of(answer: requests.Response, status: int = 200) -> Any:
    assert answer.status_code == status, answer.text
    payload = answer.json()
    assert set(payload) == {"success", "data"} and payload["success"] is True, payload
    return payload["data"]


def error_of(answer: requests.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    payload = answer.json()
    assert set(payload) == {"success", "error"} and payload["success"] is False, payload
    assert set(payload["error"]) == {"code", "message", "field"}, payload
    return dict(payload["error"])


def anthropic_connection(fake: FakeAnthropic, **models: Any) -> dict[str, Any]:
    return {
        "name": "Claude",
        "provider": "anthropic",
        "apiKey": ANTHROPIC_KEY,
        "baseUrl": fake.url,  # type: ignore[attr-defined]
        "model": "claude-test",
        "models": [{"id": "claude-test", **PRICES, **models}],
    }


def openai_connection(fake: FakeOpenAI, **models: Any) -> dict[str, Any]:
    return {
        "name": "GPT",
        "provider": "openai",
        "apiKey": UPSTREAM_KEY,
        "baseUrl": fake.url + "/v1",  # type: ignore[attr-defined]
        "model": "gpt-test",
        "models": [{"id": "gpt-test", **PRICES, **models}],
    }


def create(base: str, admin: str, fields: dict[str, Any]) -> str:
    return str(data_of(call(base, "POST", "/v1/llm-providers", admin, fields), 201)["id"])


def chat(base: str, secret: str, connection: str, message: str, session: str | None = None) -> Any:
    body = {"message": message} if session is None else {"message": message, "sessionId": session}
    return data_of(call(base, "POST", f"/v1/llm-providers/{connection}/chat", secret, body))


def anthropic_turns(fake: FakeAnthropic) -> list[tuple[str, str]]:
    """The turns of the last request the fake Anthropic received, as (role, text)."""
    return [
        (m["role"], "".join(b["text"] for b in m["content"] if b["type"] == "text"))
        for m in fake.last.body["messages"]
    ]


def openai_turns(fake: FakeOpenAI) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in fake.requests[-1]["messages"]]


# --------------------------------------------------------------------------- history


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_a_sessions_history_reaches_the_upstream_in_order(
    live_api: str,
    admin: str,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    kind: str,
) -> None:
    if kind == "anthropic":
        fields, turns, name = anthropic_connection(fake_anthropic), anthropic_turns, "Claude"
        fake: Any = fake_anthropic
    else:
        fields, turns, name = openai_connection(fake_openai), openai_turns, "GPT"
        fake = fake_openai
    connection = create(live_api, admin, fields)

    first = chat(live_api, admin, connection, "What is the capital of France?")
    assert first["sessionId"].startswith("sess-")
    assert first["model"] == f"{name}#{fields['model']}"
    assert first["message"]["role"] == "assistant" and first["message"]["content"]
    assert turns(fake) == [("user", "What is the capital of France?")]

    second = chat(live_api, admin, connection, "And of Italy?", first["sessionId"])
    assert second["sessionId"] == first["sessionId"]
    assert turns(fake) == [
        ("user", "What is the capital of France?"),
        ("assistant", first["message"]["content"]),
        ("user", "And of Italy?"),
    ]
    usage = second["usage"]
    assert usage["totalTokens"] == usage["promptTokens"] + usage["completionTokens"] > 0

    third = chat(live_api, admin, connection, "And of Spain?", first["sessionId"])
    assert turns(fake) == [
        ("user", "What is the capital of France?"),
        ("assistant", first["message"]["content"]),
        ("user", "And of Italy?"),
        ("assistant", second["message"]["content"]),
        ("user", "And of Spain?"),
    ]

    path = f"/llm-providers/{connection}/sessions/{first['sessionId']}"
    stored = data_of(call(live_api, "GET", path, admin))
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [
        ("user", "What is the capital of France?"),
        ("assistant", first["message"]["content"]),
        ("user", "And of Italy?"),
        ("assistant", second["message"]["content"]),
        ("user", "And of Spain?"),
        ("assistant", third["message"]["content"]),
    ]
    assert stored["messageCount"] == 6 and stored["title"] == "What is the capital of France?"


def test_the_calls_are_billed_to_the_caller_and_count_against_its_allowance(
    live_api: str, router: Router, admin: str, fake_openai: FakeOpenAI
) -> None:
    connection = create(live_api, admin, openai_connection(fake_openai))
    limited, secret = router.create_key(
        "limited", admin=True, daily_requests=1, throttle_seconds=600
    )
    url = f"/v1/llm-providers/{connection}/chat"

    first = call(live_api, "POST", url, secret, {"message": "one"})
    session = data_of(first)["sessionId"]
    assert first.headers["X-RateLimit-Limit"] == "1"
    assert first.headers["X-RateLimit-Remaining"] == "0"
    # past the allowance: one request per throttle window, then 429
    second = call(live_api, "POST", url, secret, {"message": "two", "sessionId": session})
    assert second.status_code == 200, second.text
    third = call(live_api, "POST", url, secret, {"message": "three", "sessionId": session})
    error = error_of(third, 429)
    assert error["code"] == "rate_limit_exceeded"
    assert 0 < int(third.headers["Retry-After"]) <= 600
    assert len(fake_openai.requests) == 2  # the refused call never left

    stored = data_of(call(live_api, "GET", f"/v1/llm-providers/{connection}/sessions", admin))
    assert [s["messageCount"] for s in stored] == [4]  # the refused turn was not stored

    rows = router.usage(key_id=limited.id)
    assert [(r.model, r.requests, r.failed) for r in rows] == [("GPT#gpt-test", 2, 0)]
    costs = [data_of(a)["cost"] for a in (first, second)]
    assert sum(map(Decimal, costs)) == Decimal(rows[0].cost_nanos) / 10**9
    assert rows[0].cost_nanos > 0
    admin_key = router.authenticate(admin)
    assert router.usage(key_id=admin_key.id) == []  # billed to the caller, no one else


# --------------------------------------------------------------------------- trimming

# A model with room for 100 tokens, 10 of them for the answer: 90 for the prompt, each
# message counting 4 plus its UTF-8 bytes (billing.estimate_prompt_tokens).
TINY = {"context_length": 100, "max_output_length": 10}


def test_a_long_history_is_cut_oldest_exchange_first(
    live_api: str, router: Router, admin: str, fake_openai: FakeOpenAI
) -> None:
    connection = create(live_api, admin, openai_connection(fake_openai, **TINY))
    first = chat(live_api, admin, connection, "a" * 20)  # 24 + reply "You said: a…" 34
    session = first["sessionId"]
    second = chat(live_api, admin, connection, "b" * 10, session)  # 58 + 14 fit in 90
    assert second["historyLeftOut"] == 0
    assert len(openai_turns(fake_openai)) == 3

    third = chat(live_api, admin, connection, "c" * 10, session)
    # 58 + 38 + 14 > 90: the oldest exchange is left out, whole; the newer one is sent
    assert third["historyLeftOut"] == 2
    sent = fake_openai.requests[-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "b" * 10),
        ("assistant", second["message"]["content"]),
        ("user", "c" * 10),
    ]
    assert _estimate(sent) + 10 <= 100
    with_oldest = [
        {"role": "user", "content": "a" * 20},
        {"role": "assistant", "content": first["message"]["content"]},
        *sent,
    ]
    assert _estimate(with_oldest) + 10 > 100

    stored = router.connections.sessions.get(connection, session)
    assert stored.message_count == 6  # the session keeps every turn


def test_a_message_that_does_not_fit_alone_is_refused(
    live_api: str, admin: str, fake_openai: FakeOpenAI
) -> None:
    connection = create(live_api, admin, openai_connection(fake_openai, **TINY))
    url = f"/llm-providers/{connection}/chat"
    error = error_of(call(live_api, "POST", url, admin, {"message": "x" * 87}), 400)
    assert error["field"] == "message" and error["code"] == "context_length_exceeded"
    assert fake_openai.requests == []
    assert data_of(call(live_api, "GET", f"/llm-providers/{connection}/sessions", admin)) == []

    exactly = chat(live_api, admin, connection, "x" * 86)  # 4 + 86 + 10 = 100
    assert exactly["historyLeftOut"] == 0


def _estimate(messages: list[dict[str, Any]]) -> int:
    return estimate_prompt_tokens(parse_chat_request({"model": "m", "messages": messages}))


# --------------------------------------------------------------------------- sessions


def test_sessions_are_listed_read_and_deleted(
    live_api: str, router: Router, admin: str, fake_openai: FakeOpenAI
) -> None:
    connection = create(live_api, admin, openai_connection(fake_openai))
    first = chat(live_api, admin, connection, "first session")["sessionId"]
    older = chat(live_api, admin, connection, "older session")["sessionId"]
    newer = chat(live_api, admin, connection, "newer session")["sessionId"]
    chat(live_api, admin, connection, "older again", older)  # now the most recently used
    base = f"/llm-providers/{connection}/sessions"

    listed = data_of(call(live_api, "GET", base, admin))
    assert [(s["id"], s["messageCount"], s["title"]) for s in listed] == [
        (older, 4, "older session"),
        (newer, 2, "newer session"),
        (first, 2, "first session"),
    ]
    assert {s["connectionId"] for s in listed} == {connection}
    assert {s["keyId"] for s in listed} == {router.authenticate(admin).id}

    deleted = data_of(call(live_api, "DELETE", f"/v1{base}/{newer}", admin))
    assert deleted["id"] == newer and deleted["messageCount"] == 2
    assert error_of(call(live_api, "GET", f"{base}/{newer}", admin), 404)["code"] == (
        "session_not_found"
    )
    assert error_of(call(live_api, "DELETE", f"{base}/{newer}", admin), 404)["code"] == (
        "session_not_found"
    )
    assert [s["id"] for s in data_of(call(live_api, "GET", f"/v1{base}", admin))] == [older, first]
    before = len(fake_openai.requests)
    body = {"message": "continue", "sessionId": newer}
    continued = call(live_api, "POST", f"/llm-providers/{connection}/chat", admin, body)
    assert error_of(continued, 404) == {
        "code": "session_not_found",
        "message": f"no chat session with id '{newer}' on this connection",
        "field": "sessionId",
    }
    assert len(fake_openai.requests) == before

    # the sessions path is not the connection's; only GET is a method of it
    assert error_of(call(live_api, "POST", base, admin, {}), 405)["code"] == "method_not_allowed"
    # deleting the connection deletes its sessions
    data_of(call(live_api, "DELETE", f"/v1/llm-providers/{connection}", admin))
    assert error_of(call(live_api, "GET", base, admin), 404)["field"] == "id"
    assert router.store.list_sessions(connection) == []


def test_a_session_of_another_connection_is_not_found(
    live_api: str, admin: str, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic
) -> None:
    gpt = create(live_api, admin, openai_connection(fake_openai))
    claude = create(live_api, admin, anthropic_connection(fake_anthropic))
    session = chat(live_api, admin, gpt, "mine")["sessionId"]
    for answer in (
        call(live_api, "GET", f"/v1/llm-providers/{claude}/sessions/{session}", admin),
        call(live_api, "DELETE", f"/v1/llm-providers/{claude}/sessions/{session}", admin),
        call(
            live_api,
            "POST",
            f"/v1/llm-providers/{claude}/chat",
            admin,
            {"message": "yours?", "sessionId": session},
        ),
    ):
        assert error_of(answer, 404)["code"] == "session_not_found"
    assert fake_anthropic.received == []
    assert data_of(call(live_api, "GET", f"/v1/llm-providers/{claude}/sessions", admin)) == []
    assert data_of(call(live_api, "GET", f"/v1/llm-providers/{gpt}/sessions/{session}", admin))


def test_config_file_providers_chat_in_sessions_too(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    long_name = "echo-with-a-name-longer-than-the-session-column"
    config = gateway_config(fake_openai.url, secret_key=SECRET_KEY)
    config["providers"].append({"name": long_name, "kind": "echo", "models": [{"id": "echo"}]})
    router = make_router(config)
    key = router.authenticate(router.create_key("admin", admin=True)[1])
    sessions = router.connections.sessions

    first = sessions.chat("config-OpenAI", "hello", caller=key)
    assert first.model == "OpenAI#gpt-4o-mini" and first.content == "You said: hello"
    second = sessions.chat("config-OpenAI", "again", first.session_id, caller=key)
    assert [m["content"] for m in fake_openai.requests[-1]["messages"]] == [
        "hello",
        "You said: hello",
        "again",
    ]
    assert first.cost_nanos is not None and second.cost_nanos is not None
    assert first.cost_nanos + second.cost_nanos == router.usage(key_id=key.id)[0].cost_nanos
    # each reply names its ledger row
    replies = [m for m in sessions.get("config-OpenAI", first.session_id).messages]
    ledger = router.store.tables.ledger
    with router.store.transaction(read_only=True) as conn:
        rows = conn.execute(
            select(ledger.c.request_id, ledger.c.cost_nanos).where(ledger.c.key_id == key.id)
        ).all()
    assert sorted(m.request_id for m in replies if m.role == "assistant") == sorted(
        r.request_id for r in rows
    )

    echoed = sessions.chat(f"config-{long_name}", "hi", caller=key)
    assert [s.id for s in sessions.list(f"config-{long_name}")] == [echoed.session_id]
    assert [s.id for s in sessions.list("config-OpenAI")] == [first.session_id]
    assert sessions.list("config-echo") == []
    deleted = sessions.delete(f"config-{long_name}", echoed.session_id)
    assert deleted.message_count == 2 and sessions.list(f"config-{long_name}") == []


def test_a_disabled_connection_does_not_chat(
    live_api: str, admin: str, fake_openai: FakeOpenAI
) -> None:
    connection = create(live_api, admin, openai_connection(fake_openai))
    url = f"/v1/llm-providers/{connection}"
    data_of(call(live_api, "PATCH", url, admin, {"status": "disabled"}))
    refused = call(live_api, "POST", f"{url}/chat", admin, {"message": "hi"})
    assert error_of(refused, 409) == {
        "code": "connection_disabled",
        "message": "The connection 'GPT' is disabled: set its status to 'active' to chat with it.",
        "field": "status",
    }
    assert fake_openai.requests == []


# --------------------------------------------------------------------------- refusals


def _routes(connection: str) -> list[tuple[str, str, Any]]:
    session = "sess-" + "0" * 32
    return [
        ("POST", f"/llm-providers/{connection}/chat", {"message": "hi"}),
        ("GET", f"/llm-providers/{connection}/sessions", None),
        ("GET", f"/llm-providers/{connection}/sessions/{session}", None),
        ("DELETE", f"/llm-providers/{connection}/sessions/{session}", None),
    ]


@pytest.mark.parametrize("prefix", ["/v1", ""])
def test_only_admin_keys_chat_and_see_sessions(
    live_api: str, router: Router, admin: str, fake_openai: FakeOpenAI, prefix: str
) -> None:
    connection = create(live_api, admin, openai_connection(fake_openai))
    user = router.create_key("user")[1]
    for method, path, body in _routes(connection):
        missing = error_of(call(live_api, method, prefix + path, None, body), 401)
        assert missing["code"] == "invalid_api_key", (method, path)
        foreign = error_of(call(live_api, method, prefix + path, user, body), 403)
        assert foreign["code"] == "permission_denied", (method, path)
        assert "chat sessions" in foreign["message"]
    assert fake_openai.requests == []
    assert router.store.list_sessions(connection) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "message"),
        ({"message": ""}, "message"),
        ({"message": "   \n"}, "message"),
        ({"message": 5}, "message"),
        ({"message": ["hi"]}, "message"),
        ({"message": "x" * 100_001}, "message"),
        ({"message": "nul \x00 inside"}, "message"),
        ({"message": "hi", "model": "other"}, "model"),
        ({"message": "hi", "sessionId": 7}, "sessionId"),
        ({"message": "hi", "sessionId": "s" * 65}, "sessionId"),
        (["hi"], None),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    live_api: str, admin: str, fake_openai: FakeOpenAI, body: Any, field: str | None
) -> None:
    connection = create(live_api, admin, openai_connection(fake_openai))
    answer = call(live_api, "POST", f"/v1/llm-providers/{connection}/chat", admin, body)
    error = error_of(answer, 400)
    assert error["field"] == field, error
    assert fake_openai.requests == []
    assert data_of(call(live_api, "GET", f"/v1/llm-providers/{connection}/sessions", admin)) == []


def test_a_lone_surrogate_and_unknown_ids_are_refused(
    live_api: str, admin: str, fake_openai: FakeOpenAI
) -> None:
    connection = create(live_api, admin, openai_connection(fake_openai))
    url = f"{live_api}/v1/llm-providers/{connection}/chat"
    surrogate = requests.post(
        url,
        data=b'{"message": "\\ud800"}',
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert error_of(surrogate, 400)["field"] == "message"
    for session in ("sess-nope", "sess-" + "f" * 32, ""):
        body = {"message": "hi", "sessionId": session}
        answer = call(live_api, "POST", f"/v1/llm-providers/{connection}/chat", admin, body)
        assert error_of(answer, 404)["code"] == "session_not_found", session
    body = {"message": "hi"}
    unknown = call(live_api, "POST", "/v1/llm-providers/prov-unknown/chat", admin, body)
    assert error_of(unknown, 404)["field"] == "id"
    assert error_of(call(live_api, "GET", "/v1/llm-providers/prov-unknown/sessions", admin), 404)
    assert fake_openai.requests == []


def test_a_failed_upstream_call_stores_nothing(
    live_api: str, router: Router, admin: str, fake_openai: FakeOpenAI
) -> None:
    connection = create(live_api, admin, openai_connection(fake_openai))
    session = chat(live_api, admin, connection, "kept")["sessionId"]
    url = f"/v1/llm-providers/{connection}/chat"

    fake_openai.script.append(Fault(status=400, message="the upstream refuses this"))
    failed = call(live_api, "POST", url, admin, {"message": "lost", "sessionId": session})
    assert error_of(failed, 400)["code"] == "upstream_rejected_request"
    fake_openai.script.append(Fault(status=400))
    error_of(call(live_api, "POST", url, admin, {"message": "a one-off that fails"}), 400)

    sessions = router.connections.sessions.list(connection)
    assert [(s.id, s.message_count) for s in sessions] == [(session, 2)]
    rows = router.usage(key_id=router.authenticate(admin).id)
    assert [(r.requests, r.failed) for r in rows] == [(3, 2)]
    # the session goes on from where it was
    chat(live_api, admin, connection, "next", session)
    assert openai_turns(fake_openai)[:2] == [("user", "kept"), ("assistant", "You said: kept")]


def test_the_model_is_the_default_else_the_first_listed(
    live_api: str, admin: str, fake_openai: FakeOpenAI
) -> None:
    listed = openai_connection(fake_openai)
    del listed["model"]
    listed["models"].append({"id": "gpt-second", **PRICES})
    assert chat(live_api, admin, create(live_api, admin, listed), "hi")["model"] == "GPT#gpt-test"
    bare = {**listed, "name": "Bare", "models": []}
    url = f"/v1/llm-providers/{create(live_api, admin, bare)}/chat"
    assert error_of(call(live_api, "POST", url, admin, {"message": "hi"}), 400)["field"] == "model"
    assert len(fake_openai.requests) == 1

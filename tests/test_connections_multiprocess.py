"""Live routing across processes (issue 9 item 5, seam 2), on every database of the store
matrix: this test process is the first process, a spawned ``llmrouter serve`` on the same
database and ``secret_key`` the second. A connection made in the first routes in the second
through ``/v1/chat/completions`` with the ``openai`` SDK from the first request that names
it, is listed in its ``/v1/models``, stops routing within about a second of a delete or a
disable, and is reached at its new ``baseUrl`` with its new ``apiKey`` after a change; the
second process's log never shows a secret.

One second process per database, shared by the module; every test makes connections and a
key of its own, under names no other test uses.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from flask import Flask

from flask_ext import LLMRouter
from llmrouter import ModelNotFoundError, NotFoundError, Router
from llmrouter.store import Store
from llmrouter.store.tables import build_tables
from tests.conftest import (
    UPSTREAM_KEY,
    _fresh_schemas,
    database_urls,
    drop_tables,
    free_port,
    wait_for,
    wait_until_serving,
)
from tests.upstreams.anthropic_server import TEST_KEY as ANTHROPIC_KEY
from tests.upstreams.anthropic_server import FakeAnthropic
from tests.upstreams.loopback import LoopbackServer
from tests.upstreams.openai_server import FakeOpenAI

SECRET_KEY = "multiprocess-test-secret-key-0123456789"
#: the second OpenAI upstream's own key (the first one's is UPSTREAM_KEY)
SECOND_KEY = "sk-second-upstream-9876543210fedcba"
MODEL = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
#: a change made in the first process routes in the second within this (about a second)
WITHIN = 2.0


@dataclass
class Upstreams:
    first: FakeOpenAI
    first_url: str
    second: FakeOpenAI
    second_url: str
    anthropic: FakeAnthropic
    anthropic_url: str


@dataclass
class Fleet:
    """Two processes on one database."""

    here: Router  # the first process (this one)
    here_url: str  # its API, over HTTP
    there_url: str  # the second process, ``llmrouter serve``
    log: Path  # the second process's stderr
    upstreams: Upstreams


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    first, second, anthropic = FakeOpenAI(UPSTREAM_KEY), FakeOpenAI(SECOND_KEY), FakeAnthropic()
    with (
        LoopbackServer(first.app()) as a,
        LoopbackServer(second.app()) as b,
        LoopbackServer(anthropic) as c,
    ):
        yield Upstreams(first, a.url, second, b.url, anthropic, c.url)


def _database(url: str, tmp: Path) -> str:
    """As the ``database_url`` fixture, for a whole module: a SQLite file of its own, or a
    server's tables made fresh once a session."""
    if url == "sqlite-file":
        return f"sqlite:///{tmp}/store.db"
    if url not in _fresh_schemas:
        drop_tables(url, build_tables())
        store = Store(url, check_schema=False)
        try:
            store.upgrade_database()
        finally:
            store.close()
        _fresh_schemas.add(url)
    return url


@pytest.fixture(scope="module", params=database_urls())
def fleet(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstreams: Upstreams,
) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    url = _database(request.param, tmp)
    config = tmp / "llmrouter.toml"
    config.write_text(
        f'database_url = "{url}"\n'
        f'secret_key = "{SECRET_KEY}"\n'
        "[[providers]]\n"
        'name = "echo"\n'
        'kind = "echo"\n'
        "[[providers.models]]\n"
        'id = "echo"\n'
    )
    here = Router.from_config(config)
    app = Flask("first-process")
    LLMRouter(app, router=here)
    log = tmp / "second-process.log"
    port = free_port()
    command = [sys.executable, "-m", "llmrouter", "serve", "--config", str(config)]
    with log.open("wb") as stderr:
        there = subprocess.Popen(
            [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        there_url = f"http://127.0.0.1:{port}"
        wait_until_serving(there_url + "/health", there)
        with LoopbackServer(app) as here_api:
            yield Fleet(here, here_api.url, there_url, log, upstreams)
    finally:
        there.terminate()
        try:
            there.wait(timeout=10)
        except subprocess.TimeoutExpired:
            there.kill()
            there.wait()
        here.close()


@pytest.fixture
def secret(fleet: Fleet) -> str:
    """A key of this test (made in the first process, used in the second)."""
    return fleet.here.create_key(unique("multiprocess"), daily_requests=100_000)[1]


@pytest.fixture
def admin(fleet: Fleet) -> str:
    return fleet.here.create_key(unique("admin"), admin=True)[1]


@pytest.fixture
def there(fleet: Fleet, secret: str) -> openai.OpenAI:
    """The openai SDK pointed at the second process."""
    return openai.OpenAI(base_url=fleet.there_url + "/v1", api_key=secret, max_retries=0)


@pytest.fixture
def made(fleet: Fleet) -> Iterator[list[str]]:
    """The ids of the connections this test makes: deleted after it, wherever it stopped."""
    ids: list[str] = []
    yield ids
    for connection_id in ids:
        with contextlib.suppress(NotFoundError):  # the test deleted it
            fleet.here.connections.delete(connection_id)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def openai_connection(url: str, name: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "custom",
        "apiKey": UPSTREAM_KEY,
        "baseUrl": url + "/v1",
        "model": MODEL,
        "models": [{"id": MODEL, "prompt_price": "0.000001", "completion_price": "0.000002"}],
        **changes,
    }


def ask(client: openai.OpenAI, model: str) -> tuple[str, str]:
    """One chat request with a word of its own: the word, and the reply."""
    word = uuid.uuid4().hex
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": word}]
    )
    return word, reply.choices[0].message.content or ""


def refused(client: openai.OpenAI, model: str) -> bool:
    """Whether the second process no longer knows ``model`` (a 404 model_not_found)."""
    try:
        ask(client, model)
    except openai.NotFoundError as exc:
        assert exc.code == "model_not_found", exc
        return True
    return False


def listed(client: openai.OpenAI) -> set[str]:
    return {m.id for m in client.models.list()}


def received(fake: FakeOpenAI, word: str) -> bool:
    return any(word in str(body.get("messages")) for body in list(fake.requests))


def test_a_connection_made_here_routes_there_with_its_first_request(
    fleet: Fleet, there: openai.OpenAI, made: list[str]
) -> None:
    up = fleet.upstreams
    assert refused(there, "Nowhere#x")  # a miss there: it checked the store just now
    connection = fleet.here.connections.create(openai_connection(up.first_url, unique("OpenAI")))
    made.append(connection.id)

    word, reply = ask(there, f"{connection.name}#{MODEL}")  # the first request, at once

    assert reply == f"You said: {word}"
    assert received(up.first, word)
    assert f"{connection.name}#{MODEL}" in listed(there)


def test_an_anthropic_connection_made_over_http_routes_there(
    fleet: Fleet, there: openai.OpenAI, admin: str, made: list[str]
) -> None:
    up = fleet.upstreams
    name = unique("Claude")
    body = {
        "name": name,
        "provider": "anthropic",
        "apiKey": ANTHROPIC_KEY,
        "baseUrl": up.anthropic_url,
        "model": CLAUDE,
        "models": [{"id": CLAUDE, "prompt_price": "0.000001", "completion_price": "0.000005"}],
    }
    answer = requests.post(
        fleet.here_url + "/v1/llm-providers",
        json=body,
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    made.append(answer.json()["data"]["id"])

    word, reply = ask(there, f"{name}#{CLAUDE}")

    assert word in reply
    assert any(word in str(r.body) for r in list(up.anthropic.received))
    assert f"{name}#{CLAUDE}" in listed(there)


def test_a_deleted_connection_stops_routing_there_within_a_second_or_two(
    fleet: Fleet, there: openai.OpenAI, made: list[str]
) -> None:
    connection = fleet.here.connections.create(
        openai_connection(fleet.upstreams.first_url, unique("Leaving"))
    )
    made.append(connection.id)
    model = f"{connection.name}#{MODEL}"
    assert ask(there, model)[1]

    fleet.here.connections.delete(connection.id)
    deleted_at = time.monotonic()

    assert wait_for(lambda: refused(there, model), WITHIN)
    assert time.monotonic() - deleted_at < WITHIN
    assert all(refused(there, model) for _ in range(5))  # and stays gone
    assert model not in listed(there)


def test_a_disabled_connection_stops_routing_there_and_an_enabled_one_routes_again(
    fleet: Fleet, there: openai.OpenAI, admin: str, made: list[str]
) -> None:
    connection = fleet.here.connections.create(
        openai_connection(fleet.upstreams.first_url, unique("Pausing"))
    )
    made.append(connection.id)
    model = f"{connection.name}#{MODEL}"
    assert ask(there, model)[1]

    def patch(fields: dict[str, Any]) -> None:
        answer = requests.patch(
            f"{fleet.here_url}/v1/llm-providers/{connection.id}",
            json=fields,
            headers={"Authorization": f"Bearer {admin}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text

    patch({"status": "disabled"})
    assert wait_for(lambda: refused(there, model), WITHIN)
    assert model not in listed(there)

    patch({"status": "active"})
    assert wait_for(lambda: not refused(there, model), WITHIN)
    assert model in listed(there)


def test_a_changed_base_url_and_api_key_are_used_there(
    fleet: Fleet, there: openai.OpenAI, made: list[str]
) -> None:
    up = fleet.upstreams
    connection = fleet.here.connections.create(openai_connection(up.first_url, unique("Moving")))
    made.append(connection.id)
    model = f"{connection.name}#{MODEL}"
    word, _ = ask(there, model)
    assert received(up.first, word)

    fleet.here.connections.update(
        connection.id, {"baseUrl": up.second_url + "/v1", "apiKey": SECOND_KEY}
    )

    def answered_by_the_second() -> bool:
        word, reply = ask(there, model)
        assert reply == f"You said: {word}"
        return received(up.second, word)

    assert wait_for(answered_by_the_second, WITHIN)
    word, _ = ask(there, model)
    assert received(up.second, word) and not received(up.first, word)


def test_a_key_changed_to_a_wrong_one_is_refused_there_and_never_shown(
    fleet: Fleet, there: openai.OpenAI, made: list[str]
) -> None:
    up = fleet.upstreams
    connection = fleet.here.connections.create(openai_connection(up.first_url, unique("Wrong")))
    made.append(connection.id)
    model = f"{connection.name}#{MODEL}"
    assert ask(there, model)[1]
    wrong = "sk-wrong-" + uuid.uuid4().hex

    fleet.here.connections.update(connection.id, {"apiKey": wrong})

    errors: list[openai.APIStatusError] = []

    def refused_upstream() -> bool:
        try:
            ask(there, model)
        except openai.APIStatusError as exc:
            errors.append(exc)
            return True
        return False

    assert wait_for(refused_upstream, WITHIN)
    [error] = errors
    assert wrong not in str(error.body) and wrong not in error.message
    logged = fleet.log.read_text(errors="replace")
    for secret_value in (wrong, UPSTREAM_KEY, SECOND_KEY, SECRET_KEY):
        assert secret_value not in logged


def test_a_fixed_key_routes_there_within_a_second_or_two(
    fleet: Fleet, there: openai.OpenAI, made: list[str]
) -> None:
    up = fleet.upstreams
    connection = fleet.here.connections.create(
        openai_connection(up.first_url, unique("Fixed"), apiKey="sk-wrong-" + uuid.uuid4().hex)
    )
    made.append(connection.id)
    model = f"{connection.name}#{MODEL}"
    for _ in range(3):  # refused by the upstream: the provider's breaker opens
        with pytest.raises(openai.APIStatusError):
            ask(there, model)

    fleet.here.connections.update(connection.id, {"apiKey": UPSTREAM_KEY})

    def answered() -> bool:
        try:
            return bool(ask(there, model)[1])
        except openai.APIStatusError:
            return False

    assert wait_for(answered, WITHIN)


def test_a_connection_made_there_routes_here(
    fleet: Fleet, admin: str, secret: str, made: list[str]
) -> None:
    name = unique("Elsewhere")
    answer = requests.post(
        fleet.there_url + "/v1/llm-providers",
        json=openai_connection(fleet.upstreams.first_url, name),
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    made.append(answer.json()["data"]["id"])

    model = f"{name}#{MODEL}"
    hi = [{"role": "user", "content": "hi"}]

    reply = fleet.here.chat(model=model, messages=hi, api_key=secret)  # a miss here checks

    assert reply.choices[0].message.content == "You said: hi"
    gone = requests.delete(
        f"{fleet.there_url}/v1/llm-providers/{made[0]}",
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert gone.status_code == 200, gone.text

    def refused_here() -> bool:
        try:
            fleet.here.chat(model=model, messages=hi, api_key=secret)
        except ModelNotFoundError:
            return True
        return False

    assert wait_for(refused_here, WITHIN)

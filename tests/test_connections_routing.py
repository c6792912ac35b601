"""Connections created over HTTP route, bill and test for real (issue 9, seed 003): an
OpenAI-format and an Anthropic-format connection pointing at the loopback fakes, reached as
``Name#model`` through ``/v1/chat/completions`` with the ``openai`` SDK; their defaults, their
``totalCost``, ``POST /llm-providers/{id}/test``, and routing stopped by a disable or a delete."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import update

from llmrouter import ModelNotFoundError, Router
from tests.conftest import UPSTREAM_KEY, free_port, wait_for
from tests.connection_client import call, connection_config, create, data_of, error_of
from tests.upstreams.anthropic_server import TEST_KEY as ANTHROPIC_KEY
from tests.upstreams.anthropic_server import FakeAnthropic
from tests.upstreams.faults import Fault
from tests.upstreams.loopback import LoopbackServer
from tests.upstreams.openai_server import FakeOpenAI

HI = [{"role": "user", "content": "hi there"}]
#: the price table's prices (``genai-prices``), in nano-dollars per token
GPT_4O = (2500, 10000)
CLAUDE_SONNET = (3000, 15000)


@pytest.fixture(scope="module")
def _anthropic_server() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    with LoopbackServer(fake) as server:
        yield fake, server.url


@pytest.fixture
def fake_anthropic(_anthropic_server: tuple[FakeAnthropic, str]) -> FakeAnthropic:
    fake, url = _anthropic_server
    fake.reset()
    fake.url = url  # type: ignore[attr-defined]
    return fake


@pytest.fixture
def router(make_router: Callable[..., Router], fake_openai: FakeOpenAI, tmp_path: Path) -> Router:
    return make_router(connection_config(fake_openai.url, tmp_path))


@pytest.fixture
def admin(router: Router) -> str:
    return router.create_key("admin", admin=True)[1]


@pytest.fixture
def user(router: Router) -> tuple[str, str]:
    """A plain key: its id and its secret."""
    record, secret = router.create_key("user")
    return record.id, secret


@pytest.fixture
def client(live_api: str, user: tuple[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_api + "/v1", api_key=user[1], max_retries=0)


def openai_connection(fake: FakeOpenAI, **changes: Any) -> dict[str, Any]:
    return {
        "name": "OpenAI Production",
        "provider": "openai",
        "apiKey": UPSTREAM_KEY,
        "baseUrl": fake.url + "/v1",  # type: ignore[attr-defined]
        "model": "gpt-4o",  # not listed: priced by the price table
        "configuration": {"temperature": 0.7, "maxTokens": 4096},
        **changes,
    }


def anthropic_connection(fake: FakeAnthropic, **changes: Any) -> dict[str, Any]:
    return {
        "name": "Claude",
        "provider": "anthropic",
        "apiKey": ANTHROPIC_KEY,
        "baseUrl": fake.url,  # type: ignore[attr-defined]
        "model": "claude-sonnet-4-6",
        "configuration": {"temperature": 0.3, "maxTokens": 300},
        **changes,
    }


def total_cost(live_api: str, admin: str, connection_id: str) -> Decimal:
    shown = data_of(call(live_api, "GET", f"/v1/llm-providers/{connection_id}", admin))
    assert isinstance(shown["totalCost"], str)  # a decimal string, never a float
    return Decimal(shown["totalCost"])


def nanos(usage: Any, prices: tuple[int, int]) -> int:
    return int(usage.prompt_tokens * prices[0] + usage.completion_tokens * prices[1])


def test_an_openai_connection_routes_bills_and_stops(
    live_api: str,
    admin: str,
    router: Router,
    fake_openai: FakeOpenAI,
    user: tuple[str, str],
    client: openai.OpenAI,
) -> None:
    made = create(live_api, admin, openai_connection(fake_openai))
    cards = {m.id: m.model_dump() for m in client.models.list()}
    assert cards["OpenAI Production#gpt-4o"]["pricing"] == {
        "prompt": "0.0000025",
        "completion": "0.00001",
    }

    first = client.chat.completions.create(model="OpenAI Production#gpt-4o", messages=HI)  # type: ignore[arg-type]
    assert first.choices[0].message.content == "You said: hi there"
    assert first.model == "OpenAI Production#gpt-4o"
    sent = fake_openai.requests[-1]
    assert (sent["model"], sent["temperature"], sent["max_completion_tokens"]) == (
        "gpt-4o",
        0.7,
        4096,
    )
    assert fake_openai.headers[-1]["Authorization"] == f"Bearer {UPSTREAM_KEY}"

    second = client.chat.completions.create(
        model="openai production#gpt-4o",  # provider names are case-insensitive
        messages=HI,  # type: ignore[arg-type]
        temperature=0.2,
        max_tokens=10,
    )
    sent = fake_openai.requests[-1]
    assert (sent["temperature"], sent["max_completion_tokens"]) == (0.2, 10)
    streamed = client.chat.completions.create(
        model="OpenAI Production#gpt-4o",
        messages=HI,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    third = [c.usage for c in streamed if c.usage][-1]

    expected = sum(nanos(u, GPT_4O) for u in (first.usage, second.usage, third))
    [row] = router.usage(key_id=user[0])
    assert (row.provider, row.model, row.requests) == (
        "OpenAI Production",
        "OpenAI Production#gpt-4o",
        3,
    )
    assert row.cost_nanos == expected > 0
    assert total_cost(live_api, admin, made["id"]) == Decimal(expected) / 10**9
    totals = {t.provider: t for t in router.provider_totals()}
    assert totals["OpenAI Production"].cost_nanos == expected

    path = f"/v1/llm-providers/{made['id']}"
    data_of(call(live_api, "PATCH", path, admin, {"status": "disabled"}))
    with pytest.raises(openai.NotFoundError) as gone:
        client.chat.completions.create(model="OpenAI Production#gpt-4o", messages=HI)  # type: ignore[arg-type]
    assert gone.value.code == "model_not_found"
    assert not any(m.id.startswith("OpenAI Production#") for m in client.models.list())
    data_of(call(live_api, "PATCH", path, admin, {"status": "active"}))
    assert client.chat.completions.create(model="OpenAI Production#gpt-4o", messages=HI).choices  # type: ignore[arg-type]
    billed = router.usage(key_id=user[0])[0].cost_nanos
    assert total_cost(live_api, admin, made["id"]) == Decimal(billed) / 10**9

    data_of(call(live_api, "DELETE", path, admin))
    with pytest.raises(openai.NotFoundError) as gone:
        client.chat.completions.create(model="OpenAI Production#gpt-4o", messages=HI)  # type: ignore[arg-type]
    assert gone.value.code == "model_not_found"
    assert "OpenAI Production#gpt-4o" not in {m.id for m in client.models.list()}
    # the ledger and the provider's totals outlive the connection
    [row] = router.usage(key_id=user[0])
    assert (row.requests, row.cost_nanos) == (4, billed)
    assert {t.provider: t for t in router.provider_totals()}[
        "OpenAI Production"
    ].cost_nanos == billed
    again = create(live_api, admin, openai_connection(fake_openai))
    assert again["id"] != made["id"] and again["totalCost"] == "0"  # a new connection's own


def test_an_anthropic_connection_tests_routes_and_bills(
    live_api: str,
    admin: str,
    router: Router,
    fake_anthropic: FakeAnthropic,
    user: tuple[str, str],
    client: openai.OpenAI,
) -> None:
    made = create(live_api, admin, anthropic_connection(fake_anthropic))
    for prefix in ("/v1", ""):
        tested = data_of(call(live_api, "POST", f"{prefix}/llm-providers/{made['id']}/test", admin))
        assert set(tested) == {"status", "model", "responseTime"}
        assert (tested["status"], tested["model"]) == ("ok", "claude-sonnet-4-6")
        assert isinstance(tested["responseTime"], int) and tested["responseTime"] >= 0
    sent = fake_anthropic.last
    assert sent.headers["X-Api-Key"] == ANTHROPIC_KEY and sent.body["model"] == "claude-sonnet-4-6"
    after_tests = total_cost(live_api, admin, made["id"])
    assert after_tests > 0
    assert router.usage() == []  # a test is billed to no key
    [totals] = [t for t in router.provider_totals() if t.provider == "Claude"]
    assert totals.requests == 2 and Decimal(totals.cost_nanos) / 10**9 == after_tests

    assert "Claude#claude-sonnet-4-6" in {m.id for m in client.models.list()}
    answer = client.chat.completions.create(model="Claude#claude-sonnet-4-6", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "hi there"
    assert (fake_anthropic.last.body["temperature"], fake_anthropic.last.body["max_tokens"]) == (
        0.3,
        300,
    )
    second = client.chat.completions.create(
        model="Claude#claude-sonnet-4-6",
        messages=HI,  # type: ignore[arg-type]
        temperature=1.0,
        max_tokens=50,
    )
    assert (fake_anthropic.last.body["temperature"], fake_anthropic.last.body["max_tokens"]) == (
        1.0,
        50,
    )
    [row] = router.usage(key_id=user[0])
    assert row.provider == "Claude"
    assert row.cost_nanos == sum(nanos(a.usage, CLAUDE_SONNET) for a in (answer, second)) > 0
    assert total_cost(live_api, admin, made["id"]) == after_tests + Decimal(row.cost_nanos) / 10**9


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_refused_key_fails_the_test_and_marks_the_connection(
    live_api: str,
    admin: str,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    kind: str,
) -> None:
    wrong = "sk-wrong-but-long-enough-7777"  # both fakes quote a wrong key back
    fields = (
        openai_connection(fake_openai) if kind == "openai" else anthropic_connection(fake_anthropic)
    )
    made = create(live_api, admin, {**fields, "apiKey": wrong})
    path = f"/llm-providers/{made['id']}"
    tested = data_of(call(live_api, "POST", f"{path}/test", admin))
    assert set(tested) >= {"status", "reason"} and tested["status"] == "error"
    assert tested["reason"] and "401" in tested["reason"]
    assert wrong not in tested["reason"] and wrong[3:-4] not in tested["reason"]
    shown = data_of(call(live_api, "GET", path, admin))
    assert (shown["status"], shown["statusReason"]) == ("error", tested["reason"])
    assert shown["totalCost"] == "0"  # nothing answered, nothing cost

    data_of(call(live_api, "PATCH", path, admin, {"apiKey": fields["apiKey"]}))
    assert data_of(call(live_api, "POST", f"{path}/test", admin))["status"] == "ok"
    shown = data_of(call(live_api, "GET", path, admin))
    assert (shown["status"], shown["statusReason"]) == ("active", None)
    assert Decimal(shown["totalCost"]) > 0


def test_an_upstream_error_quoting_the_key_is_redacted(
    live_api: str, admin: str, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    made = create(live_api, admin, openai_connection(fake_openai))
    fake_openai.script.append(Fault(status=400, message=f"no access for key {UPSTREAM_KEY}"))
    tested = data_of(call(live_api, "POST", f"/llm-providers/{made['id']}/test", admin))
    assert tested["status"] == "error" and "no access for key" in tested["reason"]
    shown = call(live_api, "GET", f"/llm-providers/{made['id']}", admin).text
    for text in (tested["reason"], shown, caplog.text):
        assert UPSTREAM_KEY not in text and UPSTREAM_KEY[3:-4] not in text


def test_a_renamed_connection_routes_by_its_new_name_and_keeps_its_cost(
    live_api: str, admin: str, router: Router, fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    made = create(live_api, admin, openai_connection(fake_openai))
    client.chat.completions.create(model="OpenAI Production#gpt-4o", messages=HI)  # type: ignore[arg-type]
    cost = total_cost(live_api, admin, made["id"])
    assert cost > 0
    path = f"/v1/llm-providers/{made['id']}"
    data_of(call(live_api, "PATCH", path, admin, {"name": "OpenAI Staging"}))
    assert total_cost(live_api, admin, made["id"]) == cost
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="OpenAI Production#gpt-4o", messages=HI)  # type: ignore[arg-type]
    client.chat.completions.create(model="OpenAI Staging#gpt-4o", messages=HI)  # type: ignore[arg-type]
    totals = {t.provider: t.cost_nanos for t in router.provider_totals()}
    assert Decimal(totals["OpenAI Production"]) / 10**9 == cost  # the old name's history stays
    assert (
        total_cost(live_api, admin, made["id"]) == cost + Decimal(totals["OpenAI Staging"]) / 10**9
    )


def test_an_unreachable_upstream_fails_the_test(live_api: str, admin: str) -> None:
    made = create(
        live_api,
        admin,
        {
            "name": "Nowhere",
            "provider": "custom",
            "baseUrl": f"http://127.0.0.1:{free_port()}/v1",
            "model": "m",
            "models": [{"id": "m", "prompt_price": "0.000001", "completion_price": "0.000001"}],
        },
    )
    tested = data_of(call(live_api, "POST", f"/llm-providers/{made['id']}/test", admin))
    assert tested["status"] == "error" and tested["reason"]
    assert (
        data_of(call(live_api, "GET", f"/llm-providers/{made['id']}", admin))["status"] == "error"
    )


def test_a_disabled_connection_is_tested_and_stays_disabled(
    live_api: str, admin: str, fake_openai: FakeOpenAI
) -> None:
    made = create(live_api, admin, openai_connection(fake_openai, status="disabled"))
    tested = data_of(call(live_api, "POST", f"/llm-providers/{made['id']}/test", admin))
    assert (tested["status"], tested["model"]) == ("ok", "gpt-4o")
    assert (
        data_of(call(live_api, "GET", f"/llm-providers/{made['id']}", admin))["status"]
        == "disabled"
    )


def test_config_providers_can_be_tested(live_api: str, admin: str, fake_openai: FakeOpenAI) -> None:
    for connection_id, model in (("config-OpenAI", "gpt-4o-mini"), ("config-echo", "echo")):
        tested = data_of(call(live_api, "POST", f"/v1/llm-providers/{connection_id}/test", admin))
        assert (tested["status"], tested["model"]) == ("ok", model)
    assert fake_openai.requests[-1]["model"] == "gpt-4o-mini"
    assert total_cost(live_api, admin, "config-OpenAI") > 0


def test_a_connection_without_a_model_cannot_be_tested(live_api: str, admin: str) -> None:
    made = create(
        live_api, admin, {"name": "Bare", "provider": "custom", "baseUrl": "http://10.0.0.1"}
    )
    error = error_of(call(live_api, "POST", f"/llm-providers/{made['id']}/test", admin), 400)
    assert error["field"] == "model"


def test_listed_prices_bill_and_an_unpriced_model_is_refused(
    live_api: str,
    admin: str,
    router: Router,
    fake_openai: FakeOpenAI,
    user: tuple[str, str],
    client: openai.OpenAI,
) -> None:
    create(
        live_api,
        admin,
        {
            "name": "Local",
            "provider": "custom",
            "apiKey": UPSTREAM_KEY,
            "baseUrl": fake_openai.url + "/v1",  # type: ignore[attr-defined]
            "models": [
                {"id": "my-model", "prompt_price": "0.000001", "completion_price": "0.000002"}
            ],
        },
    )
    answer = client.chat.completions.create(model="Local#my-model", messages=HI)  # type: ignore[arg-type]
    assert answer.usage is not None
    [row] = router.usage(key_id=user[0])
    assert row.cost_nanos == nanos(answer.usage, (1000, 2000))
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="Local#unpriced-model", messages=HI)  # type: ignore[arg-type]
    assert refused.value.code == "model_price_unknown" and "unpriced-model" in str(refused.value)
    assert fake_openai.requests[-1]["model"] == "my-model"  # the refused one never went out

    create(live_api, admin, openai_connection(fake_openai))  # gpt-4o-mini: unlisted, in the table
    unlisted = client.chat.completions.create(model="OpenAI Production#gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    assert unlisted.usage is not None
    rows = {r.provider: r for r in router.usage(key_id=user[0])}
    assert rows["OpenAI Production"].cost_nanos == nanos(unlisted.usage, (150, 600))


def test_another_router_on_the_database_routes_it_and_sees_it_go(
    live_api: str,
    admin: str,
    router: Router,
    make_router: Callable[..., Router],
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    user: tuple[str, str],
    client: openai.OpenAI,
) -> None:
    elsewhere = make_router(connection_config(fake_openai.url, tmp_path))
    made = create(live_api, admin, openai_connection(fake_openai))
    # known there at once: a name it does not know is looked for in the store
    answer = elsewhere.chat(model="OpenAI Production#gpt-4o", messages=HI, api_key=user[1])
    assert answer.choices[0].message.content == "You said: hi there"
    data_of(call(live_api, "DELETE", f"/llm-providers/{made['id']}", admin))

    def refused() -> bool:
        try:
            elsewhere.chat(model="OpenAI Production#gpt-4o", messages=HI, api_key=user[1])
        except ModelNotFoundError:
            return True
        return False

    assert wait_for(refused, 3.0)  # within about a second


def test_a_row_that_cannot_be_read_is_shown_disabled_and_hides_nothing(
    live_api: str,
    admin: str,
    router: Router,
    make_router: Callable[..., Router],
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    client: openai.OpenAI,
) -> None:
    broken = create(live_api, admin, openai_connection(fake_openai))
    later = create(live_api, admin, openai_connection(fake_openai, name="Later"))
    table, counter = router.store.tables.connections, router.store.tables.directory_version
    with router.store.engine.begin() as conn:  # as a hand, a bug or another version would
        conn.execute(
            update(table).where(table.c.id == broken["id"]).values(configuration="{not json")
        )
        conn.execute(update(counter).values(version=counter.c.version + 1))
    router.refresh_directory()

    shown = data_of(call(live_api, "GET", f"/v1/llm-providers/{broken['id']}", admin))
    assert shown["status"] == "disabled" and "configuration" in shown["statusReason"]
    listed = data_of(call(live_api, "GET", "/v1/llm-providers", admin))
    assert [c["name"] for c in listed if c["source"] == "store"] == ["OpenAI Production", "Later"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="OpenAI Production#gpt-4o", messages=HI)  # type: ignore[arg-type]
    assert client.chat.completions.create(model="Later#gpt-4o", messages=HI).choices  # type: ignore[arg-type]
    restarted = make_router(connection_config(fake_openai.url, tmp_path))  # it starts
    assert "Later" in restarted.directory.connection_names

    path = f"/v1/llm-providers/{broken['id']}"
    healed = data_of(call(live_api, "PATCH", path, admin, {"configuration": {"temperature": 1}}))
    assert (healed["status"], healed["statusReason"]) == ("active", None)
    assert client.chat.completions.create(model="OpenAI Production#gpt-4o", messages=HI).choices  # type: ignore[arg-type]
    assert data_of(call(live_api, "DELETE", f"/v1/llm-providers/{later['id']}", admin))

"""Seed 003's provider connection routes over HTTP (issue 9): the fields, every bad input
named in the envelope with its status, admin keys only, config providers read-only, and the
provider's key never shown, logged or stored in plain text. Routing, billing and the test
call are in ``test_connections_routing.py``."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from flask_ext import LLMRouter
from llmrouter import Router
from tests.conftest import UPSTREAM_KEY
from tests.connection_client import call, connection_config, create, data_of, error_of
from tests.upstreams.loopback import LoopbackServer
from tests.upstreams.openai_server import FakeOpenAI

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ECHO = {"name": "Offline", "provider": "echo", "model": "m1"}
PREFIXES = ("/v1", "")


@pytest.fixture
def router(make_router: Callable[..., Router], fake_openai: FakeOpenAI, tmp_path: Path) -> Router:
    return make_router(connection_config(fake_openai.url, tmp_path))


@pytest.fixture
def admin(router: Router) -> str:
    return router.create_key("admin", admin=True)[1]


def openai_fields(fake: FakeOpenAI, **changes: Any) -> dict[str, Any]:
    return {
        "name": "OpenAI Production",
        "provider": "openai",
        "apiKey": UPSTREAM_KEY,
        "baseUrl": fake.url + "/v1",  # type: ignore[attr-defined]
        "model": "gpt-4o",
        "configuration": {"temperature": 0.7, "maxTokens": 4096},
        **changes,
    }


def test_an_admin_manages_a_connection_end_to_end(
    live_api: str, admin: str, router: Router, fake_openai: FakeOpenAI
) -> None:
    made = create(live_api, admin, openai_fields(fake_openai))
    assert re.fullmatch(r"prov-[0-9a-f]{32}", made["id"])
    # the id fits its column (PostgreSQL and MariaDB refuse a longer one)
    assert len(made["id"]) <= router.store.tables.connections.c.id.type.length
    assert {k: made[k] for k in ("name", "provider", "model", "status", "source")} == {
        "name": "OpenAI Production",
        "provider": "openai",
        "model": "gpt-4o",
        "status": "active",
        "source": "store",
    }
    assert made["apiKey"] == "sk-…cdef" and made["totalCost"] == "0"
    assert made["configuration"] == {"temperature": 0.7, "maxTokens": 4096}
    assert ISO.match(made["createdAt"]) and made["updatedAt"] == made["createdAt"]

    for prefix in PREFIXES:
        path = f"{prefix}/llm-providers/{made['id']}"
        assert data_of(call(live_api, "GET", path, admin)) == made
        listed = data_of(call(live_api, "GET", f"{prefix}/llm-providers", admin))
        assert [c for c in listed if c["source"] == "store"] == [made]

    time.sleep(0.002)  # updatedAt has milliseconds
    changed = data_of(
        call(
            live_api,
            "PATCH",
            f"/llm-providers/{made['id']}",
            admin,
            {"name": "openai production", "model": "gpt-4o-mini", "configuration": None},
        )
    )
    assert changed["name"] == "openai production" and changed["model"] == "gpt-4o-mini"
    assert changed["configuration"] == {} and changed["apiKey"] == "sk-…cdef"
    assert changed["createdAt"] == made["createdAt"] and changed["updatedAt"] > made["updatedAt"]

    deleted = data_of(call(live_api, "DELETE", f"/v1/llm-providers/{made['id']}", admin))
    assert deleted["id"] == made["id"]
    for method in ("GET", "PATCH", "DELETE", "POST"):
        path = f"/v1/llm-providers/{made['id']}" + ("/test" if method == "POST" else "")
        assert error_of(call(live_api, method, path, admin, {}), 404)["field"] == "id"
    assert all(
        c["source"] == "config" for c in data_of(call(live_api, "GET", "/llm-providers", admin))
    )


def test_config_providers_are_listed_read_only(live_api: str, admin: str) -> None:
    listed = {c["id"]: c for c in data_of(call(live_api, "GET", "/v1/llm-providers", admin))}
    assert set(listed) == {"config-echo", "config-OpenAI"}
    openai_provider = listed["config-OpenAI"]
    assert openai_provider["source"] == "config" and openai_provider["status"] == "active"
    assert openai_provider["apiKey"] == "sk-…cdef" and openai_provider["totalCost"] == "0"
    assert data_of(call(live_api, "GET", "/llm-providers/config-OpenAI", admin)) == openai_provider
    for method, body in (("PATCH", {"model": "x"}), ("PATCH", {}), ("DELETE", None)):
        for prefix in PREFIXES:
            refused = call(live_api, method, f"{prefix}/llm-providers/config-echo", admin, body)
            assert error_of(refused, 409)["code"] == "read_only_provider"
    assert error_of(call(live_api, "GET", "/v1/llm-providers/config-nope", admin), 404)


def with_model(**fields: Any) -> dict[str, Any]:
    """ECHO listing one model ``m`` with ``fields``."""
    return {**ECHO, "models": [{"id": "m", **fields}]}


def with_defaults(**fields: Any) -> dict[str, Any]:
    """ECHO with ``fields`` as its configuration."""
    return {**ECHO, "configuration": fields}


#: (body, the field its 400 names); the error's code is invalid_request
BAD_CREATES: list[tuple[dict[str, Any], str | None]] = [
    ({**ECHO, "provider": "bedrock"}, "provider"),
    ({**ECHO, "provider": "OpenAI"}, "provider"),
    ({**ECHO, "provider": None}, "provider"),
    ({"name": "x", "provider": "anthropic", "apiKey": ""}, "apiKey"),
    ({**ECHO, "baseUrl": "ftp://example.com"}, "baseUrl"),
    ({**ECHO, "baseUrl": "javascript:alert(1)"}, "baseUrl"),
    ({**ECHO, "baseUrl": "http://"}, "baseUrl"),
    ({**ECHO, "baseUrl": "http://[::1"}, "baseUrl"),
    ({**ECHO, "baseUrl": "https://user:pw@example.com/v1"}, "baseUrl"),
    ({**ECHO, "baseUrl": "https://example.com/v1?key=sk-x"}, "baseUrl"),
    ({**ECHO, "baseUrl": "https://example.com/v1#frag"}, "baseUrl"),
    ({**ECHO, "baseUrl": 80}, "baseUrl"),
    ({**ECHO, "colour": "red"}, "colour"),
    ({**ECHO, "apikey": "sk-x"}, "apikey"),
    ({**ECHO, "apiKey": "sk-x", "api_key": "sk-y"}, "api_key"),
    ({**ECHO, "id": "prov-mine"}, "id"),
    ({**ECHO, "totalCost": "0"}, "totalCost"),
    ({**ECHO, "source": "config"}, "source"),
    ({"provider": "echo"}, "name"),
    ({"name": "x"}, "provider"),
    ({**ECHO, "name": ""}, "name"),
    ({**ECHO, "name": " padded"}, "name"),
    ({**ECHO, "name": "a#b"}, "name"),
    ({**ECHO, "name": "tab\there"}, "name"),
    ({**ECHO, "name": "nul\u0000"}, "name"),
    ({**ECHO, "name": "right\u202eto left"}, "name"),
    ({**ECHO, "name": "x" * 101}, "name"),
    ({**ECHO, "name": 7}, "name"),
    ({**ECHO, "model": ""}, "model"),
    ({**ECHO, "model": "m\u001b[31m"}, "model"),
    ({**ECHO, "model": ["m1"]}, "model"),
    ({**ECHO, "status": "error"}, "status"),
    (with_defaults(temperature=5), "configuration.temperature"),
    (with_defaults(temperature=-0.1), "configuration.temperature"),
    (with_defaults(temperature="0.7"), "configuration.temperature"),
    (with_defaults(temperature=True), "configuration.temperature"),
    (with_defaults(maxTokens="4096"), "configuration.maxTokens"),
    (with_defaults(maxTokens=0), "configuration.maxTokens"),
    (with_defaults(maxTokens=2**31), "configuration.maxTokens"),
    (with_defaults(maxTokens=4096.5), "configuration.maxTokens"),
    (with_defaults(topP=1.5), "configuration.topP"),
    (with_defaults(stop=["a"] * 5), "configuration.stop"),
    (with_defaults(tools=[]), "configuration.tools"),
    ({**ECHO, "configuration": "hot"}, "configuration"),
    (with_model(prompt_price=0.5), "models[0].prompt_price"),  # a float is not exact
    (with_model(completion_price="-1"), "models[0].completion_price"),
    (with_model(prompt_price="lots"), "models[0].prompt_price"),
    (with_model(fallbacks=["echo#echo"]), "models[0].fallbacks"),
    (with_model(secret=1), "models[0].secret"),
    ({**ECHO, "models": [{"prompt_price": "1"}]}, "models[0].id"),
    ({**ECHO, "models": {"id": "m"}}, "models"),
    ({**ECHO, "models": [{"id": f"m{i}"} for i in range(201)]}, "models"),
    # prices and lengths a bill can hold: "1e400" overflowed the ledger at a test call
    (with_model(prompt_price="1e400"), "models[0].prompt_price"),
    (with_model(prompt_price="1.5"), "models[0].prompt_price"),
    (with_model(prompt_price="1" * 5000), "models[0].prompt_price"),
    (with_model(completion_price="1e-400"), "models[0].completion_price"),
    (with_model(context_length=10**23), "models[0].context_length"),
    (with_model(max_output_length=2**31), "models[0].max_output_length"),
    ({**ECHO, "models": [{"id": "m\u001b[2J"}]}, "models[0].id"),
    # a connection every model of which can be asked for (a request's model is <= 300)
    ({**ECHO, "name": "n" * 100, "model": "m" * 200}, "model"),
    ({**ECHO, "name": "n" * 100, "models": [{"id": "m" * 200}]}, "models[0].id"),
    # a lone surrogate anywhere was a 500 (no database stores one)
    (with_model(name="\ud800"), "models[0].name"),
    (with_model(input_modalities=["\udfff"]), "models[0].input_modalities[0]"),
    (with_defaults(stop="a\ud83d"), "configuration.stop"),
    ({**ECHO, "name": "x\ud800y"}, "name"),
    ({**ECHO, "\ud800": 1}, None),
]
#: (body, field, code) of the 400s with a code of their own
BAD_CREATES_CODED: list[tuple[dict[str, Any], str, str]] = [
    ({"name": "x", "provider": "openai", "model": "gpt-4o"}, "apiKey", "missing_field"),
    ({"name": "x", "provider": "custom", "model": "m"}, "baseUrl", "missing_field"),
    (  # an OpenAI model the price table does not know, and not listed
        {"name": "x", "provider": "openai", "apiKey": "sk-x", "model": "gpt-unheard-of"},
        "model",
        "model_price_unknown",
    ),
    (  # a custom server's model: no table knows its price
        {"name": "x", "provider": "custom", "baseUrl": "http://10.0.0.1/v1", "model": "llama"},
        "model",
        "model_price_unknown",
    ),
]


def test_bad_input_to_create_is_a_400_naming_the_field(
    live_api: str, admin: str, router: Router
) -> None:
    cases = [(b, f, "invalid_request") for b, f in BAD_CREATES] + BAD_CREATES_CODED
    for body, field, code in cases:
        error = error_of(call(live_api, "POST", "/v1/llm-providers", admin, body), 400)
        assert (error["field"], error["code"]) == (field, code), (body, error)
        if code == "model_price_unknown":
            assert body["model"] in error["message"] and "price" in error["message"]
        assert router.store.list_connections()[1] == [], body  # nothing was stored


def test_a_listed_model_needs_no_price_table(live_api: str, admin: str) -> None:
    made = create(
        live_api,
        admin,
        {
            "name": "Local",
            "provider": "custom",
            "baseUrl": "http://10.0.0.1/v1",
            "model": "llama",
            "models": [{"id": "llama", "prompt_price": "0.000001", "completion_price": "0"}],
        },
    )
    assert made["apiKey"] is None and made["models"][0]["prompt_price"] == "0.000001"


def test_a_taken_name_is_a_409_in_any_case(live_api: str, admin: str) -> None:
    create(live_api, admin, ECHO)
    # another connection's, a config provider's, a config provider's alias
    for name in ("Offline", "OFFLINE", "echo", "ECHO", "openai", "OAI", "oai"):
        taken = call(live_api, "POST", "/llm-providers", admin, {**ECHO, "name": name})
        error = error_of(taken, 409)
        assert (error["code"], error["field"]) == ("duplicate_name", "name"), name
    assert len(data_of(call(live_api, "GET", "/llm-providers", admin))) == 3


def test_a_rename_to_a_taken_name_is_a_409(live_api: str, admin: str) -> None:
    first = create(live_api, admin, ECHO)
    second = create(live_api, admin, {**ECHO, "name": "Second"})
    path = f"/v1/llm-providers/{second['id']}"
    for taken in ("offline", "Echo", "oai"):
        error = error_of(call(live_api, "PATCH", path, admin, {"name": taken}), 409)
        assert error["field"] == "name"
    assert data_of(call(live_api, "PATCH", path, admin, {"name": "SECOND"}))["name"] == "SECOND"
    renamed = data_of(
        call(live_api, "PATCH", f"/llm-providers/{first['id']}", admin, {"name": "Second x"})
    )
    assert renamed["name"] == "Second x"


#: (changes, the field its 400 names)
BAD_PATCHES: list[tuple[dict[str, Any], str]] = [
    ({"name": None}, "name"),
    ({"provider": None}, "provider"),
    ({"provider": "openai"}, "apiKey"),  # an openai connection needs a key
    ({"provider": "custom"}, "baseUrl"),
    ({"status": "error"}, "status"),
    ({"status": "paused"}, "status"),
    ({"model": None, "colour": 1}, "colour"),
    ({"configuration": {"temperature": 2.5}}, "configuration.temperature"),
    ({"configuration": {"maxTokens": "1"}}, "configuration.maxTokens"),
    ({"baseUrl": "file:///etc/passwd"}, "baseUrl"),
    ({"models": [{"id": "x", "prompt_price": 1e-6}]}, "models[0].prompt_price"),
    ({"provider": "gemini", "apiKey": "k", "model": "no-such-gemini"}, "model"),
    ({"name": "n" * 100, "model": "m" * 200}, "model"),
    ({"models": [{"id": "x", "name": "\udc00"}]}, "models[0].name"),
    ({"configuration": {"stop": ["ok", "\ud800"]}}, "configuration.stop[1]"),
    ({"models": [{"id": "x", "completion_price": "1e400"}]}, "models[0].completion_price"),
]


def test_bad_input_to_patch_changes_nothing(live_api: str, admin: str) -> None:
    made = create(live_api, admin, ECHO)
    path = f"/llm-providers/{made['id']}"
    for body, field in BAD_PATCHES:
        error = error_of(call(live_api, "PATCH", path, admin, body), 400)
        assert error["field"] == field, (body, error)
        assert data_of(call(live_api, "GET", path, admin)) == made, body


def test_patch_of_the_key_and_status(live_api: str, admin: str, fake_openai: FakeOpenAI) -> None:
    made = create(live_api, admin, openai_fields(fake_openai))
    path = f"/v1/llm-providers/{made['id']}"
    assert (
        error_of(call(live_api, "PATCH", path, admin, {"apiKey": None}), 400)["field"] == "apiKey"
    )
    rekeyed = data_of(call(live_api, "PATCH", path, admin, {"apiKey": "sk-proj-new-key-9876wxyz"}))
    assert rekeyed["apiKey"] == "sk-…wxyz"
    disabled = data_of(call(live_api, "PATCH", path, admin, {"status": "disabled"}))
    assert disabled["status"] == "disabled"
    assert data_of(call(live_api, "PATCH", path, admin, {"status": "active"}))["status"] == "active"
    created_disabled = create(live_api, admin, {**ECHO, "status": "disabled"})
    assert created_disabled["status"] == "disabled"


def test_the_wire_errors_are_in_the_envelope(live_api: str, admin: str, router: Router) -> None:
    made = create(live_api, admin, ECHO)
    one = f"/llm-providers/{made['id']}"
    for path, method in (("/v1/llm-providers", "POST"), (one, "PATCH")):
        for raw in (b"{not json", b"", b"[1, 2]", b'"name"', b"null", b"\xff\xfe"):
            assert error_of(call(live_api, method, path, admin, data=raw), 400)
    huge = b'{"name": "' + b"x" * (router.settings.max_body_bytes + 1) + b'"}'
    assert error_of(call(live_api, "POST", "/llm-providers", admin, data=huge), 413)
    for method, path in (
        ("PUT", "/v1/llm-providers"),
        ("DELETE", "/llm-providers"),
        ("PUT", one),
        ("POST", one),
        ("GET", f"{one}/test"),
        ("DELETE", f"/v1{one}/test"),
    ):
        refused = call(live_api, method, path, admin, {})
        assert error_of(refused, 405)["code"] == "method_not_allowed", (method, path)
        assert refused.headers["Allow"]
    for unknown in ("prov-ffffffffffffffffffffffffffffffff", "x" * 500, "%00", "config-", "..%2F"):
        for method in ("GET", "PATCH", "DELETE"):
            answer = call(live_api, method, f"/v1/llm-providers/{unknown}", admin, {})
            assert error_of(answer, 404)["code"] == "not_found", (method, unknown)
    assert error_of(call(live_api, "GET", f"/v1{one}/sessions/x/y/z", admin), 404)


ROUTES = [
    ("GET", "/llm-providers", None),
    ("POST", "/llm-providers", ECHO),
    ("GET", "/llm-providers/{id}", None),
    ("PATCH", "/llm-providers/{id}", {"name": "Renamed"}),
    ("DELETE", "/llm-providers/{id}", None),
    ("POST", "/llm-providers/{id}/test", None),
]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_only_an_admin_key_manages_connections(
    live_api: str, admin: str, router: Router, method: str, path: str, body: Any, prefix: str
) -> None:
    made = create(live_api, admin, {**ECHO, "name": "Target"})
    path = prefix + path.format(id=made["id"])
    plain = router.create_key("plain")[1]
    assert error_of(call(live_api, method, path, plain, body), 403)["code"] == "permission_denied"
    assert error_of(call(live_api, method, path, None, body), 401)["code"] == "invalid_api_key"
    for wrong in ("sk-llmr-" + "0" * 40, "Bearer", "x"):
        assert error_of(call(live_api, method, path, wrong, body), 401)
    empty = requests.request(
        method, live_api + path, headers={"Authorization": "Bearer "}, timeout=10
    )
    assert error_of(empty, 401)

    rotated, revoked = (
        router.create_key("rotated", admin=True),
        router.create_key("revoked", admin=True),
    )
    router.rotate_key(rotated[0].id)
    router.revoke_key(revoked[0].id)
    for stale in (rotated[1], revoked[1]):
        assert error_of(call(live_api, method, path, stale, body), 401)
    # nothing changed, nothing was tested (the test call would bill the provider totals)
    assert data_of(call(live_api, "GET", f"/llm-providers/{made['id']}", admin)) == made


def test_a_key_of_another_router_is_refused(
    live_api: str, make_router: Callable[..., Router], fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    elsewhere = make_router(connection_config(fake_openai.url, tmp_path / "other"))
    foreign = elsewhere.create_key("foreign admin", admin=True)[1]
    assert error_of(call(live_api, "GET", "/v1/llm-providers", foreign), 401)
    assert error_of(call(live_api, "POST", "/v1/llm-providers", foreign, ECHO), 401)


def test_without_a_secret_key_no_connection_is_stored(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    config = connection_config(fake_openai.url, tmp_path)
    del config["secret_key"]
    router = make_router(config)
    admin = router.create_key("admin", admin=True)[1]
    app = Flask("keyless-host")
    LLMRouter(app, router=router)
    with LoopbackServer(app) as server:
        for body in (openai_fields(fake_openai), ECHO):  # the Router could not start again
            refused = call(server.url, "POST", "/v1/llm-providers", admin, body)
            assert error_of(refused, 409) == {
                "code": "secret_key_missing",
                "field": "apiKey",
                "message": refused.json()["error"]["message"],
            }
            assert "secret_key" in refused.json()["error"]["message"]
        listed = data_of(call(server.url, "GET", "/v1/llm-providers", admin))
    assert [c["source"] for c in listed] == ["config", "config"]


def test_the_provider_key_is_never_shown_logged_or_stored_plainly(
    live_api: str,
    admin: str,
    router: Router,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-proj-WRONGwrongWRONG-5555"  # the fake OpenAI quotes a wrong key back
    seen: list[str] = []

    def text(answer: requests.Response) -> str:
        seen.append(answer.text + str(answer.headers))
        return answer.text

    made = create(live_api, admin, openai_fields(fake_openai, apiKey=wrong))
    one = f"/v1/llm-providers/{made['id']}"
    text(call(live_api, "GET", one, admin))
    text(call(live_api, "GET", "/llm-providers", admin))
    tested = call(live_api, "POST", f"{one}/test", admin)
    assert data_of(tested)["status"] == "error"
    text(tested)
    text(call(live_api, "GET", one, admin))  # statusReason is the upstream's reason
    text(call(live_api, "PATCH", one, admin, {"configuration": {"temperature": 9}}))
    text(call(live_api, "PATCH", one, admin, {"apiKey": UPSTREAM_KEY}))
    text(call(live_api, "POST", "/v1/llm-providers", admin, openai_fields(fake_openai)))  # 409
    text(call(live_api, "POST", "/v1/llm-providers", admin, {**ECHO, "apiKey": wrong, "x": 1}))
    text(call(live_api, "DELETE", one, admin))

    logged = "\n".join(r.getMessage() + str(r.args) for r in caplog.records)
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("store.db*"))  # WAL too
    for secret in (wrong, UPSTREAM_KEY):
        for part in (secret, secret[3:15], secret.removeprefix("sk-")[:-4]):
            assert all(part not in shown for shown in seen), part
            assert part not in logged, part
            assert part.encode() not in stored, part
    assert any("refused" in r.getMessage() for r in caplog.records)  # the test failure logged

"""The router inside a host's Flask app: the host's own login as the caller (with CSRF
protection for cookie callers), ``flask llmrouter …`` commands, ``current_router()`` and
the endpoint list under the prefix the app really uses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask, request, session
from flask.testing import FlaskClient
from sqlalchemy import create_engine

from flask_ext import LLMRouter, current_router
from llmrouter import Router
from llmrouter.http import CSRF_HEADER, ROUTES
from llmrouter.migrations.versions.r0001_baseline import baseline_metadata

CHAT = {"model": "echo#echo", "messages": [{"role": "user", "content": "hi there"}]}


@pytest.fixture
def app(router: Router) -> Flask:
    app = Flask("host-app")
    app.secret_key = "host-secret"
    llm = LLMRouter(app, router=router)

    @llm.identity_loader
    def signed_in_key() -> str | None:
        return session.get("key_id")

    @app.post("/login")
    def login() -> str:  # the host's own login, however it works
        session["key_id"] = request.form["key_id"]
        return "welcome"

    return app


@pytest.fixture
def browser(app: Flask) -> FlaskClient:
    return app.test_client()


def sign_in(browser: FlaskClient, key_id: str) -> None:
    assert browser.post("/login", data={"key_id": key_id}).status_code == 200


def test_a_signed_in_user_reads_without_a_bearer_secret(
    browser: FlaskClient, router: Router
) -> None:
    record, _ = router.create_key("alice")
    sign_in(browser, record.id)

    assert browser.get("/v1/usage").status_code == 200
    assert browser.get("/v1/usage", query_string={"key_id": "key_0000"}).status_code == 403


def test_a_cookie_request_that_changes_state_must_prove_it_is_same_site(
    browser: FlaskClient, router: Router
) -> None:
    record, _ = router.create_key("alice")
    sign_in(browser, record.id)

    refused = browser.post("/v1/chat/completions", json=CHAT)
    foreign = browser.post(
        "/v1/chat/completions", json=CHAT, headers={"Origin": "https://evil.example"}
    )
    with_header = browser.post("/v1/chat/completions", json=CHAT, headers={CSRF_HEADER: "1"})
    same_origin = browser.post(
        "/v1/chat/completions", json=CHAT, headers={"Origin": "http://localhost"}
    )

    for answer in (refused, foreign):
        assert answer.status_code == 403
        assert answer.get_json()["error"]["code"] == "permission_denied"
        assert CSRF_HEADER in answer.get_json()["error"]["message"]
    assert with_header.get_json()["choices"][0]["message"]["content"] == "hi there"
    assert same_origin.status_code == 200
    [usage] = router.usage(key_id=record.id)
    assert usage.requests == 2  # the refused ones were no calls


def test_a_bearer_secret_wins_over_the_signed_in_user(browser: FlaskClient, router: Router) -> None:
    alice, _ = router.create_key("alice")
    bob, bob_secret = router.create_key("bob")
    sign_in(browser, alice.id)

    answer = browser.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {bob_secret}"}
    )

    assert answer.status_code == 200  # no CSRF proof needed: a secret is not ambient
    assert [u.key_id for u in router.usage()] == [bob.id]


@pytest.mark.parametrize("who", ["revoked", "unknown", "junk"])
def test_a_signed_in_user_without_a_live_key_is_a_401(
    browser: FlaskClient, router: Router, who: str
) -> None:
    record, _ = router.create_key("gone")
    router.revoke_key(record.id)
    key_id = {"revoked": record.id, "unknown": "key_ffffffffffffffff", "junk": "\x00;"}[who]
    sign_in(browser, key_id)

    answer = browser.get("/v1/usage")

    assert answer.status_code == 401
    assert answer.get_json()["error"]["code"] == "invalid_api_key"


def test_an_empty_bearer_beside_a_signed_in_user_is_a_401_not_the_user(
    browser: FlaskClient, router: Router
) -> None:
    record, _ = router.create_key("alice")
    sign_in(browser, record.id)

    answer = browser.get("/v1/usage", headers={"Authorization": "Bearer  "})

    assert answer.status_code == 401
    assert "empty Bearer" in answer.get_json()["error"]["message"]


def test_nobody_signed_in_and_no_secret_is_a_401(browser: FlaskClient) -> None:
    answer = browser.post("/v1/chat/completions", json=CHAT, headers={CSRF_HEADER: "1"})
    assert answer.status_code == 401


def test_flask_llmrouter_runs_the_cli_on_the_apps_router(app: Flask, router: Router) -> None:
    runner = app.test_cli_runner()

    created = runner.invoke(args=["llmrouter", "keys", "create", "--name", "ops", "--json"])
    listed = runner.invoke(args=["llmrouter", "keys", "list", "--json"])
    usage = runner.invoke(args=["llmrouter", "usage", "--json"])
    wrong = runner.invoke(args=["llmrouter", "keys", "revoke", "key_nope"])

    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    assert key["name"] == "ops" and key["secret"].startswith("sk-llmr-")
    assert [k.id for k in router.list_keys()] == [key["id"]]
    assert [k["id"] for k in json.loads(listed.output)] == [key["id"]]
    assert json.loads(usage.output)["data"] == []
    assert wrong.exit_code == 1


def test_current_router_is_the_apps(app: Flask, router: Router) -> None:
    with app.app_context():
        assert current_router() is router
    with pytest.raises(RuntimeError, match="LLMRouter is not registered"):  # noqa: SIM117
        with Flask("bare").app_context():
            current_router()


@pytest.mark.parametrize(
    ("options", "listed"),
    [({}, "/v1"), ({"url_prefix": "/api/llm"}, "/api/llm")],
)
def test_the_endpoint_list_uses_the_prefix_the_app_really_uses(
    router: Router, options: dict[str, Any], listed: str
) -> None:
    app = Flask("host-app")
    LLMRouter(app, router=router, **options)
    client = app.test_client()

    info = client.get(f"{listed}/provider").get_json()

    assert info["endpoints"] == [
        *(f"{route.method} {listed}{route.shown}" for route in ROUTES),
        f"GET {listed}/health",
    ]
    assert {f"POST {listed}/chat/completions", f"GET {listed}/models/{{model_id}}"} <= set(
        info["endpoints"]
    )
    assert client.get(f"{listed}/health").get_json()["status"] == "healthy"
    assert client.get("/provider").status_code == 404  # the root is the host's
    assert client.get("/host-page").get_json() is None  # and so are its 404s


def test_the_hosts_own_root_routes_stay_the_hosts_whatever_the_order(router: Router) -> None:
    app = Flask("host-app")

    @app.get("/health")
    def host_health() -> str:
        return "host health"

    LLMRouter(app, router=router)

    @app.get("/usage")
    def host_usage() -> str:
        return "host usage page"

    @app.post("/chat/completions")
    def host_chat() -> str:
        return "host chat"

    client = app.test_client()
    assert client.get("/health").get_data(as_text=True) == "host health"
    assert client.get("/usage").get_data(as_text=True) == "host usage page"
    assert client.post("/chat/completions").get_data(as_text=True) == "host chat"
    assert client.get("/v1/usage").status_code == 401  # the router's, under its prefix


def test_the_root_routes_when_the_host_asks_for_them(router: Router) -> None:
    app = Flask("host-app")
    LLMRouter(app, router=router, unprefixed_routes=True, health_route="/health")
    client = app.test_client()
    assert client.get("/provider").get_json()["object"] == "provider"
    assert client.get("/health").get_json()["status"] == "healthy"


def test_a_database_behind_the_schema_keeps_the_api_off_until_flask_llmrouter_db_upgrade(
    tmp_path: Any,
) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    engine = create_engine(url)
    # tables as an older llmrouter made them (the baseline's), without a version row
    baseline_metadata("llmrouter_").create_all(engine)
    engine.dispose()
    config = {"database_url": url, "providers": [{"name": "echo", "kind": "echo"}]}

    def host() -> Flask:
        app = Flask("host-app")
        app.config["LLMROUTER_CONFIG"] = config
        LLMRouter(app)
        return app

    app = host()
    refused = app.test_client().get("/v1/models")
    upgraded = app.test_cli_runner().invoke(args=["llmrouter", "db", "upgrade"])
    restarted = host().test_client().get("/v1/models")

    assert refused.status_code == 503
    assert refused.get_json()["error"]["code"] == "store_unavailable"
    assert "llmrouter db upgrade" in refused.get_json()["error"]["message"]
    assert upgraded.exit_code == 0, upgraded.output
    assert "upgraded the database" in upgraded.output
    assert restarted.status_code == 200

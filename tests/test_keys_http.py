"""API keys over HTTP (issue 9, item 7): the admin routes and the caller's own key, bad
input named, rotation and restrictions refused at admission in every process sharing the
database (a second Router on it, with the old secret cached)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import requests
from flask import Flask

from flask_ext import LLMRouter
from llmrouter import AuthenticationError, ModelNotAllowedError, Router
from tests.conftest import database_urls, gateway_config

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def admin(router: Router) -> str:
    return router.create_key("admin", admin=True)[1]


def call(
    base: str, method: str, path: str, secret: str | None, body: Any = None
) -> requests.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return requests.request(method, base + path, json=body, headers=headers, timeout=10)


def chat(base: str, secret: str, model: str = "echo#echo") -> str | None:
    client = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
    return client.chat.completions.create(model=model, messages=HI).choices[0].message.content  # type: ignore[arg-type]


def test_an_admin_manages_keys_end_to_end(live_api: str, admin: str) -> None:
    made = call(
        live_api,
        "POST",
        "/v1/keys",
        admin,
        {"name": "bob", "credits": "2.50", "daily_requests": 5, "allowed_providers": ["echo"]},
    )
    assert made.status_code == 201, made.text
    key = made.json()
    secret = key.pop("secret")
    assert secret.startswith("sk-llmr-") and key["balance"] == "2.5"
    assert key["allowed_providers"] == ["echo"] and key["daily_requests"] == 5
    assert chat(live_api, secret) == "hi"

    for path in (f"/v1/keys/{key['id']}", f"/keys/{key['id']}", "/v1/keys", "/keys"):
        shown = call(live_api, "GET", path, admin)
        assert shown.status_code == 200 and secret not in shown.text
        assert "secret_hash" not in shown.text and '"secret"' not in shown.text

    changed = call(
        live_api,
        "PATCH",
        f"/v1/keys/{key['id']}",
        admin,
        {"name": "robert", "daily_requests": None},
    )
    assert changed.json()["name"] == "robert" and changed.json()["daily_requests"] is None
    topped = call(live_api, "POST", f"/v1/keys/{key['id']}/topup", admin, {"amount": "5.00"})
    assert topped.json()["balance"] == "7.5"

    rotated = call(live_api, "POST", f"/v1/keys/{key['id']}/rotate", admin).json()
    assert rotated["secret"] != secret
    with pytest.raises(openai.AuthenticationError):
        chat(live_api, secret)
    assert chat(live_api, rotated["secret"]) == "hi"

    revoked = call(live_api, "DELETE", f"/v1/keys/{key['id']}", admin)
    assert revoked.json()["revoked"] is True
    with pytest.raises(openai.AuthenticationError):
        chat(live_api, rotated["secret"])


def test_a_key_sees_and_rotates_only_itself(live_api: str, router: Router) -> None:
    record, secret = router.create_key("carol")
    me = call(live_api, "GET", "/v1/keys/me", secret)
    assert me.status_code == 200 and me.json()["id"] == record.id
    new = call(live_api, "POST", "/keys/me/rotate", secret).json()["secret"]
    assert call(live_api, "GET", "/v1/keys/me", secret).status_code == 401
    assert call(live_api, "GET", "/v1/keys/me", new).json()["id"] == record.id


ADMIN_ROUTES = [
    ("POST", "/v1/keys", {"name": "x"}),
    ("GET", "/v1/keys", None),
    ("GET", "/v1/keys/{id}", None),
    ("PATCH", "/v1/keys/{id}", {"name": "y"}),
    ("POST", "/v1/keys/{id}/rotate", None),
    ("POST", "/v1/keys/{id}/topup", {"amount": "1"}),
    ("DELETE", "/v1/keys/{id}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_admin_routes_refuse_no_key_and_a_non_admin_key(
    live_api: str, router: Router, method: str, path: str, body: Any
) -> None:
    record, secret = router.create_key("plain")
    path = path.format(id=record.id)
    missing = call(live_api, method, path, None, body)
    assert missing.status_code == 401
    foreign = call(live_api, method, path, secret, body)
    assert foreign.status_code == 403
    assert foreign.json()["error"]["code"] == "permission_denied"
    assert router.get_key(record.id) == record  # nothing changed
    assert call(live_api, "GET", "/v1/keys/me", None).status_code == 401


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x", "colour": "red"}, "colour"),
        ({"name": 5}, "name"),
        ({}, "name"),
        ({"name": "x", "daily_requests": -1}, "daily_requests"),
        ({"name": "x", "throttle_seconds": 0}, "throttle_seconds"),
        ({"name": "x", "requests_per_minute": "5"}, "requests_per_minute"),
        ({"name": "x", "daily_requests": 2**31}, "daily_requests"),
        ({"name": "x", "credits": 5.0}, "credits"),
        ({"name": "x", "credits": "five"}, "credits"),
        ({"name": "x", "credits": "-1"}, "credits"),
        ({"name": "x", "admin": "yes"}, "admin"),
        ({"name": "x", "allowed_models": "echo#echo"}, "allowed_models"),
        ({"name": "x", "allowed_models": ["altllm-basic"]}, "allowed_models[0]"),
        ({"name": "x", "allowed_models": ["echo#echo", 3]}, "allowed_models[1]"),
        ({"name": "x", "allowed_providers": ["echo#echo"]}, "allowed_providers[0]"),
        ({"name": "x", "allowed_tools": "lookup"}, "allowed_tools"),
        ({"name": "x", "allowed_tools": ["lookup", "look up"]}, "allowed_tools[1]"),
        ({"name": "x", "allowed_tools": ["t" * 65]}, "allowed_tools[0]"),
        ({"name": "x", "allowed_tools": [None]}, "allowed_tools[0]"),
        ({"name": "a\u0000b"}, "name"),
        ({"name": "\u001b[31mred"}, "name"),
        ({"name": "x", "credits": "1" + "0" * 5000}, "credits"),
        ({"name": "x", "credits": "1e8000000"}, "credits"),
    ],
)
def test_bad_input_to_create_is_a_400_naming_the_field(
    live_api: str, admin: str, body: dict[str, Any], param: str
) -> None:
    answer = call(live_api, "POST", "/v1/keys", admin, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_a_keys_allowed_tools_over_http(live_api: str, admin: str) -> None:
    made = call(live_api, "POST", "/v1/keys", admin, {"name": "t", "allowed_tools": ["lookup"]})
    assert made.status_code == 201, made.text
    key = made.json()
    assert key["allowed_tools"] == ["lookup"]
    path = f"/v1/keys/{key['id']}"
    assert call(live_api, "GET", path, admin).json()["allowed_tools"] == ["lookup"]
    none = call(live_api, "PATCH", path, admin, {"allowed_tools": []})
    assert (none.status_code, none.json()["allowed_tools"]) == (200, [])
    bad = call(live_api, "PATCH", path, admin, {"allowed_tools": ["a.b"]})
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "allowed_tools[0]")
    lifted = call(live_api, "PATCH", path, admin, {"allowed_tools": None})
    assert lifted.json()["allowed_tools"] is None
    plain = call(live_api, "POST", "/v1/keys", admin, {"name": "plain"}).json()
    assert plain["allowed_tools"] is None


def test_bad_input_to_the_other_routes(live_api: str, admin: str, router: Router) -> None:
    record, _ = router.create_key("target")
    patch = call(live_api, "PATCH", f"/v1/keys/{record.id}", admin, {"admin": True})
    assert (patch.status_code, patch.json()["error"]["param"]) == (400, "admin")
    patch = call(live_api, "PATCH", f"/v1/keys/{record.id}", admin, {"name": None})
    assert (patch.status_code, patch.json()["error"]["param"]) == (400, "name")
    top_up = call(live_api, "POST", f"/v1/keys/{record.id}/topup", admin, {"amount": 1.5})
    assert (top_up.status_code, top_up.json()["error"]["param"]) == (400, "amount")
    for huge in ("1" + "0" * 5000, "1e8000000", "1e-8000000"):  # refused before any maths
        top_up = call(live_api, "POST", f"/v1/keys/{record.id}/topup", admin, {"amount": huge})
        assert (top_up.status_code, top_up.json()["error"]["param"]) == (400, "amount")
    assert call(live_api, "POST", "/v1/keys", admin, ["x"]).status_code == 400
    for method, path, body in ADMIN_ROUTES[2:]:
        unknown = call(live_api, method, path.format(id="key_ffffffffffffffff"), admin, body)
        assert unknown.status_code == 404, (method, path)
    assert call(live_api, "PUT", f"/v1/keys/{record.id}", admin).status_code == 405


def test_unknown_models_may_be_allowed_and_restrictions_hold_for_fallbacks_too(
    live_api: str, admin: str
) -> None:
    made = call(
        live_api,
        "POST",
        "/v1/keys",
        admin,
        {"name": "later", "allowed_models": ["Future#model", "echo#echo"]},
    ).json()
    assert made["allowed_models"] == ["Future#model", "echo#echo"]
    assert chat(live_api, made["secret"], "altllm-basic") == "hi"  # the alias's echo#echo
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(live_api, made["secret"], "echo#echo-premium")
    assert refused.value.code == "model_not_allowed"


# ------------------------------------------------------------------ across processes


@pytest.fixture
def two_routers(
    database_url: str, make_router: Callable[..., Router]
) -> Iterator[tuple[Router, Router]]:
    config = gateway_config(database_url=database_url, key_cache_seconds=60)
    yield make_router(config), make_router(config)


pytestmark_matrix = pytest.mark.parametrize("database_url", database_urls(), indirect=True)


@pytestmark_matrix
def test_a_rotated_secret_is_refused_at_once_where_it_is_still_cached(
    two_routers: tuple[Router, Router],
) -> None:
    here, elsewhere = two_routers
    key, old = here.create_key("rotating")
    elsewhere.chat(model="echo#echo", messages=HI, api_key=old)  # cached there now
    assert elsewhere.authenticate(old).id == key.id

    _, new = here.rotate_key(key.id)

    with pytest.raises(AuthenticationError, match="rotated or revoked"):
        elsewhere.chat(model="echo#echo", messages=HI, api_key=old)
    with pytest.raises(AuthenticationError):  # the cache entry went with it
        elsewhere.authenticate(old)
    assert elsewhere.chat(model="echo#echo", messages=HI, api_key=new).choices
    [row] = here.usage(key_id=key.id)
    assert row.requests == 2  # the refused call took nothing


@pytestmark_matrix
def test_a_key_revoked_elsewhere_reads_no_usage_at_once(
    two_routers: tuple[Router, Router],
) -> None:
    here, elsewhere = two_routers
    key, secret = here.create_key("leaving", admin=True)
    app = Flask("host-app")
    LLMRouter(app, router=elsewhere)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/usage", headers=auth).status_code == 200  # cached there now

    here.revoke_key(key.id)

    assert client.get("/v1/usage", headers=auth).status_code == 401


@pytestmark_matrix
def test_restrictions_changed_elsewhere_hold_at_admission_at_once(
    two_routers: tuple[Router, Router],
) -> None:
    here, elsewhere = two_routers
    key, secret = here.create_key("restricted", allowed_models=["echo#echo"])
    with pytest.raises(ModelNotAllowedError):
        elsewhere.chat(model="echo#echo-premium", messages=HI, api_key=secret)
    elsewhere.chat(model="echo#echo", messages=HI, api_key=secret)  # cached there now

    here.update_key(key.id, allowed_models=["echo#echo-premium"])
    with pytest.raises(ModelNotAllowedError):
        elsewhere.chat(model="echo#echo", messages=HI, api_key=secret)

    here.update_key(key.id, allowed_models=None)  # lifted: the cached refusal is read again
    assert elsewhere.chat(model="echo#echo", messages=HI, api_key=secret).choices
    [row] = here.usage(key_id=key.id)
    assert row.requests == 2


def test_the_cli_shares_the_implementation(router: Router) -> None:
    from llmrouter import cli

    record, _ = router.create_key("cli")
    embedded = cli.Embedded(router=router, problem=None, schema_store=lambda: router.store)
    assert (
        cli.main(["keys", "update", record.id, "--allowed-model", "echo#echo"], embedded=embedded)
        == 0
    )
    assert router.get_key(record.id).allowed_models == ("echo#echo",)
    assert (
        cli.main(["keys", "update", record.id, "--daily-requests", "default"], embedded=embedded)
        == 0
    )
    assert cli.main(["keys", "rotate", record.id], embedded=embedded) == 0
    assert router.get_key(record.id).hint != record.hint
    assert (
        cli.main(["keys", "update", record.id, "--allowed-model", "bare"], embedded=embedded) == 1
    )

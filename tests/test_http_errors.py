"""Every bad input over HTTP gets OpenAI's error shape and the right status, never HTML."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from llmrouter import Router
from tests.upstreams.openai_server import FakeOpenAI, Fault


def post(
    live_api: str, path: str, *, key: str | None, body: bytes | str | None = None, **kw
) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return requests.post(live_api + path, data=body, headers=headers, timeout=5, **kw)


def assert_openai_error(response: requests.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


GOOD = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**GOOD, "temperature": "hot"}, "temperature"),
        ({**GOOD, "temperature": 2.01}, "temperature"),
        ({**GOOD, "top_p": 1.5}, "top_p"),
        ({**GOOD, "max_tokens": -5}, "max_tokens"),
        ({**GOOD, "stream": "yes"}, "stream"),
        ({"messages": GOOD["messages"]}, "model"),
        ({"model": "echo"}, "messages"),
        ({**GOOD, "messages": [{"role": "user"}]}, "messages[0]"),
        ({**GOOD, "messages": [{"content": "no role"}]}, "messages[0].role"),
        ({**GOOD, "tools": [{"type": "function"}]}, "tools[0].function"),
        ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(
    live_api: str, api_key: str, body: dict, param: str
) -> None:
    error = assert_openai_error(
        post(live_api, "/v1/chat/completions", key=api_key, body=json.dumps(body)), 400
    )
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]


@pytest.mark.parametrize("raw", ["{not json", "", "[1, 2]", '"text"', "null"])
def test_unparseable_or_non_object_body_is_400(live_api: str, api_key: str, raw: str) -> None:
    assert_openai_error(post(live_api, "/v1/chat/completions", key=api_key, body=raw), 400)


@pytest.mark.parametrize("key", [None, "", "sk-llmr-unknown", "Basic abc"])
def test_missing_or_unknown_key_is_401(live_api: str, key: str | None) -> None:
    response = post(live_api, "/v1/chat/completions", key=key, body=json.dumps(GOOD))
    assert_openai_error(response, 401, "invalid_api_key")


def test_revoked_key_is_401(live_api: str, router: Router) -> None:
    record, secret = router.create_key("x")
    router.revoke_key(record.id)
    error = assert_openai_error(
        post(live_api, "/v1/chat/completions", key=secret, body=json.dumps(GOOD)), 401
    )
    assert "revoked" in error["message"]


def test_unknown_model_is_404_with_suggestions(live_api: str, api_key: str) -> None:
    body = json.dumps({**GOOD, "model": "OpenAl#gpt-4o-mini"})
    error = assert_openai_error(
        post(live_api, "/v1/chat/completions", key=api_key, body=body), 404, "model_not_found"
    )
    assert "OpenAI#gpt-4o-mini" in error["message"]
    assert_openai_error(
        requests.get(live_api + "/v1/models/nope%23model", timeout=5), 404, "model_not_found"
    )


def test_sdk_raises_typed_errors(live_api: str, api_key: str) -> None:
    client = openai.OpenAI(base_url=live_api + "/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x"}], temperature=9
        )
    stranger = openai.OpenAI(base_url=live_api + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])


def test_wrong_method_is_405_and_unknown_route_404(live_api: str) -> None:
    response = requests.get(live_api + "/v1/chat/completions", timeout=5)
    assert_openai_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"
    assert_openai_error(requests.post(live_api + "/v1/models", timeout=5), 405)
    assert_openai_error(requests.get(live_api + "/v1/embeddingz", timeout=5), 404)


def test_body_too_large_is_413(live_api: str, api_key: str, router: Router) -> None:
    limit = router.settings.max_body_bytes
    body = json.dumps({**GOOD, "messages": [{"role": "user", "content": "x" * (limit + 10)}]})
    assert_openai_error(
        post(live_api, "/v1/chat/completions", key=api_key, body=body), 413, "request_too_large"
    )


def test_body_too_large_without_length_is_413(live_api: str, api_key: str, router: Router) -> None:
    chunk = b"x" * 65536
    pieces = (router.settings.max_body_bytes // len(chunk)) + 2

    def chunked():
        yield b'{"model": "echo", "messages": [{"role": "user", "content": "'
        for _ in range(pieces):
            yield chunk
        yield b'"}]}'

    response = post(live_api, "/v1/chat/completions", key=api_key, body=chunked())
    assert_openai_error(response, 413, "request_too_large")


def test_upstream_failure_keeps_message_but_not_secrets(
    live_api: str, api_key: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.extend([Fault(status=503)] * 5)
    body = json.dumps({**GOOD, "model": "OpenAI#gpt-4o-mini"})
    error = assert_openai_error(post(live_api, "/v1/chat/completions", key=api_key, body=body), 502)
    assert "scripted failure 503" in error["message"]
    assert "sk-upstream" not in json.dumps(error)


def test_deeply_nested_json_is_400_not_500(live_api: str, api_key: str) -> None:
    body = "[" * 5000 + "]" * 5000
    assert_openai_error(post(live_api, "/v1/chat/completions", key=api_key, body=body), 400)


def test_an_upstream_failure_still_carries_the_rate_limit_headers(
    live_api: str, api_key: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.extend([Fault(status=500)] * 5)
    body = json.dumps({**GOOD, "model": "OpenAI#gpt-4o-mini"})
    response = post(live_api, "/v1/chat/completions", key=api_key, body=body)
    assert_openai_error(response, 502)
    # as admitted: the failed call then hands its request back to the allowance
    assert response.headers["X-RateLimit-Limit"] == "200"
    assert response.headers["X-RateLimit-Remaining"] == "199"

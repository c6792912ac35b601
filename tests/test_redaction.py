"""No credential leaves: a canary API key and a canary header value, echoed by an upstream in
every form seen in the wild, never reach the caller, the HTTP client, a log line or the ledger.

The upstream here is a tiny echoing server of our own. What it does is asked for in the
request's own words (``status=401 shape=json``), so one upstream serves every case.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from flask import Flask, Response, request
from sqlalchemy import select

from flask_ext import LLMRouter
from llmrouter import Router
from llmrouter.config import ProviderSettings
from llmrouter.errors import UpstreamAuthError, UpstreamError
from llmrouter.redaction import REDACTED, Redactor
from llmrouter.store.tables import ledger
from tests.upstreams.loopback import LoopbackServer

API_KEY = "sk-proj-Canary7Key7Q9xZ2mW4vB8nR6tY1uI3oP5"
HEADER_SECRET = "azure-Canary-Header-Value-81f3c2d9e7"
KINDS = {"openai": "/v1", "anthropic": "", "gemini": "/v1beta"}
MODEL = "canary-model"


def leaked(text: str) -> list[str]:
    """The runs of 8 characters of a canary found in ``text`` (case-insensitively), but
    for those inside the public ``sk-proj-`` prefix."""
    lowered = text.lower()
    found = []
    for secret, public in ((API_KEY, "sk-proj-"), (HEADER_SECRET, "")):
        s = secret.lower()
        for i in range(len(s) - 7):
            window = s[i : i + 8]
            if not public.startswith(window) and window in lowered:
                found.append(window)
    return found


# --------------------------------------------------------------------------- the Redactor


@pytest.mark.parametrize(
    "form",
    [
        API_KEY,
        "..." + API_KEY[-12:],
        API_KEY.removeprefix("sk-proj-"),
        API_KEY.upper(),
        API_KEY.lower(),
        "Bearer " + API_KEY,
        API_KEY[:14],  # the prefix and a few of its own
        API_KEY[10:18],  # any 8 in the middle
        json.dumps({"headers": {"authorization": f"Bearer {API_KEY}"}}),
        HEADER_SECRET,
        HEADER_SECRET[-8:],
        HEADER_SECRET.upper(),
        f"{API_KEY}{HEADER_SECRET}",
    ],
)
def test_every_form_of_a_secret_is_cut(form: str) -> None:
    redactor = Redactor([API_KEY, HEADER_SECRET])

    redacted = redactor.redact(f"Incorrect key: {form} (see the docs)")

    assert leaked(redacted) == []
    assert redacted.startswith("Incorrect key: ")
    assert redacted.endswith(" (see the docs)")
    assert REDACTED in redacted


def test_text_without_a_secret_is_unchanged() -> None:
    redactor = Redactor([API_KEY, HEADER_SECRET])
    text = "The model `gpt-4o` does not exist; sk-proj- keys are described at /docs."

    assert redactor.redact(text) == text


def test_a_stretch_of_secret_becomes_one_marker_with_its_prefix() -> None:
    redactor = Redactor([API_KEY])

    assert redactor.redact(f"key {API_KEY}.") == "key [redacted]."
    assert redactor.redact(f"key ...{API_KEY[-12:].upper()}!") == "key ...[redacted]!"


def test_a_short_secret_is_cut_where_it_stands_whole() -> None:
    redactor = Redactor(["s3cReT"])

    assert redactor.redact("token S3CRET refused; s3cre is not it") == (
        "token [redacted] refused; s3cre is not it"
    )


def test_key_shaped_strings_are_cut_even_when_not_ours() -> None:
    redactor = Redactor([])

    assert redactor.redact("Incorrect API key provided: sk-other-0123456789, see") == (
        "Incorrect API key provided: [redacted], see"
    )


def test_the_secrets_of_a_provider_are_its_key_and_its_header_values() -> None:
    settings = ProviderSettings(
        name="Azure",
        kind="openai",
        api_key="k-2f9d1c7e",
        headers={
            "api-key": HEADER_SECRET,
            "X-Tenant": "tenant-7c1e9a42f0",
            "anthropic-version": "2023-06-01",
            "Content-Type": "application/json; charset=utf-8",
            "X-Debug": "1",
        },
    )
    redactor = Redactor.for_provider(settings)
    text = (
        f"key k-2f9d1c7e, header {HEADER_SECRET}, tenant TENANT-7C1E9A42F0, "
        "version 2023-06-01, type application/json; charset=utf-8, debug 1"
    )

    assert redactor.redact(text) == (
        "key [redacted], header [redacted], tenant [redacted], "
        "version 2023-06-01, type application/json; charset=utf-8, debug 1"
    )


def test_a_64_kib_message_is_redacted_quickly() -> None:
    redactor = Redactor([API_KEY, HEADER_SECRET])
    # Worst case: the whole message is made of secrets and near-misses.
    message = (API_KEY + " " + API_KEY[:-1].upper() + " " + HEADER_SECRET[3:] + " ") * 500
    message = message[: 64 * 1024]

    started = time.perf_counter()
    redacted = redactor.redact(message)
    elapsed = time.perf_counter() - started

    assert leaked(redacted) == []
    assert elapsed < 1.0


def test_characters_that_lower_case_to_two_keep_the_offsets() -> None:
    redactor = Redactor([API_KEY])

    assert redactor.redact(f"İİ {API_KEY} İ") == "İİ [redacted] İ"


# --------------------------------------------------------------------------- the echoing upstream

ASK = re.compile(rb"status=(\d+) shape=(\w+)")


def echo_app() -> Flask:
    """An upstream of any kind that fails as asked, quoting what it was sent in every form."""
    app = Flask("echoing-upstream")

    @app.post("/<path:route>")
    def answer(route: str) -> Response:
        asked = ASK.search(request.get_data())
        assert asked, "the request says what to do"
        status, shape = int(asked[1]), asked[2].decode()
        key = (
            request.headers.get("x-api-key")
            or request.headers.get("x-goog-api-key")
            or request.headers.get("Authorization", "").removeprefix("Bearer ")
        )
        header = request.headers.get("api-key", "")
        quoted = (
            f"echo says: key {key}, ...{key[-12:]}, {key.removeprefix('sk-proj-')}, "
            f"{key.upper()}, header {header}, ...{header[-12:]}, {header.upper()}"
        )
        sent = {name.lower(): value for name, value in request.headers.items()}
        if shape == "json":
            body = {"error": {"message": quoted, "type": "invalid_request_error", "code": None}}
            return Response(json.dumps(body), status, content_type="application/json")
        if shape == "nomessage":  # no message string: the router shows the JSON itself
            body = {"error": {"code": status, "details": {"sent": sent, "quoted": quoted}}}
            return Response(json.dumps(body), status, content_type="application/json")
        if shape == "text":
            return Response(quoted, status, content_type="text/plain")
        if shape == "reason":  # an empty body, the key in the status line's reason
            return Response(b"", f"{status} Bad key {key}")
        error = json.dumps({"error": {"message": quoted, "type": f"bad_{key}"}})
        first = _first_event(route, request.get_json())
        events = ([first] if shape == "midstream" else []) + [error]
        return Response(
            "".join(f"data: {event}\n\n" for event in events), 200, content_type="text/event-stream"
        )

    return app


def _first_event(route: str, body: dict[str, Any]) -> str:
    """One chunk of an answer in the kind's own stream format (OpenAI's or Gemini's)."""
    if "generateContent" in route or "streamGenerateContent" in route:
        return json.dumps(
            {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}}]}
        )
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": body.get("model", MODEL),
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}],
    }
    return json.dumps(chunk)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with LoopbackServer(echo_app()) as server:
        yield server.url


@pytest.fixture(params=list(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def router(make_router: Callable[..., Router], upstream: str, kind: str) -> Router:
    provider = {
        "name": "Canary",
        "kind": kind,
        "base_url": upstream + KINDS[kind],
        "api_key": API_KEY,
        "headers": {"api-key": HEADER_SECRET},
        "max_retries": 0,
        "retry_backoff": 0,
        "read_timeout": 5,
        "models": [{"id": MODEL, "prompt_price": "0.000001", "completion_price": "0.000002"}],
    }
    return make_router({"database_url": "sqlite://", "providers": [provider]})


@pytest.fixture
def client(router: Router) -> Iterator[openai.OpenAI]:
    app = Flask("host-app")
    LLMRouter(app, router=router)
    with LoopbackServer(app) as server:
        yield openai.OpenAI(
            base_url=server.url + "/v1", api_key=router.create_key("canary")[1], max_retries=0
        )


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """Everything logged so far, messages and tracebacks."""
    caplog.set_level(logging.DEBUG)
    formatter = logging.Formatter()

    def text() -> str:
        return "\n".join(formatter.format(record) for record in caplog.records)

    return text


def ledger_errors(router: Router) -> list[str]:
    with router.store.transaction() as conn:
        return [row.error or "" for row in conn.execute(select(ledger)).all()]


def ask(status: int, shape: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"status={status} shape={shape}"}]


FAILURES = [
    pytest.param(status, shape, id=f"{status}-{shape}")
    for status in (400, 401, 403, 404, 422, 429, 500, 503)
    for shape in ("json", "nomessage", "text")
] + [pytest.param(500, "reason", id="500-reason"), pytest.param(401, "reason", id="401-reason")]
# Over HTTP the same errors are only rendered, so fewer shapes suffice.
HTTP_FAILURES = [
    pytest.param(status, "json", id=f"{status}-json")
    for status in (400, 401, 403, 404, 422, 429, 500, 503)
] + [pytest.param(500, "nomessage", id="500-nomessage"), pytest.param(403, "text", id="403-text")]


@pytest.mark.parametrize(("status", "shape"), FAILURES)
def test_an_echoed_credential_never_reaches_the_python_caller_the_log_or_the_ledger(
    router: Router, status: int, shape: str, logs: Callable[[], str]
) -> None:
    secret = router.create_key("canary")[1]

    with pytest.raises(UpstreamError) as caught:
        router.chat(model=f"Canary#{MODEL}", messages=ask(status, shape), api_key=secret)

    seen = [str(caught.value), repr(caught.value), json.dumps(caught.value.to_dict())]
    assert leaked("\n".join([*seen, logs(), *ledger_errors(router)])) == []
    if status in (401, 403):
        assert isinstance(caught.value, UpstreamAuthError)
        assert caught.value.message == (
            f"Canary: the provider refused the router's credentials (HTTP {status})"
        )
        assert "refused the router's credentials" in logs()
    elif shape in ("json", "text"):
        assert "echo says" in caught.value.message and REDACTED in caught.value.message


@pytest.mark.parametrize(("status", "shape"), HTTP_FAILURES)
def test_an_echoed_credential_never_reaches_the_http_client(
    router: Router,
    client: openai.OpenAI,
    status: int,
    shape: str,
    logs: Callable[[], str],
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=f"Canary#{MODEL}", messages=ask(status, shape))  # type: ignore[arg-type]

    assert leaked(caught.value.response.text + logs() + "\n".join(ledger_errors(router))) == []
    if status in (401, 403):
        assert caught.value.code == "upstream_auth_error"
        assert "refused the router's credentials" in caught.value.message


# The echoing upstream speaks OpenAI's and Gemini's stream formats mid-stream, not Anthropic's.
STREAM_CASES = [
    (kind, shape)
    for kind in KINDS
    for shape in ("firstevent", "midstream")
    if not (shape == "midstream" and kind == "anthropic")
]


@pytest.mark.parametrize(("kind", "shape"), STREAM_CASES, indirect=["kind"])
def test_an_echoed_credential_in_a_stream_error_event_never_leaves(
    router: Router, client: openai.OpenAI, kind: str, shape: str, logs: Callable[[], str]
) -> None:
    received: list[str] = []

    with pytest.raises(openai.APIError) as caught:
        stream = client.chat.completions.create(
            model=f"Canary#{MODEL}",
            messages=ask(200, shape),  # type: ignore[arg-type]
            stream=True,
        )
        for chunk in stream:
            received.append(chunk.model_dump_json())

    error = caught.value
    seen = [str(error), json.dumps(error.body), *received]
    if isinstance(error, openai.APIStatusError):
        seen.append(error.response.text)
    assert leaked("\n".join(seen) + logs() + "\n".join(ledger_errors(router))) == []
    if shape == "midstream":
        assert "Hi" in "".join(received)

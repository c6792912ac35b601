"""The transport's mapping of upstream statuses and connection failures to ``Upstream*``
errors, each with the scope the circuit breakers read, and ``Retry-After`` in both forms.

Upstreams here are tiny servers of our own on 127.0.0.1: a Flask app answering the status
asked for in the request, and raw sockets that fail mid-conversation.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from email.utils import formatdate
from typing import Any

import pytest
from flask import Flask, Response, request

from llmrouter.config import ProviderSettings
from llmrouter.errors import (
    FailureScope,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
)
from llmrouter.providers.base import ProviderAdapter
from llmrouter.providers.http import retry_after_seconds
from llmrouter.providers.registry import build_adapter
from llmrouter.schemas import ChatRequest
from tests.upstreams.loopback import LoopbackServer

MODEL = "some-model"


def status_app() -> Flask:
    """Answers with the status and headers the request's one message asks for, as JSON."""
    app = Flask("status-upstream")

    @app.post("/<path:route>")
    def answer(route: str) -> Response:
        asked = _instruction(request.get_json())
        error = asked.get("error", {"message": f"failed with {asked['status']}"})
        return Response(
            json.dumps({"error": error}),
            asked["status"],
            headers=asked.get("headers", {}),
            content_type="application/json",
        )

    return app


def _instruction(value: Any) -> Any:
    """The JSON object written as the request's message, wherever the kind put the text."""
    if isinstance(value, str) and value.startswith("{"):
        return json.loads(value)
    children = value.values() if isinstance(value, dict) else value
    for child in children if isinstance(value, (dict, list)) else ():
        found = _instruction(child)
        if found is not None:
            return found
    return None


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with LoopbackServer(status_app()) as server:
        yield server.url


def adapter_for(base_url: str, kind: str = "openai", **settings: Any) -> ProviderAdapter:
    settings = {"read_timeout": 5, "connect_timeout": 2, **settings}
    return build_adapter(
        ProviderSettings(
            name="Up", kind=kind, base_url=base_url, api_key="k-1234567890", **settings
        )
    )


def ask(**what: Any) -> ChatRequest:
    """A request whose message tells the status upstream what to answer."""
    return ChatRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": json.dumps(what)}]}
    )


def failure(base_url: str, kind: str = "openai", **what: Any) -> UpstreamError:
    with closing(adapter_for(base_url, kind)) as adapter, pytest.raises(UpstreamError) as caught:
        adapter.chat(ask(**what), MODEL)
    return caught.value


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("status", "error", "scope"),
    [
        (400, UpstreamRejectedError, FailureScope.REQUEST),
        (404, UpstreamRejectedError, FailureScope.REQUEST),
        (413, UpstreamRejectedError, FailureScope.REQUEST),
        (422, UpstreamRejectedError, FailureScope.REQUEST),
        (401, UpstreamAuthError, FailureScope.PROVIDER),
        (403, UpstreamAuthError, FailureScope.PROVIDER),
        (429, UpstreamRateLimitError, FailureScope.DEPLOYMENT),
        (408, UpstreamTimeoutError, FailureScope.DEPLOYMENT),
        (504, UpstreamTimeoutError, FailureScope.DEPLOYMENT),
        (500, UpstreamError, FailureScope.DEPLOYMENT),
        (502, UpstreamError, FailureScope.DEPLOYMENT),
        (503, UpstreamError, FailureScope.DEPLOYMENT),
    ],
)
def test_each_status_is_its_error_with_its_scope(
    upstream: str, status: int, error: type[UpstreamError], scope: FailureScope
) -> None:
    caught = failure(upstream + "/v1", status=status)

    assert type(caught) is error
    assert caught.scope is scope
    assert caught.upstream_status == status
    assert caught.provider == "Up"


def test_a_404_is_the_requests_fault_shown_as_our_400(upstream: str) -> None:
    caught = failure(upstream + "/v1", status=404, error={"message": "no such model"})

    assert (caught.status, caught.code) == (400, "upstream_rejected_request")
    assert not caught.retryable
    assert "no such model" in caught.message


@pytest.mark.parametrize("status", [429, 500, 503])
def test_retry_after_in_seconds_is_read(upstream: str, status: int) -> None:
    caught = failure(upstream + "/v1", status=status, headers={"Retry-After": "7"})

    assert caught.retry_after == 7.0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_as_an_http_date_is_read(upstream: str, status: int) -> None:
    in_two_minutes = formatdate(time.time() + 120, usegmt=True)

    caught = failure(upstream + "/v1", status=status, headers={"Retry-After": in_two_minutes})

    assert caught.retry_after is not None and 115 <= caught.retry_after <= 121


def test_a_rate_limits_retry_after_is_passed_to_the_client(upstream: str) -> None:
    caught = failure(upstream + "/v1", status=429, headers={"Retry-After": "2.5"})

    assert caught.headers["Retry-After"] == "3"


def test_retry_after_is_not_read_on_a_refusal(upstream: str) -> None:
    caught = failure(upstream + "/v1", status=400, headers={"Retry-After": "7"})

    assert caught.retry_after is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:30:00 GMT", 120.0),
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT

    assert retry_after_seconds(value, now=now) == seconds


# --------------------------------------------------------------------------- Gemini


def test_geminis_invalid_key_is_our_own_auth_message(upstream: str) -> None:
    refusal = {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
        ],
    }

    caught = failure(upstream + "/v1beta", "gemini", status=400, error=refusal)

    assert type(caught) is UpstreamAuthError and caught.scope is FailureScope.PROVIDER
    assert caught.message == "Up: the provider refused the router's credentials (HTTP 400)"


def test_geminis_failed_precondition_is_the_whole_providers(upstream: str) -> None:
    refusal = {
        "code": 400,
        "message": "User location is not supported.",
        "status": "FAILED_PRECONDITION",
    }

    caught = failure(upstream + "/v1beta", "gemini", status=400, error=refusal)

    assert type(caught) is UpstreamError and caught.scope is FailureScope.PROVIDER
    assert "User location is not supported" in caught.message


def test_geminis_retry_delay_reaches_the_retry_after_header(upstream: str) -> None:
    limited = {
        "code": 429,
        "message": "You exceeded your current quota.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
    }

    caught = failure(upstream + "/v1beta", "gemini", status=429, error=limited)

    assert isinstance(caught, UpstreamRateLimitError)
    assert caught.retry_after == 37.0 and caught.headers["Retry-After"] == "37"


# --------------------------------------------------------------------------- connections


class RawServer:
    """A socket on 127.0.0.1 that answers each connection with ``reply(connection)``."""

    def __init__(self, reply: Callable[[socket.socket], None]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        self._reply = reply
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                self._reply(connection)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(reply: Callable[[socket.socket], None]) -> RawServer:
        servers.append(RawServer(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def closed_port_url() -> str:
    with socket.socket() as sock:  # bound, never listening: connecting is refused
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_a_refused_connection_is_the_whole_providers_failure() -> None:
    caught = failure(closed_port_url())

    assert type(caught) is UpstreamError and caught.scope is FailureScope.PROVIDER
    assert caught.retryable
    assert "could not connect" in caught.message


def test_a_failed_tls_handshake_is_the_whole_providers_failure(upstream: str) -> None:
    caught = failure(upstream.replace("http://", "https://") + "/v1")

    assert caught.scope is FailureScope.PROVIDER
    assert "SSLError" in caught.message


def test_a_connection_closed_before_an_answer_is_the_deployments(
    raw_server: Callable[[Callable[[socket.socket], None]], RawServer],
) -> None:
    server = raw_server(lambda connection: None)  # reads the request, closes

    caught = failure(server.url)

    assert type(caught) is UpstreamError and caught.scope is FailureScope.DEPLOYMENT


def test_an_answer_cut_mid_body_is_the_deployments(
    raw_server: Callable[[Callable[[socket.socket], None]], RawServer],
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    server = raw_server(lambda connection: connection.sendall(head + b'{"id": "chatcmpl-'))

    caught = failure(server.url)

    assert type(caught) is UpstreamError and caught.scope is FailureScope.DEPLOYMENT
    assert "broke off" in caught.message


def test_no_answer_within_the_read_timeout_is_the_deployments(
    raw_server: Callable[[Callable[[socket.socket], None]], RawServer],
) -> None:
    server = raw_server(lambda connection: time.sleep(1.0))

    with (
        closing(adapter_for(server.url, read_timeout=0.2)) as adapter,
        pytest.raises(UpstreamTimeoutError) as caught,
    ):
        adapter.chat(ask(), MODEL)

    assert caught.value.scope is FailureScope.DEPLOYMENT

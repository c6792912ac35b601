"""``RouterMiddleware`` in front of WSGI apps that are not Flask: a plain callable and a
Bottle app, through the ``openai`` SDK over real HTTP on 127.0.0.1, and under gunicorn."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bottle
import openai
import pytest
import requests
from sqlalchemy import select

from llmrouter import Router
from llmrouter.store.tables import ledger
from llmrouter.wsgi import RouterMiddleware
from tests.conftest import free_port, gateway_config, wait_for, wait_until_serving
from tests.upstreams.loopback import LoopbackServer
from tests.upstreams.openai_server import FakeOpenAI, Fault

HELLO = [{"role": "user", "content": "hello there"}]


def plain_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A host app that knows nothing of llmrouter."""
    body = f"host saw {environ['REQUEST_METHOD']} {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Host", "yes")])
    return [body]


def bottle_app() -> bottle.Bottle:
    app = bottle.Bottle()

    @app.route("/")
    def index() -> str:
        return "bottle home"

    @app.route("/llm-ish")
    def lookalike() -> str:
        return "not the router's"

    return app


@pytest.fixture(params=["plain", "bottle"])
def host(request: pytest.FixtureRequest) -> Any:
    return plain_app if request.param == "plain" else bottle_app()


@pytest.fixture
def served(host: Any, router: Router) -> Iterator[str]:
    with LoopbackServer(RouterMiddleware(host, router, prefix="/llm")) as server:
        yield server.url


def sdk(base: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key=secret, max_retries=0)


@pytest.mark.parametrize("path", ["/llm/v1", "/llm"])
def test_the_api_answers_under_the_prefix_with_and_without_v1(
    served: str, api_key: str, path: str
) -> None:
    client = sdk(served + path, api_key)

    reply = client.chat.completions.create(model="echo#echo", messages=HELLO)
    streamed = client.chat.completions.create(model="echo#echo", messages=HELLO, stream=True)

    assert reply.choices[0].message.content == "hello there"
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == (
        "hello there"
    )
    assert "echo#echo" in {m.id for m in client.models.list()}
    assert client.models.retrieve("echo#echo").id == "echo#echo"


def test_every_other_path_reaches_the_host_untouched(served: str, host: Any) -> None:
    for path in ["/", "/llm-ish", "/v1/models", "/health"]:
        response = requests.get(served + path, timeout=5)
        if host is plain_app:
            assert response.text == f"host saw GET {path}"
            assert response.headers["X-Host"] == "yes"
        else:  # Bottle's own answers, its own 404 page included
            expected = {"/": "bottle home", "/llm-ish": "not the router's"}.get(path)
            assert response.status_code == (200 if expected else 404)
            assert response.text == expected if expected else "<html" in response.text.lower()


def test_the_api_under_the_prefix_lists_its_own_endpoints_and_errors(
    served: str, api_key: str
) -> None:
    info = requests.get(served + "/llm/v1/provider", timeout=5).json()
    assert "POST /llm/v1/chat/completions" in info["endpoints"]
    assert "GET /llm/health" in info["endpoints"]
    assert requests.get(served + "/llm/health", timeout=5).json()["status"] == "healthy"

    unknown = requests.get(served + "/llm/v1/nope", timeout=5)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Unknown route: GET /llm/v1/nope"
    wrong = requests.get(served + "/llm/v1/chat/completions", timeout=5)
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, "POST")
    anonymous = requests.post(served + "/llm/v1/chat/completions", json={}, timeout=5)
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "invalid_api_key")


def test_head_answers_like_get_without_a_body_and_options_names_the_method(
    served: str,
) -> None:
    head = requests.head(served + "/llm/health", timeout=5)
    options = requests.options(served + "/llm/v1/chat/completions", timeout=5)
    assert (head.status_code, head.text, head.headers["Content-Type"]) == (
        200,
        "",
        "application/json",
    )
    assert (options.status_code, options.headers["Allow"]) == (204, "POST, OPTIONS")


def test_a_client_leaving_mid_stream_is_billed_partial(
    router: Router, api_key: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.append(Fault(chunk_pause=0.2, no_usage=True))
    with LoopbackServer(RouterMiddleware(plain_app, router, prefix="/llm")) as server:
        response = requests.post(
            server.url + "/llm/v1/chat/completions",
            headers={"Authorization": f"Bearer {api_key}"},
            json={
                "model": "OpenAI#gpt-4o-mini",
                "stream": True,
                "messages": [{"role": "user", "content": " ".join(["w"] * 30)}],
            },
            stream=True,
            timeout=10,
        )
        lines = (line for line in response.iter_lines() if line)
        next(lines), next(lines)
        response.close()
        row = _settled_row(router)
    assert row.status == "partial" and row.usage_estimated and row.completion_tokens > 0
    assert wait_for(lambda: fake_openai.stream_endings == ["aborted"])


def _settled_row(router: Router) -> Any:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with router.store.transaction() as conn:
            row = conn.execute(select(ledger).where(ledger.c.status != "pending")).first()
        if row is not None:
            return row
        time.sleep(0.05)
    raise AssertionError("the stream was never settled")


# ------------------------------------------------------------------------------ gunicorn


def test_under_gunicorn_gthread(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    config = gateway_config(fake_openai.url)
    config["database_url"] = f"sqlite:///{tmp_path}/router.db"
    (tmp_path / "hostapp.py").write_text(
        textwrap.dedent(
            f"""
            from llmrouter import Router
            from llmrouter.wsgi import RouterMiddleware

            def host(environ, start_response):
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"host"]

            router = Router.from_config({config!r})
            app = RouterMiddleware(host, router, prefix="/llm")
            """
        )
    )
    secret = Router.from_config(config).create_key("gunicorn")[1]
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "gthread",
            "--threads",
            "4",
            "--workers",
            "1",
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(tmp_path),
            "hostapp:app",
        ],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(base + "/llm/health", server)
        client = sdk(base + "/llm/v1", secret)
        reply = client.chat.completions.create(model="OpenAI#gpt-4o-mini", messages=HELLO)
        streamed = client.chat.completions.create(
            model="OpenAI#gpt-4o-mini", messages=HELLO, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert reply.choices[0].message.content == text == "You said: hello there"
        assert requests.get(base + "/", timeout=5).text == "host"
    finally:
        server.terminate()
        server.wait(timeout=20)
    usage = Router.from_config(config).usage()
    assert sum(row.requests for row in usage) == 2

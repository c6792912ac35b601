"""Every file under examples/ runs: the scripts as scripts, the apps through their clients."""

from __future__ import annotations

import json
import os
import runpy
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from openai import OpenAI

from llmrouter import Router
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CHAT = {"model": "echo#echo", "messages": [{"role": "user", "content": "Hello there"}]}


def run_example(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# --- (a) an existing Flask app with Flask-SQLAlchemy and Flask-Login -------------------


@pytest.fixture
def flask_host_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.chdir(tmp_path)  # a relative path resolved against the cwd would land here
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from flask_host_app import create_app

    app = create_app({"TESTING": True}, instance_path=str(tmp_path / "instance"))
    yield app
    from flask_ext import current_router

    with app.app_context():
        current_router().close()


def test_flask_host_app_bills_its_users_into_its_own_database(
    flask_host_app: Any, tmp_path: Path
) -> None:
    client = flask_host_app.test_client()
    assert b"Sign up" in client.get("/").data  # the host's own page
    signed_up = client.post("/signup", data={"email": "ada@example.com", "password": "pw"})
    assert signed_up.status_code == 302
    assert b"X-LLMRouter-CSRF" in client.get("/").data  # the chat page, signed in

    # The browser's session cookie is the caller: no secret, the CSRF header set.
    answer = client.post("/v1/chat/completions", json=CHAT, headers={"X-LLMRouter-CSRF": "1"})
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["choices"][0]["message"]["content"] == "Hello there"
    # Without the header (what another site's form would send) it is refused.
    refused = client.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "permission_denied"
    assert client.get("/my-usage").get_json()["requests"] == 1

    # Bearer secrets keep working beside the login, e.g. for the user's own scripts.
    from flask_ext import current_router

    with flask_host_app.app_context():
        _, secret = current_router().create_key("script")
    bearer = flask_host_app.test_client().post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"}
    )
    assert bearer.status_code == 200

    client.post("/logout")
    signed_out = client.post("/v1/chat/completions", json=CHAT, headers={"X-LLMRouter-CSRF": "1"})
    assert signed_out.status_code == 401

    # One database file, the host's, in its instance folder: its tables and the router's.
    assert not list(tmp_path.glob("*.db"))
    database = tmp_path / "instance" / "host.db"
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("select name from sqlite_master")}
        assert "users" in tables
        assert {"llmrouter_api_keys", "llmrouter_ledger"} <= tables
        (key_id,) = connection.execute("select llm_key_id from users").fetchone()
        statuses = connection.execute(
            "select status from llmrouter_ledger where key_id = ?", (key_id,)
        ).fetchall()
    assert statuses == [("ok",)]


# --- (b) a plain WSGI app behind RouterMiddleware ---------------------------------------


@pytest.fixture
def wsgi_host_app(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "wsgi_host_app.py")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        secret = process.stdout.readline().removeprefix("key: ").strip()
        assert secret.startswith("sk-llmr-"), process.stderr.read() if process.stderr else ""
        assert "serving on" in process.stdout.readline()
        yield f"http://127.0.0.1:{port}", secret
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_wsgi_host_app_serves_the_api_under_its_prefix(wsgi_host_app: tuple[str, str]) -> None:
    base, secret = wsgi_host_app
    assert requests.get(base + "/some/page", timeout=5).json() == {
        "service": "my-wsgi-app",
        "path": "/some/page",
    }
    for api in (base + "/llm/v1", base + "/llm"):
        client = OpenAI(base_url=api, api_key=secret, max_retries=0)
        assert [m.id for m in client.models.list()] == ["echo#echo"]
        reply = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert reply.choices[0].message.content == "Hello there"
        chunks = client.chat.completions.create(**CHAT, stream=True)  # type: ignore[call-overload]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "Hello there"
        )
    assert requests.get(base + "/llm/health", timeout=5).json()["status"] == "healthy"


# --- (c) in process ---------------------------------------------------------------------


def test_in_process_script(tmp_path: Path) -> None:
    output = run_example(str(EXAMPLES / "in_process.py"), cwd=tmp_path)
    assert "reply: Hello!" in output
    assert "stream, closed early: 'one two'" in output
    assert 'tool call: get_weather {"city"' in output
    assert 'after the tool: get_weather returned: {"sky": "clear"}' in output
    assert "throttled:" in output
    assert "paid call: paid" in output
    assert not list(tmp_path.iterdir())  # in memory: no files left behind


def test_builtin_tools_script_answers_from_its_table(tmp_path: Path) -> None:
    output = run_example(str(EXAMPLES / "builtin_tools.py"), cwd=tmp_path)
    in_stock = (
        'inventory returned: [{"sku":"A-1","name":"espresso cup","price":"4.50","in_stock":12},'
        '{"sku":"A-2","name":"milk jug","price":"9.90","in_stock":3}]'
    )  # the table's rows in stock, through the tool's defaults (the grinder is sold out)
    assert output.splitlines() == [f"answer: {in_stock}", f"streamed: {in_stock}"]
    assert not list(tmp_path.iterdir())  # its database in a temporary folder, removed


# --- (d) a host app's unit tests --------------------------------------------------------


def test_host_app_test_file_passes(tmp_path: Path) -> None:
    output = run_example(
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(ROOT),
        str(EXAMPLES / "test_host_app.py"),
        cwd=ROOT,
    )
    assert "4 passed" in output


# --- (e) gunicorn -----------------------------------------------------------------------


def test_gunicorn_config_suits_long_streams() -> None:
    settings = runpy.run_path(str(EXAMPLES / "gunicorn.conf.py"))
    assert settings["worker_class"] == "gthread"
    assert settings["threads"] > 1
    assert settings["graceful_timeout"] >= 60
    assert settings["keepalive"] > 2
    assert settings["preload_app"] is False


def test_gunicorn_serves_a_stream_with_the_example_config(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LLMROUTER_CONFIG": str(EXAMPLES / "minimal.toml"),
        "WEB_CONCURRENCY": "2",
    }
    gunicorn = Path(sys.executable).parent / "gunicorn"
    process = subprocess.Popen(
        [
            str(gunicorn),
            *("-c", str(EXAMPLES / "gunicorn.conf.py"), "--bind", f"127.0.0.1:{port}"),
            "flask_ext.app:create_app()",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(base + "/health", timeout=2)
                break
            except (requests.ConnectionError, requests.Timeout):
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        created = run_example(
            "-m", "llmrouter", "keys", "create", "--name", "g", "--json", cwd=tmp_path, env=env
        )
        secret = json.loads(created)["secret"]
        client = OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
        chunks = client.chat.completions.create(**CHAT, stream=True)  # type: ignore[call-overload]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "Hello there"
        )
        assert (tmp_path / "llmrouter.db").exists()  # minimal.toml's file, in the cwd
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def test_the_full_example_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "MISTRAL_API_KEY",
        "ARK_API_KEY",
        "OPENROUTER_API_KEY",
    ):
        monkeypatch.setenv(name, "sk-not-used")
    router = Router.from_config(EXAMPLES / "llmrouter.toml")
    try:
        cards = {m.id: m for m in router.models().data}
        assert {"OpenAI#gpt-4o-mini", "altllm-basic", "altllm-pro"} <= set(cards)
        for video in ("altllm-flex-seedance-2.0", "altllm-flex-seedance-2.0-fast"):
            assert cards[video].output_modalities == ["video"] and cards[video].video
        per_second = cards["OpenRouterVideo#bytedance/seedance-2.0"].video
        assert per_second is not None and per_second.price_per_second == {
            "480p": "0.01",
            "720p": "0.02",
            "1080p": "0.05",
        }
    finally:
        router.close()

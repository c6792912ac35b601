"""Shared fixtures: fake upstreams on loopback, routers on in-memory stores, a live API."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from flask_ext import LLMRouter
from llmrouter import Router
from llmrouter.store import Store
from llmrouter.store.engine import create_engine_for
from llmrouter.store.tables import Tables, build_tables
from tests.upstreams.loopback import LoopbackServer
from tests.upstreams.openai_server import FakeOpenAI

# plugin modules named in ``pytest_plugins`` have their asserts rewritten too
pytest.register_assert_rewrite("tests.video_fixtures", "tests.video_http")

UPSTREAM_KEY = "sk-upstream-test-0123456789abcdef"


@pytest.fixture(scope="session")
def _openai_server() -> Iterator[tuple[FakeOpenAI, LoopbackServer]]:
    fake = FakeOpenAI(api_key=UPSTREAM_KEY)
    with LoopbackServer(fake.app()) as server:
        yield fake, server


@pytest.fixture
def fake_openai(_openai_server: tuple[FakeOpenAI, LoopbackServer]) -> FakeOpenAI:
    """The fake OpenAI upstream, its script and records emptied for this test."""
    fake, server = _openai_server
    fake.reset()
    fake.url = server.url  # type: ignore[attr-defined]
    return fake


def gateway_config(openai_url: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A config with the echo provider and (given its URL) the fake OpenAI upstream."""
    providers: list[dict[str, Any]] = [
        {
            "name": "echo",
            "kind": "echo",
            "models": [
                {
                    "id": "echo",
                    "prompt_price": "0.000001",
                    "completion_price": "0.000002",
                    "max_output_length": 1000,
                },
                {
                    "id": "echo-premium",
                    "prompt_price": "0.00001",
                    "completion_price": "0.00002",
                    "max_output_length": 100,
                    "premium": True,
                },
            ],
        }
    ]
    if openai_url:
        providers.append(
            {
                "name": "OpenAI",
                "kind": "openai",
                "base_url": openai_url + "/v1",
                "api_key": UPSTREAM_KEY,
                "retry_backoff": 0,
                "read_timeout": 5,
                "models": [
                    {
                        "id": "gpt-4o-mini",
                        "prompt_price": "0.00000015",
                        "completion_price": "0.0000006",
                        "max_output_length": 16384,
                        "supported_features": ["streaming", "tools", "json_mode"],
                    },
                ],
            }
        )
    config: dict[str, Any] = {
        "database_url": "sqlite://",
        "providers": providers,
        "aliases": {"altllm-basic": "echo#echo"},
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_router() -> Iterator[Callable[..., Router]]:
    routers: list[Router] = []

    def build(config: dict[str, Any] | None = None, **kwargs: Any) -> Router:
        router = Router.from_config(config or gateway_config(), **kwargs)
        routers.append(router)
        return router

    yield build
    for router in routers:
        router.close()


@pytest.fixture
def router(make_router: Callable[..., Router], fake_openai: FakeOpenAI) -> Router:
    return make_router(gateway_config(fake_openai.url))


@pytest.fixture
def api_key(router: Router) -> str:
    return router.create_key("test")[1]


@pytest.fixture
def live_api(router: Router) -> Iterator[str]:
    """The router mounted in a Flask app served on loopback; yields the base URL."""
    app = Flask("host-app")
    LLMRouter(app, router=router, unprefixed_routes=True, health_route="/health")
    with LoopbackServer(app) as server:
        yield server.url


_fresh_schemas: set[str] = set()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The backend under test (parametrize with ``database_urls()``, indirect): a SQLite
    file of this test, or a server named by the environment. A server's llmrouter tables
    are dropped once per session and made again by ``llmrouter db upgrade``'s migrations,
    so they always have this version's shape; each test then works with keys and
    providers of its own, never rows another test left."""
    url = request.param
    if url == "sqlite-file":
        return f"sqlite:///{tmp_path}/store.db"
    if url not in _fresh_schemas:
        drop_tables(url, build_tables())
        store = Store(url, check_schema=False)
        try:
            store.upgrade_database()
        finally:
            store.close()
        _fresh_schemas.add(url)
    return url


def drop_tables(url: str, tables: Tables) -> None:
    """Drop one prefix's tables and its version table from a database, if there."""
    engine = create_engine_for(url)
    try:
        tables.metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {tables.version_table}")
    finally:
        engine.dispose()


def database_urls() -> list[Any]:
    """The store matrix: SQLite always; PostgreSQL and MariaDB when their URLs are set."""
    return [
        pytest.param("sqlite-file", id="sqlite"),
        _server("LLMROUTER_TEST_POSTGRES_URL", "postgres", pytest.mark.postgres),
        _server("LLMROUTER_TEST_MYSQL_URL", "mariadb", pytest.mark.mysql),
    ]


def _server(variable: str, name: str, mark: pytest.MarkDecorator) -> Any:
    """A database server of the matrix, skipped with the reason when its URL is not set."""
    url = os.environ.get(variable)
    return pytest.param(
        url, id=name, marks=[mark, pytest.mark.skipif(not url, reason=f"{variable} is not set")]
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(health_url: str, process: subprocess.Popen[bytes]) -> None:
    """Until the server ``process`` answers ``health_url`` (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(health_url, timeout=1)
            return
        except (requests.ConnectionError, requests.Timeout):  # not listening, or still booting
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{process.args!r} did not start") from None
            time.sleep(0.1)


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether ``condition`` came true within ``seconds`` (polled)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True

"""Every call in flight has a ledger row: admitted ``pending``, settled once, swept when its
process died, and never lost or charged twice when the database drops or stalls mid-call.

On a SQLite file, PostgreSQL and MariaDB (the last two through a TCP proxy that can cut or
stall the database, and as a killed ``llmrouter serve`` process).
"""

from __future__ import annotations

import gc
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select, text

from llmrouter import Router
from llmrouter.errors import StoreUnavailableError, UpstreamTimeoutError
from llmrouter.router import SETTLE_GRACE_SECONDS
from llmrouter.store import KeyRecord
from llmrouter.store.engine import create_engine_for
from llmrouter.store.tables import api_keys, ledger
from tests.conftest import UPSTREAM_KEY, database_urls, free_port, wait_until_serving
from tests.tcp_proxy import TCPProxy
from tests.upstreams.openai_server import FakeOpenAI, Fault

HELLO = [{"role": "user", "content": "one two three four"}]
DOLLAR = 10**9
SERVERS = [p for p in database_urls() if p.id != "sqlite"]


class FakeClock:
    def __init__(self) -> None:
        self.at = 1_780_000_000.0

    def __call__(self) -> float:
        return self.at


def config_for(database_url: str, fake_openai: FakeOpenAI, **overrides: Any) -> dict[str, Any]:
    suffix = secrets.token_hex(4)
    return {
        "database_url": database_url,
        "key_cache_seconds": 0,
        "database_timeout_seconds": 1,
        "providers": [
            {
                "name": f"echo_{suffix}",
                "kind": "echo",
                "models": [
                    {
                        "id": "basic",
                        "prompt_price": "0.000001",
                        "completion_price": "0.000002",
                        "max_output_length": 100,
                    }
                ],
            },
            {
                "name": f"up_{suffix}",
                "kind": "openai",
                "base_url": fake_openai.url + "/v1",
                "api_key": UPSTREAM_KEY,
                "max_retries": 0,
                "models": [
                    {
                        "id": "gpt-4o-mini",
                        "prompt_price": "0.000001",
                        "completion_price": "0.000002",
                        "max_output_length": 100,
                    }
                ],
            },
        ],
        **overrides,
    }


def echo_model(router: Router) -> str:
    return f"{router.settings.providers[0].name}#basic"


def upstream_model(router: Router) -> str:
    return f"{router.settings.providers[1].name}#gpt-4o-mini"


class Books:
    """What the database says, read on a connection of its own (not the router's, which a
    test may cut off)."""

    def __init__(self, database_url: str) -> None:
        self.engine = create_engine_for(database_url)

    def rows(self, key: KeyRecord) -> list[Any]:
        with self.engine.connect() as conn:
            query = select(ledger).where(ledger.c.key_id == key.id).order_by(ledger.c.id)
            return list(conn.execute(query).all())

    def key(self, key: KeyRecord) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(api_keys).where(api_keys.c.id == key.id)).one()

    def wait_for(self, key: KeyRecord, status: str, seconds: float = 15) -> Any:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rows = self.rows(key)
            if rows and all(r.status == status for r in rows):
                return rows[-1]
            time.sleep(0.05)
        raise AssertionError(f"no {status} row: {[r.status for r in self.rows(key)]}")


@pytest.fixture
def books(database_url: str) -> Iterator[Books]:
    books = Books(database_url)
    yield books
    books.engine.dispose()


@pytest.fixture
def paid(make_router: Callable[..., Router], database_url: str, fake_openai: FakeOpenAI) -> Any:
    """A router and a key paying from a $1 balance (no free allowance)."""
    router = make_router(config_for(database_url, fake_openai))
    key, secret = router.create_key("paid", daily_requests=0, credits=1)
    return router, key, secret


@pytest.fixture
def half_second_calls(
    make_router: Callable[..., Router], database_url: str, fake_openai: FakeOpenAI
) -> Any:
    """A router whose calls may last half a second, and a free key."""
    router = make_router(config_for(database_url, fake_openai, max_call_seconds=0.5))
    key, secret = router.create_key("free")
    return router, key, secret


# ----------------------------------------------------------------------------- the ticket


@pytest.mark.parametrize("database_url", database_urls(), indirect=True)
class TestTickets:
    def test_a_call_holds_a_pending_row_from_admission_until_it_settles(
        self, paid: Any, books: Books
    ) -> None:
        router, key, secret = paid
        stream = router.chat(model=echo_model(router), messages=HELLO, api_key=secret, stream=True)
        next(stream)
        [row] = books.rows(key)
        held = DOLLAR - books.key(key).balance_nanos
        assert (row.status, row.reserved_nanos, row.charged_nanos) == ("pending", held, 0)
        assert held > 0 and row.finished_at is None and row.deadline_at > row.started_at

        list(stream)

        [row] = books.rows(key)
        assert row.status == "ok" and row.deadline_at is None and 0 < row.charged_nanos < held
        after = books.key(key)
        assert (after.balance_nanos, after.spent_nanos) == (
            DOLLAR - row.charged_nanos,
            row.charged_nanos,
        )

    def test_a_call_left_pending_is_swept_once_and_its_late_settlement_still_bills_once(
        self, paid: Any, books: Books
    ) -> None:
        router, key, secret = paid
        stream = router.chat(model=echo_model(router), messages=HELLO, api_key=secret, stream=True)
        next(stream), next(stream)  # the role, then a word
        assert router.sweep() == []  # its deadline is far off

        [swept] = [c for c in router.sweep(older_than=0) if c.key_id == key.id]

        [row] = books.rows(key)
        assert (swept.request_id, swept.released_nanos) == (row.request_id, row.reserved_nanos)
        assert (row.status, row.cost_nanos, row.charged_nanos) == ("abandoned", 0, 0)
        assert "abandoned" in row.error
        assert books.key(key).balance_nanos == DOLLAR  # the reservation came back
        stream.close()  # the process was alive after all: its settlement is still billed
        [row] = books.rows(key)
        assert row.status == "partial" and row.charged_nanos == row.cost_nanos > 0
        after = books.key(key)
        assert (after.balance_nanos, after.spent_nanos) == (
            DOLLAR - row.charged_nanos,
            row.charged_nanos,
        )
        assert [c for c in router.sweep(older_than=0) if c.key_id == key.id] == []
        stream.close()
        assert books.key(key).balance_nanos == DOLLAR - row.charged_nanos  # once

    def test_the_sweeper_keeps_the_allowance_unit_and_waits_for_the_deadline(
        self,
        make_router: Callable[..., Router],
        database_url: str,
        fake_openai: FakeOpenAI,
        books: Books,
    ) -> None:
        clock = FakeClock()
        router = make_router(
            config_for(database_url, fake_openai, max_call_seconds=30), clock=clock
        )
        key, secret = router.create_key("free")
        stream = router.chat(model=echo_model(router), messages=HELLO, api_key=secret, stream=True)
        next(stream)
        # max_call_seconds, then the longest attempt (the upstream's default connect and
        # read timeouts, 5 + 120 s) and the grace for the settlement to be written
        clock.at += 30 + 125 + SETTLE_GRACE_SECONDS - 1
        assert router.sweep() == []
        clock.at += 2

        assert [c.request_id for c in router.sweep()] == [books.rows(key)[0].request_id]

        assert books.key(key).day_count == 1  # the upstream may have served it
        assert [r.status for r in books.rows(key)] == ["abandoned"]
        assert [(u.requests, u.abandoned, u.failed) for u in router.usage(key_id=key.id)] == [
            (1, 1, 0)
        ]

    def test_usage_a_provider_reports_out_of_range_neither_pays_the_key_nor_fails_the_call(
        self, paid: Any, books: Books, fake_openai: FakeOpenAI
    ) -> None:
        router, key, secret = paid
        for completion_tokens in (-1_000_000, 3_000_000_000):
            fake_openai.script.append(Fault(raw=_answer_with_usage(completion_tokens)))
            reply = router.chat(model=upstream_model(router), messages=HELLO, api_key=secret)
            assert reply.choices[0].message.content == "as you wish"
        negative, huge = books.rows(key)
        assert (negative.status, negative.completion_tokens, negative.charged_nanos) == (
            "ok",
            0,
            8_000,
        )
        assert (huge.status, huge.completion_tokens) == ("ok", 2**31 - 1)
        assert huge.charged_nanos == huge.reserved_nanos  # capped at what was reserved
        after = books.key(key)
        assert after.spent_nanos == negative.charged_nanos + huge.charged_nanos
        assert after.balance_nanos == DOLLAR - after.spent_nanos

    def test_a_stream_that_finished_is_ok_even_when_read_after_the_deadline(
        self, half_second_calls: Any, books: Books
    ) -> None:
        router, key, secret = half_second_calls
        stream = router.chat(model=echo_model(router), messages=HELLO, api_key=secret, stream=True)
        chunks = [next(stream) for _ in range(6)]  # the role, four words, the finish
        assert chunks[-1].choices[0].finish_reason == "stop"
        time.sleep(0.6)
        assert list(stream) == []
        assert [r.status for r in books.rows(key)] == ["ok"]

    def test_a_stream_past_its_deadline_is_cut_and_billed_partial(
        self, half_second_calls: Any, books: Books
    ) -> None:
        router, key, secret = half_second_calls
        stream = router.chat(model=echo_model(router), messages=HELLO, api_key=secret, stream=True)
        next(stream), next(stream)
        time.sleep(0.6)
        with pytest.raises(UpstreamTimeoutError, match="max_call_seconds"):
            next(stream)
        [row] = books.rows(key)
        assert row.status == "partial" and row.completion_tokens > 0

    def test_a_stream_dropped_after_the_router_closed_is_still_settled(
        self, paid: Any, books: Books
    ) -> None:
        router, key, secret = paid
        stream = router.chat(model=echo_model(router), messages=HELLO, api_key=secret, stream=True)
        next(stream), next(stream)
        router._settlements.close()  # what Router.close() does first
        assert [r.status for r in books.rows(key)] == ["partial"]  # closed, billed
        del stream
        gc.collect()
        assert books.key(key).spent_nanos == books.rows(key)[0].charged_nanos > 0


def _answer_with_usage(completion_tokens: int) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "as you wish"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 8,
                "completion_tokens": completion_tokens,
                "total_tokens": 8 + completion_tokens,
            },
        }
    )


# ------------------------------------------------------------------ the database goes away


@pytest.fixture
def through_proxy(
    database_url: str, fake_openai: FakeOpenAI, make_router: Callable[..., Router]
) -> Iterator[tuple[Router, TCPProxy]]:
    proxy, proxied_url = TCPProxy.in_front_of(database_url)
    router = make_router(config_for(proxied_url, fake_openai))
    try:
        yield router, proxy
    finally:
        proxy.restore()
        proxy.close()


@pytest.mark.parametrize("database_url", SERVERS, indirect=True)
class TestDatabaseFaults:
    def test_a_database_cut_during_a_call_still_answers_and_settles_when_it_is_back(
        self, through_proxy: tuple[Router, TCPProxy], books: Books, fake_openai: FakeOpenAI
    ) -> None:
        router, proxy = through_proxy
        key, secret = router.create_key("paid", daily_requests=0, credits=1)
        fake_openai.script.append(Fault(delay=2))

        def cut_once_admitted() -> None:  # the upstream is still thinking then
            books.wait_for(key, "pending")
            proxy.cut()

        threading.Thread(target=cut_once_admitted).start()

        reply = router.chat(model=upstream_model(router), messages=HELLO, api_key=secret)

        assert reply.choices[0].message.content == "You said: one two three four"
        assert [r.status for r in books.rows(key)] == ["pending"]
        proxy.restore()
        row = books.wait_for(key, "ok")
        assert row.charged_nanos > 0
        after = books.key(key)
        assert (after.balance_nanos, after.spent_nanos) == (
            DOLLAR - row.charged_nanos,
            row.charged_nanos,
        )

    def test_a_database_cut_mid_stream_ends_the_stream_as_the_upstream_did(
        self, through_proxy: tuple[Router, TCPProxy], books: Books
    ) -> None:
        router, proxy = through_proxy
        key, secret = router.create_key("paid", daily_requests=0, credits=1)
        stream = router.chat(model=echo_model(router), messages=HELLO, api_key=secret, stream=True)
        first = next(stream)
        proxy.cut()

        rest = list(stream)  # no store_unavailable: the answer ends as the upstream ended it

        text_ = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
        assert text_ == "one two three four"
        proxy.restore()
        row = books.wait_for(key, "ok")
        assert books.key(key).spent_nanos == row.charged_nanos > 0


@pytest.mark.parametrize("database_url", SERVERS, indirect=True)
def test_a_stalled_database_is_a_quick_503(through_proxy: tuple[Router, TCPProxy]) -> None:
    router, proxy = through_proxy
    _, secret = router.create_key("free")
    proxy.stall()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        router.chat(model=echo_model(router), messages=HELLO, api_key=secret)
    with pytest.raises(StoreUnavailableError):
        router.store.ping()
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("database_url", database_urls(), indirect=True)
def test_a_database_locked_by_someone_else_is_a_quick_503(
    paid: Any, database_url: str, books: Books
) -> None:
    router, key, secret = paid
    started = time.monotonic()
    with _table_locked(database_url, books), pytest.raises(StoreUnavailableError):
        router.chat(model=echo_model(router), messages=HELLO, api_key=secret)
    assert time.monotonic() - started < 10
    assert books.rows(key) == [] and books.key(key).balance_nanos == DOLLAR
    router.chat(model=echo_model(router), messages=HELLO, api_key=secret)  # healthy again


class _table_locked:
    """Another session holding the keys table's write lock."""

    def __init__(self, database_url: str, books: Books) -> None:
        self.url, self.books = database_url, books

    def __enter__(self) -> None:
        if self.url.startswith("sqlite"):
            path = self.url.removeprefix("sqlite:///")
            self.sqlite = sqlite3.connect(path, isolation_level=None)
            self.sqlite.execute("BEGIN IMMEDIATE")
            return
        self.conn = self.books.engine.connect()
        self.tx = self.conn.begin()
        lock = (
            "LOCK TABLE llmrouter_api_keys IN ACCESS EXCLUSIVE MODE"
            if self.url.startswith("postgresql")
            else "LOCK TABLES llmrouter_api_keys WRITE"
        )
        self.conn.execute(text(lock))

    def __exit__(self, *exc_info: object) -> None:
        if self.url.startswith("sqlite"):
            self.sqlite.rollback()
            self.sqlite.close()
            return
        if not self.url.startswith("postgresql"):
            self.conn.execute(text("UNLOCK TABLES"))
        self.tx.rollback()
        self.conn.close()


# ------------------------------------------------------------------ a serving process dies


def _toml(config: dict[str, Any]) -> str:
    """Just enough TOML for these configs."""

    def value(v: Any) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines = [f"{k} = {value(v)}" for k, v in config.items() if k != "providers"]
    for provider in config["providers"]:
        lines.append("[[providers]]")
        lines += [f"{k} = {value(v)}" for k, v in provider.items() if k != "models"]
        for model in provider["models"]:
            lines.append("[[providers.models]]")
            lines += [f"{k} = {value(v)}" for k, v in model.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("database_url", database_urls(), indirect=True)
def test_a_serving_process_killed_mid_stream_leaves_a_row_the_sweeper_settles(
    database_url: str,
    fake_openai: FakeOpenAI,
    make_router: Callable[..., Router],
    books: Books,
    tmp_path: Path,
) -> None:
    config = config_for(database_url, fake_openai, sweep_every_seconds=0)
    path = tmp_path / "llmrouter.toml"
    path.write_text(_toml(config))
    router = make_router(config)
    key, secret = router.create_key("paid", daily_requests=0, credits=1)
    fake_openai.script.append(Fault(chunk_pause=0.3))
    port = free_port()
    env = {**os.environ, "LLMROUTER_CONFIG": str(path)}
    server = subprocess.Popen(
        [sys.executable, "-m", "llmrouter", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(base + "/health", server)
        response = requests.post(
            base + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": upstream_model(router), "messages": HELLO, "stream": True},
            stream=True,
            timeout=10,
        )
        lines = (line for line in response.iter_lines() if line)
        next(lines), next(lines)
        assert books.key(key).balance_nanos < DOLLAR  # the reservation is held
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        response.close()
    finally:
        if server.poll() is None:
            server.kill()
    [row] = books.rows(key)
    assert row.status == "pending"

    swept = subprocess.run(
        [sys.executable, "-m", "llmrouter", "sweep", "--older-than", "0", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert swept.returncode == 0, swept.stderr
    assert row.request_id in {c["request_id"] for c in json.loads(swept.stdout)}
    [row] = books.rows(key)
    assert (row.status, row.charged_nanos) == ("abandoned", 0)
    after = books.key(key)
    assert (after.balance_nanos, after.spent_nanos, after.topped_up_nanos) == (DOLLAR, 0, DOLLAR)

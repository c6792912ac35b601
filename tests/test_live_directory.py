"""The live provider directory in one process (issue 9, seam 2): two Routers on one SQLite
file stand for two processes sharing a database. A bad row never breaks the snapshot, a
database gone away keeps it, a flood of unknown names is not a flood of queries, adapters
are taken over or rebuilt, a request keeps its snapshot, an idle process checks before it
routes, an in-memory router never checks, and a fork gets fresh locks."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask
from sqlalchemy import Engine, event, insert, select, update

from flask_ext import LLMRouter
from llmrouter import ModelNotFoundError, Router
from llmrouter.errors import StoreUnavailableError
from llmrouter.store import Store
from tests.conftest import UPSTREAM_KEY, database_urls, gateway_config, wait_for
from tests.tcp_proxy import TCPProxy
from tests.upstreams.faults import Fault
from tests.upstreams.openai_server import FakeOpenAI

SECRET_KEY = "live-directory-test-secret-0123456789"
HI = [{"role": "user", "content": "hi"}]
MODEL = "gpt-4o-mini"
#: the name of the background check's thread
CHECK_THREAD = "llmrouter-directory-check"


def config_for(url: str, fake: FakeOpenAI, **overrides: Any) -> dict[str, Any]:
    return gateway_config(
        fake.url,  # type: ignore[attr-defined]
        database_url=url,
        secret_key=SECRET_KEY,
        key_cache_seconds=60,
        **overrides,
    )


def openai_connection(fake: FakeOpenAI, name: str, **changes: Any) -> dict[str, Any]:
    """A custom (OpenAI-compatible) connection to the fake, its one model priced."""
    return {
        "name": name,
        "provider": "custom",
        "apiKey": UPSTREAM_KEY,
        "baseUrl": fake.url + "/v1",  # type: ignore[attr-defined]
        "model": MODEL,
        "models": [{"id": MODEL, "prompt_price": "0.000001", "completion_price": "0.000002"}],
        **changes,
    }


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def version_reads(engine: Engine) -> list[str]:
    """The names of the threads that read the change counter from now on."""
    reads: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "directory_version" in statement:
            reads.append(threading.current_thread().name)

    return reads


def routes(router: Router, name: str, secret: str) -> bool:
    try:
        router.chat(model=f"{name}#{MODEL}", messages=HI, api_key=secret)
    except ModelNotFoundError:
        return False
    return True


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture
def pair(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI, sqlite_url: str
) -> tuple[Router, Router]:
    """``here`` makes the changes, ``there`` (another process, as it were) sees them."""
    config = config_for(sqlite_url, fake_openai, directory_refresh_seconds=0.2)
    return make_router(config), make_router(config)


@pytest.fixture
def secret(pair: tuple[Router, Router]) -> str:
    return pair[0].create_key("live", daily_requests=100_000)[1]


# ------------------------------------------------------------------ bad rows


def _corrupt_copy(store: Store, template_id: str, name: str, columns: dict[str, Any]) -> str:
    """A copy of connection ``template_id`` named ``name`` with ``columns`` changed, written
    by SQL as a bug, another version or a hand would write it, the counter bumped."""
    table, counter = store.tables.connections, store.tables.directory_version
    with store.engine.begin() as conn:
        row = dict(conn.execute(select(table).where(table.c.id == template_id)).one()._mapping)
        row.update(id="prov-" + uuid.uuid4().hex, name=name, name_folded=name.lower())
        row.update(columns)
        conn.execute(insert(table).values(row))
        conn.execute(update(counter).values(version=counter.c.version + 1))
    return str(row["id"])


BAD_ROWS = [
    pytest.param({"provider": "nonsense"}, id="unknown-provider-kind"),
    pytest.param({"api_key_encrypted": "gAAAAAnot-a-token"}, id="apikey-not-a-token"),
    pytest.param(
        {"api_key_encrypted": Fernet(Fernet.generate_key()).encrypt(b"sk-other").decode()},
        id="apikey-under-another-key",
    ),
    pytest.param({"models": "{not json"}, id="models-not-json"),
    pytest.param({"configuration": "[1, 2"}, id="configuration-not-json"),
    pytest.param({"models": '[{"id": 5}]'}, id="models-invalid"),
    pytest.param({"models": '{"id": "x"}'}, id="models-not-a-list"),
    pytest.param({"configuration": '{"temperature": "hot"}'}, id="configuration-invalid"),
    pytest.param(
        {"models": '[{"id": "x", "prompt_price": "0", "fallbacks": ["Nowhere#y"]}]'},
        id="fallback-to-nowhere",
    ),
    pytest.param({"base_url": "http://[::1"}, id="base-url-unparsable"),
    pytest.param({"name": "ECHO", "name_folded": "echo"}, id="name-of-a-config-provider"),
]
#: rows the store itself cannot read: the snapshot is kept whole, newer rows wait


@pytest.mark.parametrize("columns", BAD_ROWS)
def test_a_bad_row_never_breaks_the_snapshot(
    pair: tuple[Router, Router],
    secret: str,
    fake_openai: FakeOpenAI,
    columns: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    here, there = pair
    good = here.connections.create(openai_connection(fake_openai, unique("Good")))
    assert routes(there, good.name, secret)
    bad_name = columns.get("name", unique("Bad"))
    caplog.set_level(logging.WARNING, logger="llmrouter")

    bad_id = _corrupt_copy(here.store, good.id, bad_name, columns)

    app = Flask("host")
    LLMRouter(app, router=there)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {secret}"}

    def post(model: str) -> int:
        body = {"model": model, "messages": HI}
        return client.post("/v1/chat/completions", json=body, headers=auth).status_code

    assert post(f"{bad_name}#{MODEL}") == 404
    assert post(f"{good.name}#{MODEL}") == 200  # the others route on
    assert post("echo#echo") == 200
    listed = client.get("/v1/models", headers=auth)
    assert listed.status_code == 200
    assert f"{good.name}#{MODEL}" in {m["id"] for m in listed.json["data"]}
    assert bad_name not in {m["owned_by"] for m in listed.json["data"]}
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(bad_id in m or bad_name in m or "cannot be read" in m for m in warned), warned
    stored = here.store.get_connection(good.id).api_key_encrypted
    for secret_value in (UPSTREAM_KEY, SECRET_KEY, stored, "sk-other"):
        assert secret_value and secret_value not in caplog.text


@pytest.mark.parametrize("columns", BAD_ROWS)
def test_a_bad_row_hides_no_connection_made_after_it(
    pair: tuple[Router, Router],
    secret: str,
    make_router: Callable[..., Router],
    fake_openai: FakeOpenAI,
    sqlite_url: str,
    columns: dict[str, Any],
) -> None:
    here, there = pair
    good = here.connections.create(openai_connection(fake_openai, unique("Good")))
    _corrupt_copy(here.store, good.id, columns.get("name", unique("Bad")), columns)

    later = here.connections.create(openai_connection(fake_openai, unique("Later")))

    assert routes(there, later.name, secret)
    started_now = make_router(config_for(sqlite_url, fake_openai))
    assert routes(started_now, good.name, secret)
    assert routes(started_now, later.name, secret)


def test_a_connection_never_makes_a_bare_id_or_an_alias_ambiguous(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    config = config_for(sqlite_url, fake_openai)
    config["aliases"] = {"basic": MODEL}  # the bare id: the config provider OpenAI's only
    here, there = make_router(config), make_router(config)
    secret = here.create_key("alias")[1]
    twin = here.connections.create(openai_connection(fake_openai, unique("Twin")))

    there.refresh_directory()

    assert not there.directory.skipped
    for name in ("basic", MODEL):  # still the config provider's, as clients knew them
        reply = there.chat(model=name, messages=HI, api_key=secret)
        assert reply.model == f"OpenAI#{MODEL}"
    assert routes(there, twin.name, secret)  # the connection's model, by its full name


# ------------------------------------------------------------------ the database gone


@pytest.mark.parametrize(
    "database_url", [p for p in database_urls() if p.id != "sqlite"], indirect=True
)
def test_the_database_unreachable_keeps_the_snapshot(
    database_url: str,
    make_router: Callable[..., Router],
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, proxied = TCPProxy.in_front_of(database_url)
    try:
        here = make_router(config_for(database_url, fake_openai))
        there = make_router(
            config_for(
                proxied, fake_openai, directory_refresh_seconds=0.2, database_timeout_seconds=1
            )
        )
        secret = here.create_key("cut", daily_requests=100_000)[1]
        kept = here.connections.create(openai_connection(fake_openai, unique("Kept")))
        assert routes(there, kept.name, secret)
        version = there.directory.version
        caplog.set_level(logging.WARNING, logger="llmrouter")

        proxy.cut()
        here.connections.delete(kept.id)

        assert wait_for(lambda: there.directory is not None and _warned(caplog))
        snapshot = there.directory
        assert snapshot.version == version
        assert snapshot.catalog.resolve(f"{kept.name}#{MODEL}").provider == kept.name
        with pytest.raises(StoreUnavailableError):  # a 503 at admission, not a 500
            there.chat(model=f"{kept.name}#{MODEL}", messages=HI, api_key=secret)
        with pytest.raises(ModelNotFoundError):  # a miss cannot check: still a 404
            there.chat(model="Nowhere#x", messages=HI, api_key=secret)
        warnings_logged = sum("not refreshed" in r.getMessage() for r in caplog.records)
        assert warnings_logged == 1  # once, not once a check

        proxy.restore()

        assert wait_for(lambda: kept.name not in there.directory.adapters, 3)
        assert not routes(there, kept.name, secret)
    finally:
        proxy.close()


def _warned(caplog: pytest.LogCaptureFixture) -> bool:
    return any("not refreshed" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ checks


def test_a_flood_of_unknown_names_queries_the_store_about_ten_times_a_second(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    there = make_router(config_for(sqlite_url, fake_openai))  # directory_refresh_seconds 1
    secret = there.create_key("flood", daily_requests=100_000)[1]
    reads = version_reads(there.store.engine)
    outcomes: list[str] = []
    seconds = 1.0
    deadline = time.monotonic() + seconds

    def flood(worker: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                there.chat(model=f"Nope{worker}x{n}#m", messages=HI, api_key=secret)
            except ModelNotFoundError:
                outcomes.append("404")
            except Exception as exc:  # any other outcome fails the test
                outcomes.append(repr(exc))

    threads = [threading.Thread(target=flood, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes and set(outcomes) == {"404"}
    assert 1 <= len(reads) <= 10 * seconds + 3, len(reads)


def test_a_connection_made_elsewhere_routes_with_the_first_request_naming_it(
    pair: tuple[Router, Router], secret: str, fake_openai: FakeOpenAI
) -> None:
    here, there = pair
    for _ in range(3):
        with pytest.raises(ModelNotFoundError):  # a miss: the store was checked just now
            there.chat(model="Nowhere#x", messages=HI, api_key=secret)
        made = here.connections.create(openai_connection(fake_openai, unique("New")))
        assert routes(there, made.name, secret)  # the first request, no waiting


def test_a_busy_process_sees_a_change_within_an_interval_without_waiting_for_it(
    pair: tuple[Router, Router], secret: str, fake_openai: FakeOpenAI
) -> None:
    here, there = pair
    gone = here.connections.create(openai_connection(fake_openai, unique("Gone")))
    assert routes(there, gone.name, secret)
    reads = version_reads(there.store.engine)
    here.connections.delete(gone.id)
    started = time.monotonic()
    assert wait_for(lambda: gone.name not in there.directory.adapters, 2)
    assert time.monotonic() - started < 0.2 * 2 + 0.2
    assert reads and set(reads) == {CHECK_THREAD}  # never in the request's thread


def test_a_background_check_never_holds_up_a_request(
    pair: tuple[Router, Router], secret: str, fake_openai: FakeOpenAI
) -> None:
    here, there = pair
    slow = threading.Event()
    release = threading.Event()

    @event.listens_for(there.store.engine, "before_cursor_execute")
    def stall(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread().name == CHECK_THREAD and "directory_version" in statement:
            slow.set()
            release.wait(5)

    made = here.connections.create(openai_connection(fake_openai, unique("Later")))
    assert wait_for(lambda: there.directory is not None and slow.is_set(), 2)
    try:
        longest = 0.0
        for _ in range(30):  # a busy process: a request every 20 ms while the check hangs
            started = time.monotonic()
            assert there.directory.catalog.resolve("echo#echo")
            longest = max(longest, time.monotonic() - started)
            time.sleep(0.02)
        assert longest < 0.05
    finally:
        release.set()
    assert wait_for(lambda: made.name in there.directory.adapters, 2)
    there.close()  # waits for the check thread, starts no more
    assert not any(t.name == CHECK_THREAD for t in threading.enumerate())
    there.directory  # noqa: B018 — reading a closed router's snapshot starts nothing
    assert not any(t.name == CHECK_THREAD for t in threading.enumerate())


def test_an_idle_process_checks_in_its_next_request(
    pair: tuple[Router, Router], secret: str, fake_openai: FakeOpenAI
) -> None:
    here, there = pair
    gone = here.connections.create(openai_connection(fake_openai, unique("Gone")))
    assert routes(there, gone.name, secret)
    time.sleep(0.5)  # idle: no request for more than two intervals (0.2 s)
    here.connections.delete(gone.id)

    assert not routes(there, gone.name, secret)  # the very next request knows


def test_an_in_memory_router_never_checks_the_store_for_its_directory(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router = make_router(config_for("sqlite://", fake_openai, directory_refresh_seconds=0.01))
    secret = router.create_key("memory", daily_requests=100_000)[1]
    made = router.connections.create(openai_connection(fake_openai, "Mine"))
    reads = version_reads(router.store.engine)
    for n in range(20):
        assert routes(router, made.name, secret)
        with pytest.raises(ModelNotFoundError):
            router.chat(model=f"Nope{n}#x", messages=HI, api_key=secret)
        assert not any(t.name == CHECK_THREAD for t in threading.enumerate())
        time.sleep(0.01)
    assert reads == []
    router.connections.delete(made.id)  # a change made here lands at once
    assert not routes(router, made.name, secret)


# ------------------------------------------------------------------ snapshots


def test_unchanged_adapters_are_taken_over_and_changed_ones_rebuilt(
    pair: tuple[Router, Router], fake_openai: FakeOpenAI
) -> None:
    here, there = pair
    same = here.connections.create(openai_connection(fake_openai, unique("Same")))
    changed = here.connections.create(openai_connection(fake_openai, unique("Changed")))
    gone = here.connections.create(openai_connection(fake_openai, unique("Gone")))
    there.refresh_directory()
    before = there.directory

    here.connections.update(changed.id, {"configuration": {"temperature": 0.3}})
    here.connections.delete(gone.id)
    there.refresh_directory()

    after = there.directory
    assert after.version > before.version
    for name in ("echo", "OpenAI", same.name):
        assert after.adapter(name) is before.adapter(name)
    assert after.adapter(changed.name) is not before.adapter(changed.name)
    assert gone.name not in after.adapters
    assert after.request_defaults(changed.name) == {"temperature": 0.3}


def test_a_request_in_flight_keeps_its_snapshot_while_a_change_lands(
    pair: tuple[Router, Router], secret: str, fake_openai: FakeOpenAI
) -> None:
    here, there = pair
    moving = here.connections.create(openai_connection(fake_openai, unique("Moving")))
    fake_openai.script.append(Fault(chunk_pause=0.05))
    words = [{"role": "user", "content": "one two three four five six seven eight"}]
    stream = there.chat(model=f"{moving.name}#{MODEL}", messages=words, api_key=secret, stream=True)
    chunks = iter(stream)
    first = next(chunks)

    here.connections.update(moving.id, {"baseUrl": "http://127.0.0.1:9/v1"})  # nothing there
    there.refresh_directory()
    assert there.directory.adapter(moving.name).settings.base_url == "http://127.0.0.1:9/v1"

    text = "".join(c.choices[0].delta.content or "" for c in [first, *chunks] if c.choices)
    assert text.endswith("seven eight")  # the whole answer, from the snapshot it began with
    assert len(fake_openai.requests) == 1


# ------------------------------------------------------------------ fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_process_forked_while_a_check_runs_checks_in_its_first_request(
    pair: tuple[Router, Router], secret: str, fake_openai: FakeOpenAI
) -> None:
    """gunicorn --preload forks workers from a process that may have been checking."""
    here, there = pair
    running, release = threading.Event(), threading.Event()

    @event.listens_for(there.store.engine, "before_cursor_execute")
    def stall(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread().name == CHECK_THREAD and "directory_version" in statement:
            running.set()
            release.wait(10)

    assert routes(there, "echo", secret) is False  # warm; no such model under echo
    made = here.connections.create(openai_connection(fake_openai, unique("AfterFork")))
    assert wait_for(lambda: there.directory is not None and running.is_set(), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # forking a threaded process
        pid = os.fork()
    if pid == 0:  # the child: its one thread, the check's lock copied held
        code = 1
        try:
            there.store.engine.dispose(close=False)  # the parent's connections stay its own
            code = 0 if made.name in there.directory.adapters else 2
        finally:
            os._exit(code)
    release.set()
    status: list[int] = []

    def ended() -> bool:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status.append(code)
        return bool(done)

    if not wait_for(ended, 10):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the directory's lock")
    assert os.waitstatus_to_exitcode(status[0]) == 0, "the child did not see the connection"

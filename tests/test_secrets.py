"""Provider secrets at rest (issue 9, item 6): encrypted in the database (its file and WAL),
never logged or answered, unreadable when altered or under another key; the Router refuses
to start on stored secrets without a secret_key; ``llmrouter secrets rotate`` takes them to
a new secret_key, and a process still on the old one leaves them out (logged, never a 500).
"""

from __future__ import annotations

import base64
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_ext import LLMRouter
from llmrouter import ConfigError, ModelNotFoundError, Router, UpstreamAuthError
from llmrouter.cli import main
from llmrouter.secrets import SecretBox, SecretUnreadableError, mask, rotate_secrets
from llmrouter.store import Store
from tests.conftest import UPSTREAM_KEY
from tests.upstreams.openai_server import FakeOpenAI

OLD_SECRET_KEY = "old-router-secret-key-7d1f9c"
NEW_SECRET_KEY = "new-router-secret-key-4be0a2"
#: a key the fake upstream refuses, echoing it back the way OpenAI does
REFUSED_KEY = "sk-refused-by-upstream-9a8b7c6d5e4f3210"
SECRETS = (UPSTREAM_KEY, REFUSED_KEY, OLD_SECRET_KEY, NEW_SECRET_KEY)
OLD_ENV = "LLMROUTER_TEST_OLD_SECRET"
NEW_ENV = "LLMROUTER_TEST_NEW_SECRET"
MODEL = "gpt-4o-mini"
HI = [{"role": "user", "content": "hi"}]


def leaked(text: str | bytes, secrets: tuple[str, ...] = SECRETS) -> list[str]:
    """The secrets of which ``text`` holds any 10 characters in a row (a mask shows 4)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return [s for s in secrets if any(s[i : i + 10] in text for i in range(len(s) - 9))]


def connection_fields(fake: FakeOpenAI, name: str = "Upstream", **changes: Any) -> dict[str, Any]:
    fields = {
        "name": name,
        "provider": "openai",
        "baseUrl": fake.url + "/v1",  # type: ignore[attr-defined]
        "apiKey": UPSTREAM_KEY,
        "model": MODEL,
        "models": [{"id": MODEL, "prompt_price": "0.00000015", "completion_price": "0.0000006"}],
    }
    return {**fields, **changes}


def config(db: Path, secret_key: str | None, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"database_url": f"sqlite:///{db}", "providers": []}
    if secret_key is not None:
        settings["secret_key"] = secret_key
    return {**settings, **overrides}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "router.db"


@pytest.fixture
def router_on(make_router: Callable[..., Router], db: Path) -> Callable[..., Router]:
    """A Router on this test's SQLite file, under ``secret_key``."""

    def build(secret_key: str | None = OLD_SECRET_KEY, **overrides: Any) -> Router:
        return make_router(config(db, secret_key, **overrides))

    return build


@pytest.fixture
def client(router_on: Callable[..., Router]) -> tuple[Router, FlaskClient, str]:
    """The router on the SQLite file, its API in a Flask app's test client, an admin key."""
    router = router_on()
    app = Flask("host")
    LLMRouter(app, router=router)
    return router, app.test_client(), router.create_key("admin", admin=True)[1]


def stored_ciphertext(db: Path) -> dict[str, str | None]:
    """Each connection's stored API key, by name, read from the file as it is."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT name, api_key_encrypted FROM llmrouter_connections")
        return dict(rows.fetchall())


# ---------------------------------------------------------------- at rest, logs, responses


def test_no_secret_in_the_database_file_or_its_wal(
    client: tuple[Router, FlaskClient, str], fake_openai: FakeOpenAI, db: Path
) -> None:
    router, _, admin = client
    made = router.connections.create(connection_fields(fake_openai))
    router.chat(model=f"Upstream#{MODEL}", messages=HI, api_key=admin)
    router.connections.update(made.id, {"apiKey": REFUSED_KEY})
    router.connections.test(made.id)
    router.connections.create(connection_fields(fake_openai, name="Second"))

    wal = db.with_name(db.name + "-wal")
    assert wal.stat().st_size > 0  # the writes are in the WAL, not yet in the file
    files = [p.read_bytes() for p in (db, wal, db.with_name(db.name + "-shm"))]
    ciphertexts = [c or "" for c in stored_ciphertext(db).values()]
    assert len(ciphertexts) == 2 and all(c.startswith("gAAAAA") for c in ciphertexts)
    assert all(c.encode() in b"".join(files) for c in ciphertexts)  # the scan sees the rows
    assert [leaked(f) for f in files] == [[], [], []]

    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    assert all(c.encode() in db.read_bytes() for c in ciphertexts)
    assert leaked(db.read_bytes()) == []
    router.close()
    assert leaked(db.read_bytes()) == []


def test_no_secret_in_any_log_record(
    client: tuple[Router, FlaskClient, str],
    router_on: Callable[..., Router],
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    router, http, admin = client
    caplog.set_level(logging.DEBUG)
    made = router.connections.create(connection_fields(fake_openai))
    assert router.chat(model=f"Upstream#{MODEL}", messages=HI, api_key=admin)
    router.connections.update(made.id, {"apiKey": REFUSED_KEY, "configuration": {"temperature": 1}})
    result = router.connections.test(made.id)
    assert result.status == "error" and "401" in (result.reason or "")
    with pytest.raises(UpstreamAuthError) as refused:
        router.chat(model=f"Upstream#{MODEL}", messages=HI, api_key=admin)
    assert leaked(str(refused.value)) == []
    streamed = http.post(
        "/v1/chat/completions",
        json={"model": f"Upstream#{MODEL}", "messages": HI, "stream": True},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert streamed.status_code == 502 and leaked(streamed.get_data()) == []
    router_on(NEW_SECRET_KEY)  # a process on another key: the connection is left out, logged

    assert any("left out" in r.getMessage() for r in caplog.records)
    everything = caplog.text + "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert len(caplog.records) > 3 and leaked(everything) == []


def test_no_secret_in_any_response_of_the_connection_routes(
    client: tuple[Router, FlaskClient, str], fake_openai: FakeOpenAI
) -> None:
    _, http, admin = client
    auth = {"Authorization": f"Bearer {admin}"}
    answers = []

    def call(method: str, path: str, body: Any = None) -> Any:
        response = http.open("/v1/llm-providers" + path, method=method, json=body, headers=auth)
        answers.append(response.get_data(as_text=True))
        return response

    made = call("POST", "", connection_fields(fake_openai))
    assert made.status_code == 201, made.text
    connection = made.json["data"]
    assert connection["apiKey"] == "sk-…cdef"
    cid = connection["id"]
    assert call("GET", "").status_code == 200
    assert call("GET", f"/{cid}").status_code == 200
    assert call("POST", f"/{cid}/test").json["data"]["status"] == "ok"
    assert call("PATCH", f"/{cid}", {"apiKey": REFUSED_KEY}).json["data"]["apiKey"] == "sk-…3210"
    failed = call("POST", f"/{cid}/test").json["data"]
    assert failed["status"] == "error" and "401" in failed["reason"]
    assert call("GET", f"/{cid}").json["data"]["statusReason"] == failed["reason"]
    # refusals of bodies that carry a key
    assert call("POST", "", connection_fields(fake_openai)).status_code == 409
    bad_url = connection_fields(fake_openai, name="Other", baseUrl="ftp://example.com")
    assert call("POST", "", bad_url).json["error"]["field"] == "baseUrl"
    bad_key = connection_fields(fake_openai, name="Other", apiKey=UPSTREAM_KEY + "\x00")
    assert call("POST", "", bad_key).json["error"]["field"] == "apiKey"
    unknown = call("PATCH", f"/{cid}", {"apiKey": UPSTREAM_KEY, "colour": "red"})
    assert unknown.status_code == 400
    assert call("DELETE", f"/{cid}").status_code == 200

    assert len(answers) == 12 and [leaked(a) for a in answers] == [[]] * 12


# ---------------------------------------------------------------- the ciphertext and the key


def test_a_ciphertext_altered_in_any_byte_does_not_decrypt() -> None:
    box = SecretBox(OLD_SECRET_KEY)
    token = base64.urlsafe_b64decode(box.encrypt(UPSTREAM_KEY))
    assert box.decrypt(base64.urlsafe_b64encode(token).decode()) == UPSTREAM_KEY
    for index in range(len(token)):
        altered = bytearray(token)
        altered[index] ^= 0x01
        with pytest.raises(SecretUnreadableError) as unreadable:
            box.decrypt(base64.urlsafe_b64encode(bytes(altered)).decode())
        assert unreadable.value.key == "secret_key" and leaked(str(unreadable.value)) == []
        assert unreadable.value.__cause__ is None and unreadable.value.__suppress_context__
    with pytest.raises(SecretUnreadableError):
        SecretBox(NEW_SECRET_KEY).decrypt(box.encrypt(UPSTREAM_KEY))
    with pytest.raises(SecretUnreadableError):
        box.decrypt("not a token at all ✓")


def test_the_router_refuses_to_start_on_stored_connections_without_a_secret_key(
    router_on: Callable[..., Router], fake_openai: FakeOpenAI, db: Path, tmp_path: Path
) -> None:
    router_on(None).close()  # no connections yet: starts without a secret_key
    router_on().connections.create(connection_fields(fake_openai))
    with pytest.raises(ConfigError) as refused:
        Router.from_config(config(db, None))
    assert refused.value.key == "secret_key" and "secret_key" in str(refused.value)

    toml = tmp_path / "router.toml"
    toml.write_text(f'database_url = "sqlite:///{db}"\n')
    assert main(["keys", "list", "--config", str(toml)]) == 2


def test_connections_without_a_key_need_no_secret_key_to_start(
    router_on: Callable[..., Router], fake_openai: FakeOpenAI, db: Path
) -> None:
    keyless = connection_fields(fake_openai, provider="custom")
    del keyless["apiKey"]  # a local OpenAI-compatible server that asks for none
    router_on().connections.create(keyless)

    started = Router.from_config(config(db, None))  # nothing stored encrypted: it starts
    try:
        assert [c.name for c in started.connections.list()] == ["Upstream"]
    finally:
        started.close()


def test_mask_shows_a_kind_prefix_and_four_characters_of_a_long_key_only() -> None:
    assert mask(UPSTREAM_KEY) == "sk-…cdef"
    assert mask("sk-proj-" + "x" * 40 + "abcd") == "sk-…abcd"
    assert mask("AIzaSyD" + "y" * 30 + "wxyz") == "…wxyz"
    assert mask("gsk_" + "z" * 30 + "9876") == "…9876"
    assert mask("xai-" + "q" * 20 + "lmno") == "xai-…lmno"
    assert mask("ab-cdef-ghijklmn") == "ab-…klmn"  # 16: eight hidden
    for short in ("ab-cdefghijklmn", "abcd-efgh-ij", "sk-12345", "x-y", "a", ""):
        shown = mask(short).replace("…", "")
        assert len(shown) <= 2 and short.endswith(shown)
    assert mask("1234567") == "…" and mask("12345678") == "…78"


def test_a_connection_under_another_secret_key_is_a_409_to_change_or_test(
    router_on: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    """Never a 500: the request is sound, this router's secret_key is not the one the key
    was stored under. Giving the connection its apiKey again stores it under this one."""
    made = router_on(OLD_SECRET_KEY).connections.create(connection_fields(fake_openai))
    other = router_on(NEW_SECRET_KEY)
    app = Flask("host")
    LLMRouter(app, router=other)
    auth = {"Authorization": f"Bearer {other.create_key('admin', admin=True)[1]}"}
    path = f"/v1/llm-providers/{made.id}"
    http = app.test_client()

    for method, url, body in (("PATCH", path, {"name": "Renamed"}), ("POST", path + "/test", None)):
        refused = http.open(url, method=method, json=body, headers=auth)
        assert refused.status_code == 409 and refused.json is not None
        assert refused.json["error"]["code"] == "secret_unreadable"
        assert "secret_key" in refused.json["error"]["message"] and leaked(refused.text) == []
    assert http.get(path, headers=auth).json["data"]["name"] == "Upstream"  # nothing changed

    healed = http.patch(path, json={"apiKey": UPSTREAM_KEY}, headers=auth)
    assert healed.status_code == 200
    assert http.post(path + "/test", headers=auth).json["data"]["status"] == "ok"


# ---------------------------------------------------------------- rotation


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``llmrouter`` as a user runs it, with ``env`` added to the environment."""
    base = {k: v for k, v in os.environ.items() if k != "LLMROUTER_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "llmrouter", *args],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=60,
    )


@pytest.fixture
def toml(tmp_path: Path, db: Path) -> Path:
    """The config of the rotation: the new secret_key, from the environment."""
    path = tmp_path / "router.toml"
    path.write_text(f'database_url = "sqlite:///{db}"\nsecret_key_env = "{NEW_ENV}"\n')
    return path


def test_secrets_rotate_end_to_end(
    router_on: Callable[..., Router],
    fake_openai: FakeOpenAI,
    db: Path,
    toml: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    router_on().connections.create(connection_fields(fake_openai))
    router_on().connections.create(
        connection_fields(fake_openai, name="Keyless", provider="custom", apiKey=None)
    )
    before = stored_ciphertext(db)
    assert before["Keyless"] is None
    env = {OLD_ENV: OLD_SECRET_KEY, NEW_ENV: NEW_SECRET_KEY}

    rotated = run_cli(
        "secrets", "rotate", "--old-secret-env", OLD_ENV, "--config", str(toml), env=env
    )
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 1 stored provider API key " in rotated.stdout
    assert leaked(rotated.stdout + rotated.stderr) == []
    after = stored_ciphertext(db)
    assert after["Keyless"] is None and after["Upstream"] != before["Upstream"]
    assert SecretBox(NEW_SECRET_KEY).decrypt(after["Upstream"] or "") == UPSTREAM_KEY
    with pytest.raises(SecretUnreadableError):
        SecretBox(OLD_SECRET_KEY).decrypt(after["Upstream"] or "")

    # the new key routes the connection: the upstream sees the key (it refuses any other)
    new = router_on(NEW_SECRET_KEY)
    reply = new.chat(model=f"Upstream#{MODEL}", messages=HI, api_key=new.create_key("u")[1])
    assert reply.choices[0].message.content == "You said: hi"
    assert fake_openai.headers[-1]["Authorization"] == f"Bearer {UPSTREAM_KEY}"

    # only the old key: the connection is left out and logged, a 404 (never a 500)
    caplog.set_level(logging.WARNING, logger="llmrouter")
    old = router_on(OLD_SECRET_KEY)
    assert any("left out" in r.getMessage() for r in caplog.records)
    with pytest.raises(ModelNotFoundError):
        old.chat(model=f"Upstream#{MODEL}", messages=HI, api_key=old.create_key("o")[1])

    again = run_cli(
        "secrets", "rotate", "--old-secret-env", OLD_ENV, "--config", str(toml), env=env
    )
    assert again.returncode == 0 and "re-encrypted 1 " in again.stdout  # idempotent
    assert SecretBox(NEW_SECRET_KEY).decrypt(stored_ciphertext(db)["Upstream"] or "")


def test_a_process_on_the_old_key_keeps_its_snapshot_then_leaves_the_connection_out(
    router_on: Callable[..., Router],
    fake_openai: FakeOpenAI,
    db: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fleet procedure of ``rotate_secrets``: a process not yet restarted routes from
    its snapshot until it reloads (the rotation bumps the change counter), then answers a
    404 and logs; what it creates meanwhile is under the old key, so the rotation is run
    again once every process has the new key."""
    caplog.set_level(logging.WARNING, logger="llmrouter")
    running = router_on(directory_refresh_seconds=3600)
    running.connections.create(connection_fields(fake_openai))
    app = Flask("host")
    LLMRouter(app, router=running)
    http = app.test_client()
    auth = {"Authorization": f"Bearer {running.create_key('u')[1]}"}
    body = {"model": f"Upstream#{MODEL}", "messages": HI}

    store = Store(f"sqlite:///{db}")
    assert rotate_secrets(store, NEW_SECRET_KEY, OLD_SECRET_KEY) == 1
    assert http.post("/v1/chat/completions", json=body, headers=auth).status_code == 200
    running.refresh_directory()  # what its next check of the counter does
    assert http.post("/v1/chat/completions", json=body, headers=auth).status_code == 404
    assert any("left out" in r.getMessage() for r in caplog.records)

    late = running.connections.create(connection_fields(fake_openai, name="Late"))
    restarted = router_on(NEW_SECRET_KEY)
    assert f"Late#{MODEL}" not in [card.id for card in restarted.models().data]
    assert rotate_secrets(store, NEW_SECRET_KEY, OLD_SECRET_KEY) == 2  # a mixed store is fine
    restarted.refresh_directory()
    assert f"Late#{MODEL}" in [card.id for card in restarted.models().data]
    assert restarted.connections.settings_of(restarted.store.get_connection(late.id)).secret()
    store.close()


def test_secrets_rotate_refusals_change_nothing(
    router_on: Callable[..., Router],
    fake_openai: FakeOpenAI,
    db: Path,
    toml: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    router_on().connections.create(connection_fields(fake_openai))
    router_on(NEW_SECRET_KEY).connections.create(connection_fields(fake_openai, name="Newer"))
    before = stored_ciphertext(db)
    rotate = ["secrets", "rotate", "--old-secret-env", OLD_ENV, "--config", str(toml)]

    monkeypatch.setenv(NEW_ENV, NEW_SECRET_KEY)
    monkeypatch.delenv(OLD_ENV, raising=False)
    assert main(rotate) == 2
    assert f"{OLD_ENV} is not set" in capsys.readouterr().err

    monkeypatch.setenv(OLD_ENV, "not-the-old-secret-key")
    assert main(rotate) == 2
    error = capsys.readouterr().err
    (older,) = (c.id for c in router_on(NEW_SECRET_KEY).connections.list() if c.name == "Upstream")
    assert "neither the old nor the new secret_key" in error and older in error
    assert "Traceback" not in error and leaked(error) == []
    assert stored_ciphertext(db) == before

    monkeypatch.setenv(OLD_ENV, OLD_SECRET_KEY)
    toml.write_text(f'database_url = "sqlite:///{db}"\n')  # no new secret_key
    assert main(rotate) == 2
    assert "secret_key" in capsys.readouterr().err
    assert stored_ciphertext(db) == before

    toml.write_text(f'database_url = "sqlite:///{db}"\nsecret_key_env = "{NEW_ENV}"\n')
    assert main(rotate) == 0  # a partial rotation (one under each key) completes
    assert "re-encrypted 2 stored provider API keys" in capsys.readouterr().out
    box = SecretBox(NEW_SECRET_KEY)
    assert [box.decrypt(c or "") for c in stored_ciphertext(db).values()] == [UPSTREAM_KEY] * 2

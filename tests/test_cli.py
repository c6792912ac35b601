"""The ``llmrouter`` command, run as a user runs it: a real process, real files, real ports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.conftest import free_port, wait_until_serving

CONFIG = """
database_url = "sqlite:///{db}"

[quota]
daily_requests = 3

[aliases]
altllm-basic = "echo#echo"

[[providers]]
name = "echo"
kind = "echo"

[[providers.models]]
id = "echo"
prompt_price = "0.000001"
completion_price = "0.000002"
supported_features = ["streaming", "tools"]
"""


def run(
    *args: str, config: Path | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LLMROUTER_CONFIG"}
    if config is not None:
        env["LLMROUTER_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "llmrouter", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "llmrouter.toml"
    path.write_text(CONFIG.format(db=tmp_path / "router.db"))
    return path


def test_keys_create_json_list_topup_revoke(config: Path) -> None:
    created = run("keys", "create", "--name", "alice", "--credits", "2.5", "--json", config=config)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert (
        key["secret"].startswith("sk-llmr-")
        and key["id"].startswith("key_")
        and key["balance"] == "2.5"
    )

    listed = run("keys", "list", "--json", config=config)
    (entry,) = json.loads(listed.stdout)
    assert entry["id"] == key["id"] and "secret" not in entry
    assert key["secret"] not in listed.stdout

    assert "balance $3.5" in run("keys", "topup", key["id"], "1", config=config).stdout
    assert run("keys", "revoke", key["id"], config=config).returncode == 0
    assert json.loads(run("keys", "list", "--json", config=config).stdout)[0]["revoked"] is True


def test_sweep_reports_what_it_closed_and_refuses_a_nonsense_age(config: Path) -> None:
    swept = run("sweep", "--json", config=config)
    assert (swept.returncode, json.loads(swept.stdout)) == (0, [])
    assert run("sweep", config=config).stdout.strip() == "0 abandoned calls swept"
    for age in ("-1", "nan", "inf"):
        refused = run("sweep", "--older-than", age, config=config)
        assert refused.returncode == 2 and "--older-than" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_config_flag_wins_and_works_after_the_subcommand(config: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text(CONFIG.format(db=tmp_path / "other.db"))
    run("keys", "create", "--name", "in-other", config=config)
    listed = run("keys", "list", "--json", "--config", str(other), config=config)
    assert json.loads(listed.stdout) == []


def test_bad_config_is_exit_2_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[quota]\ndaily_requests = "many"\n')
    result = run("keys", "list", "--config", str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "quota.daily_requests" in result.stderr
    assert "Traceback" not in result.stderr


def test_errors_are_one_line_exit_1(config: Path) -> None:
    result = run("keys", "topup", "key_missing", "1", config=config)
    assert (
        result.returncode == 1
        and "key_missing" in result.stderr
        and "Traceback" not in result.stderr
    )
    result = run("keys", "topup", "key_missing", "0.0000000001", config=config)
    assert "finer than a nano-dollar" in result.stderr


def test_embedded_default_uses_a_sqlite_file_in_the_working_directory(tmp_path: Path) -> None:
    assert run("keys", "create", "--name", "x", cwd=tmp_path).returncode == 0
    assert (tmp_path / "llmrouter.db").exists()


@pytest.fixture
def served(config: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "LLMROUTER_CONFIG": str(config)}
    process = subprocess.Popen(
        [sys.executable, "-m", "llmrouter", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base + "/health", process)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_serve_with_the_openai_sdk(served: str, config: Path) -> None:
    secret = json.loads(run("keys", "create", "--name", "sdk", "--json", config=config).stdout)[
        "secret"
    ]
    client = openai.OpenAI(base_url=served + "/v1", api_key=secret, max_retries=0)
    assert "echo#echo" in {m.id for m in client.models.list()}
    reply = client.chat.completions.create(
        model="altllm-basic", messages=[{"role": "user", "content": "hi there"}]
    )
    assert reply.choices[0].message.content == "hi there"
    streamed = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "a b c"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "a b c"

    report = run("usage", "--json", config=config)
    assert json.loads(report.stdout)["total"]["requests"] == 2
    table = run("usage", config=config).stdout
    assert "echo#echo" in table and table.splitlines()[-1].startswith("total")


def test_serve_answers_unknown_routes_with_openai_errors(served: str) -> None:
    response = requests.get(served + "/nothing-here", timeout=5)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = requests.delete(served + "/health", timeout=5)
    assert response.status_code == 405 and "error" in response.json()


def test_the_in_process_example_runs() -> None:
    example = Path(__file__).parent.parent / "examples" / "in_process.py"
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (
        "reply: Hello!" in result.stdout
        and "throttled:" in result.stdout
        and "paid call: paid" in result.stdout
    )


def test_bad_key_overrides_and_an_unreachable_database_are_one_line_errors(
    config: Path, tmp_path: Path
) -> None:
    result = run("keys", "create", "--name", "x", "--throttle-seconds", "0", config=config)
    assert result.returncode == 1 and "throttle_seconds" in result.stderr
    with socket.socket() as sock:  # bound, not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        unreachable = tmp_path / "unreachable.toml"
        unreachable.write_text(f'database_url = "postgresql+psycopg://u@127.0.0.1:{port}/db"\n')
        result = run("keys", "list", "--config", str(unreachable))
    assert result.returncode == 1
    assert "database is unavailable" in result.stderr and "Traceback" not in result.stderr

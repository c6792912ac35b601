"""Video tasks across processes, on every database of the matrix: this test process is the
first, a spawned ``llmrouter serve`` on the same database and ``secret_key`` the second
(its sweeper on). Any process answers any poll, a task is settled once however many poll
it, its sweeper settles the tasks nobody polls, 20 polls across both reach the provider
once an interval, and ``llmrouter tasks sweep`` settles what a crash left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from llmrouter import Router
from llmrouter.store import KeyRecord
from tests.conftest import database_urls, free_port, wait_for, wait_until_serving
from tests.test_connections_multiprocess import _database
from tests.test_video_reliability import (
    BODY,
    CHARGED,
    Crash,
    ark_total,
    assert_settled_once,
    crash_after,
    ledger_rows,
)
from tests.upstreams.ark_server import FakeArk, TaskPlan

pytest_plugins = ["tests.video_fixtures"]

SECRET_KEY = "video-processes-secret-key-0123456789"
POLL_SECONDS = 1.0


def toml_config(url: str, fake: FakeArk, *, sweep_every: float) -> str:
    return (
        f'database_url = "{url}"\n'
        f'secret_key = "{SECRET_KEY}"\n'
        f"video_poll_seconds = {POLL_SECONDS}\n"
        f"sweep_every_seconds = {sweep_every}\n"
        "[[providers]]\n"
        'name = "Ark"\n'
        'kind = "ark"\n'
        f'base_url = "{fake.base_url}"\n'
        f'api_key = "{fake.api_key}"\n'
        "max_retries = 0\n"
        "[[providers.models]]\n"
        'id = "seedance-1-0-pro"\n'
        'output_modalities = ["video"]\n'
        'completion_price = "0.000001"\n'
        'resolutions = ["480p", "720p", "1080p"]\n'
        "min_duration = 2\n"
    )


@dataclass
class Pair:
    here: Router
    there_url: str
    fake: FakeArk
    #: a config on the same database for commands (no server of its own)
    config: Path


@pytest.fixture(scope="module", params=database_urls())
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, _ark_server: FakeArk
) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("video-pair")
    url = _database(request.param, tmp)
    served = tmp / "served.toml"
    served.write_text(toml_config(url, _ark_server, sweep_every=0.5))
    config = tmp / "commands.toml"
    config.write_text(toml_config(url, _ark_server, sweep_every=0))
    here = Router.from_config(config)
    port = free_port()
    command = [sys.executable, "-m", "llmrouter", "serve", "--config", str(served)]
    with (tmp / "second-process.log").open("wb") as stderr:
        there = subprocess.Popen(
            [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        there_url = f"http://127.0.0.1:{port}"
        wait_until_serving(there_url + "/health", there)
        yield Pair(here, there_url, _ark_server, config)
    finally:
        there.terminate()
        try:
            there.wait(timeout=10)
        except subprocess.TimeoutExpired:
            there.kill()
            there.wait()
        here.close()


@pytest.fixture
def fresh(pair: Pair) -> Pair:
    pair.fake.reset()
    pair.fake.book.plan = TaskPlan(completion_tokens=50_000)
    return pair


def new_key(router: Router) -> tuple[KeyRecord, str]:
    return router.create_key(f"video-processes-{time.time_ns()}", credits="1")


def poll_there(pair: Pair, secret: str, token: str) -> dict[str, Any]:
    answer = requests.get(
        f"{pair.there_url}/v1/contents/generations/tasks/{token}",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_both_processes_polling_at_once_settle_the_task_once(fresh: Pair) -> None:
    key, secret = new_key(fresh.here)
    before = ark_total(fresh.here)
    task = fresh.here.video.create(BODY, caller=key)
    seen: list[str] = []

    def poll(there: bool) -> None:
        for _ in range(60):
            view = (
                poll_there(fresh, secret, task.status_token)
                if there
                else fresh.here.video.get(task.status_token, caller=key).view()
            )
            if view["status"] == "succeeded":
                seen.append(view["charged"])
                return
            time.sleep(0.1)

    threads = [threading.Thread(target=poll, args=(i % 2 == 0,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == ["0.05"] * 6
    assert_settled_once(fresh.here, key, before, charged=CHARGED)


def test_twenty_polls_across_two_processes_reach_the_provider_once_an_interval(
    fresh: Pair,
) -> None:
    fresh.fake.book.plan = TaskPlan.staying_queued()
    key, secret = new_key(fresh.here)
    task = fresh.here.video.create(BODY, caller=key)
    created = time.monotonic()
    upstream_id = task.record.upstream_id
    assert upstream_id
    time.sleep(POLL_SECONDS * 1.1)
    start = threading.Barrier(20)

    def poll(there: bool) -> None:
        start.wait()
        if there:
            assert poll_there(fresh, secret, task.status_token)["status"] == "queued"
        else:
            assert fresh.here.video.get(task.status_token, caller=key).record.status == "queued"

    threads = [threading.Thread(target=poll, args=(i % 2 == 0,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    intervals = (time.monotonic() - created) // POLL_SECONDS
    gets = fresh.fake.book.count("GET", upstream_id)
    assert 1 <= gets <= intervals  # the sweeper's polls included


def test_the_serve_sweeper_settles_tasks_nobody_polls(fresh: Pair) -> None:
    key, _ = new_key(fresh.here)
    before = ark_total(fresh.here)
    task = fresh.here.video.create(BODY, caller=key)

    def ended() -> bool:
        record = fresh.here.store.get_task(task.record.id)
        return record is not None and record.status == "succeeded"

    assert wait_for(ended, 15)
    assert wait_for(lambda: ledger_rows(fresh.here, key)[0].status == "ok", 5)
    assert_settled_once(fresh.here, key, before, charged=CHARGED)


def test_tasks_sweep_settles_a_task_whose_create_answer_was_lost(fresh: Pair) -> None:
    """The process died after the row had its upstream id; ``llmrouter tasks sweep``
    (no server needed) polls it to its end and says so."""
    dying = Router.from_config(fresh.config)
    try:
        key, _ = new_key(dying)
        before = ark_total(dying)
        store = dying.store
        store.update_task = crash_after(  # type: ignore[method-assign]
            store.update_task, lambda task_id, values: "upstream_id" in values
        )
        with pytest.raises(Crash):
            dying.video.create(BODY, caller=key)
    finally:
        dying.close()
    (listed,) = fresh.here.video.list(caller=key)
    outputs = []
    for _ in range(10):
        time.sleep(POLL_SECONDS * 1.1)
        result = subprocess.run(
            [sys.executable, "-m", "llmrouter", "tasks", "sweep", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "LLMROUTER_CONFIG": str(fresh.config)},
        )
        assert result.returncode == 0, result.stderr
        outputs.append(json.loads(result.stdout))
        if ledger_rows(fresh.here, key)[0].status != "pending":
            break
    ended = [t for out in outputs for t in out["ended"] if t["id"] == listed.record.id]
    # the second process's sweeper may have ended it first: then no command did
    assert ended in (
        [],
        [
            {
                "id": listed.record.id,
                "key_id": key.id,
                "status": "succeeded",
                "reserved": "0.108",
                "charged": "0.05",
            }
        ],
    )
    assert_settled_once(fresh.here, key, before, charged=CHARGED)
    text = subprocess.run(
        [sys.executable, "-m", "llmrouter", "tasks", "sweep", "--config", str(fresh.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0 and "unfinished video tasks checked" in text.stdout

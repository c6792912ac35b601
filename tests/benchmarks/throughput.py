"""Throughput: completed requests per second at 1, 16 and 64 concurrent keep-alive clients
against our API (gunicorn, the offline ``echo`` provider) and the LiteLLM proxy (its
offline ``mock_response``), with the loopback upstream itself as the client's ceiling.

The clients are threads on ``http.client`` (the lightest client in the standard library)
in the command's process; each level runs for a fixed time after a short warm-up, the
contenders taking turns level by level. The loop is bounded by time and talks only to
127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from .report import Section, Table, Unavailable, ratio
from .resources import Resources
from .routers import ECHO_MODEL, MESSAGES, UPSTREAM_KEY
from .servers import LITELLM_ECHO_MODEL, LITELLM_MASTER_KEY
from .upstream import MODEL

CEILING = "upstream itself (client ceiling)"
OURS = "llmrouter API, echo"
PROXY = "LiteLLM proxy, mock_response"
_WARMUP_SECONDS = 0.5


def _load(url: str, body: bytes, key: str, clients: int, seconds: float) -> tuple[int, int, float]:
    """(completed, failed, elapsed seconds) of ``clients`` threads posting ``body`` in a
    loop until ``seconds`` have passed."""
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    done = [0] * clients
    failed = [0] * clients
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        barrier.wait()
        while time.monotonic() < stop_at[0]:
            try:
                connection.request("POST", parts.path, body, headers)
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    done[i] += 1
                else:
                    failed[i] += 1
            except (OSError, http.client.HTTPException):
                failed[i] += 1
                connection.close()
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.monotonic() + seconds
    start = time.monotonic()
    barrier.wait()
    for thread in threads:
        thread.join()
    return sum(done), sum(failed), time.monotonic() - start


def _level(clients: int) -> str:
    return f"{clients} client" + ("s" if clients != 1 else "")


def run(table: Table, resources: Resources, levels: list[int], seconds: float) -> None:
    section = Section("throughput (requests/s)", [_level(n) for n in levels] + ["failed"])
    targets: dict[str, tuple[str, bytes, str] | Unavailable] = {}
    payload: dict[str, Any] = {"messages": MESSAGES, "max_tokens": 16}

    def add(name: str, start: Any) -> None:
        try:
            targets[name] = start()
        except Unavailable as exc:
            targets[name] = exc

    def body(model: str) -> bytes:
        return json.dumps({**payload, "model": model}).encode()

    add(CEILING, lambda: (resources.upstream() + "/v1/chat/completions", body(MODEL), UPSTREAM_KEY))
    add(
        OURS,
        lambda: (
            resources.llmrouter()[0] + "/v1/chat/completions",
            body(ECHO_MODEL),
            resources.llmrouter()[1],
        ),
    )
    add(
        PROXY,
        lambda: (
            resources.litellm_proxy() + "/v1/chat/completions",
            body(LITELLM_ECHO_MODEL),
            LITELLM_MASTER_KEY,
        ),
    )
    rates: dict[str, dict[int, float]] = {name: {} for name in targets}
    failures: dict[str, int] = dict.fromkeys(targets, 0)
    for clients in levels:
        for name, target in targets.items():
            if isinstance(target, Unavailable):
                continue
            url, request, key = target
            _load(url, request, key, clients, _WARMUP_SECONDS)
            done, failed, elapsed = _load(url, request, key, clients, seconds)
            rates[name][clients] = done / elapsed
            failures[name] += failed
    for name, target in targets.items():
        if isinstance(target, Unavailable):
            section.unavailable(name, target)
            continue
        section.add(
            name,
            **{_level(n): round(rates[name][n]) for n in levels},
            failed=failures[name],
        )
    if all(not isinstance(targets[n], Unavailable) for n in (OURS, PROXY)):
        section.add(
            "ours / LiteLLM proxy",
            **{_level(n): ratio(rates[OURS][n], rates[PROXY][n]) for n in levels},
        )
    section.notes.append(
        f"{seconds:g} s per level after {_WARMUP_SECONDS:g} s unrecorded; clients are threads "
        "of this process; both servers 1 worker (ours gunicorn gthread x 8 threads on a "
        "SQLite file, the proxy uvicorn)"
    )
    table.sections.append(section)

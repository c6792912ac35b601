"""What one lane calls: each contender set up, timed around its own call, and cleaned up.

A non-streamed call measures its latency in ms. A streamed one (``chunks`` set: the
upstream sends that many content chunks; a call may ask for another length) measures
``(first chunk ms, whole stream ms)``, each chunk decoded as its caller would. Every call
checks its answer, so an error is counted as a failure instead of timed as a fast success.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .report import Unavailable
from .routers import ECHO_MODEL, MESSAGES, ROUTED_MODEL, UPSTREAM_KEY, Database, open_router
from .upstream import DEFAULT_CHUNKS, MODEL

Call = Callable[[], Any]
#: LiteLLM fetches its model cost map from the internet on import unless told not to; the
#: benchmark has no network, and a new user's cold start should not time a DNS failure
LITELLM_OFFLINE = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def _ms_since(start: int) -> float:
    return (time.perf_counter_ns() - start) / 1e6


def _body(model: str, chunks: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": DEFAULT_CHUNKS}
    if chunks is not None:
        body.update(max_tokens=chunks, stream=True, stream_options={"include_usage": True})
    return body


def _timed_chunks(open_stream: Callable[[], Any], length: int) -> tuple[float, float]:
    """Milliseconds to the first chunk and to the end of a stream of OpenAI-shaped chunk
    objects (the router's or LiteLLM's), checking that ``length`` content chunks came."""
    start = time.perf_counter_ns()
    first = None
    received = 0
    for chunk in open_stream():
        if first is None:
            first = _ms_since(start)
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
    total = _ms_since(start)
    _check_chunks(received, length)
    assert first is not None
    return first, total


def _check_chunks(received: int, chunks: int) -> None:
    if received < chunks:
        raise RuntimeError(f"{received} content chunks of {chunks}")


@contextmanager
def http_chat(url: str, model: str, api_key: str, chunks: int | None = None) -> Iterator[Call]:
    """``requests`` posting the body to an OpenAI-compatible endpoint on one keep-alive
    session: the upstream directly, the pass-through, our API or the LiteLLM proxy."""
    import requests

    session = requests.Session()
    headers = {"Authorization": f"Bearer {api_key}"}
    body = _body(model, chunks)

    def chat() -> float:
        start = time.perf_counter_ns()
        response = session.post(url, json=body, headers=headers)
        answer = response.json()
        elapsed = _ms_since(start)
        if response.status_code != 200 or not answer.get("choices"):
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:120]}")
        return elapsed

    def stream(length: int | None = chunks) -> tuple[float, float]:
        assert length is not None
        sent = body if length == chunks else _body(model, length)
        start = time.perf_counter_ns()
        first = None
        received = 0
        with session.post(url, json=sent, headers=headers, stream=True) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:120]}")
            for line in response.iter_lines():
                if line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    if first is None:
                        first = _ms_since(start)
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        received += 1
        total = _ms_since(start)
        _check_chunks(received, length)
        assert first is not None
        return first, total

    try:
        yield chat if chunks is None else stream
    finally:
        session.close()


@contextmanager
def router_chat(
    upstream_url: str | None, database: Database, role: str, chunks: int | None = None
) -> Iterator[Call]:
    """``router.chat()`` in process: on the loopback upstream, or (no ``upstream_url``)
    on the offline echo provider, whose answer costs next to nothing."""
    with open_router(upstream_url, database, role) as (router, secret):
        yield router_call(router, secret, upstream_url is not None, chunks)


def router_call(router: Any, secret: str, upstream: bool, chunks: int | None) -> Call:
    model = ROUTED_MODEL if upstream else ECHO_MODEL
    params = _body(model, chunks)

    def chat() -> float:
        start = time.perf_counter_ns()
        completion = router.chat(api_key=secret, **params)
        elapsed = _ms_since(start)
        if not completion.choices:
            raise RuntimeError("a completion without choices")
        return elapsed

    def stream(length: int | None = chunks) -> tuple[float, float]:
        assert length is not None
        sent = params if length == chunks else _body(model, length)
        return _timed_chunks(lambda: router.chat(api_key=secret, **sent), length)

    return chat if chunks is None else stream


@contextmanager
def litellm_completion(upstream_url: str, chunks: int | None = None) -> Iterator[Call]:
    """``litellm.completion()`` on the same upstream, as a new user would call it."""
    os.environ.update(LITELLM_OFFLINE)
    try:
        import litellm
    except ImportError:
        raise Unavailable("litellm is not installed (pip install -e '.[bench]')") from None
    params = _body("openai/" + MODEL, chunks)
    params.update(api_base=upstream_url + "/v1", api_key=UPSTREAM_KEY)

    def chat() -> float:
        start = time.perf_counter_ns()
        response = litellm.completion(**params)
        elapsed = _ms_since(start)
        if not response.choices:
            raise RuntimeError("a completion without choices")
        return elapsed

    def stream(length: int | None = chunks) -> tuple[float, float]:
        assert length is not None
        sent = params if length == chunks else {**params, **_body(params["model"], length)}
        return _timed_chunks(lambda: litellm.completion(**sent), length)

    yield chat if chunks is None else stream


@contextmanager
def echo_alone() -> Iterator[Call]:
    """The echo adapter by itself on a parsed request: the provider's share of an echo
    call, which the router's overhead is measured above."""
    from llmrouter import Router
    from llmrouter.schemas import parse_chat_request

    from .routers import config

    router = Router.from_config(config(None, "sqlite://"))
    try:
        adapter = router.directory.adapter("echo")
        request = parse_chat_request(_body(ECHO_MODEL, None))

        def chat() -> float:
            start = time.perf_counter_ns()
            adapter.chat(request, "echo")
            return _ms_since(start)

        yield chat
    finally:
        router.close()


@contextmanager
def commit_pair(database: Database, role: str) -> Iterator[Call]:
    """The floor of a call on ``database``: two transactions of one single-row UPDATE
    each, committed, straight on the driver's connection from a Router's own engine (so
    with the store's connection set-up: SQLite's WAL mode, the servers' session settings)."""
    with open_router(None, database, role) as (router, _):
        table = f"{router.settings.table_prefix}commit_floor"
        pooled = router.store.engine.raw_connection()
        try:
            driver = pooled.driver_connection
            cursor = driver.cursor()
            cursor.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, n INTEGER)")
            cursor.execute(f"INSERT INTO {table} (id, n) VALUES (1, 0)")
            driver.commit()
            update = f"UPDATE {table} SET n = n + 1 WHERE id = 1"

            def pair() -> float:
                start = time.perf_counter_ns()
                cursor.execute(update)
                driver.commit()
                cursor.execute(update)
                driver.commit()
                return _ms_since(start)

            yield pair
            cursor.execute(f"DROP TABLE {table}")
            driver.commit()
        finally:
            pooled.close()

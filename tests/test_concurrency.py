"""8 processes × 6 threads at one key: the one-statement admission never overruns a quota.
Each spawned process builds its own Router on the same database, all on one frozen clock."""

from __future__ import annotations

import multiprocessing
import queue
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from llmrouter import RateLimitError, Router
from llmrouter.store import KeyRecord
from llmrouter.store.tables import ledger
from tests.conftest import database_urls

PROCESSES, THREADS = 8, 6
#: Saturday 14 March 2026, 12:00:00 UTC, for every process and every request
AT = int(datetime(2026, 3, 14, 12, 0, tzinfo=UTC).timestamp())
MIDNIGHT = AT + 12 * 3600
THROTTLE = 600
#: one user message "x" against a model that caps output at 1 token, priced so that the
#: reservation (5 prompt tokens: 1 byte + 4 markers) is 1,008 nano-dollars and the call
#: (echo counts 4 prompt tokens: 1 word + 3 markers) costs 1,006
BODY = {"model": "", "messages": [{"role": "user", "content": "x"}]}
RESERVATION, COST = 1_008, 1_006
Outcome = tuple[str, Any, int]


class FrozenClock:
    """A picklable clock: every process reads the same instant."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def send_requests(
    config: dict[str, Any], secret: str, body: dict[str, Any], clock: FrozenClock, start: Any
) -> list[Outcome]:
    """One process's part: its own Router, and THREADS threads sending one request each.

    Every process builds its Router at the same moment (as workers booting together do),
    then every thread of every process sends its request at the same moment.
    """
    outcomes: list[Outcome] = []
    lock, go = threading.Lock(), threading.Barrier(THREADS)
    start.wait(timeout=60)
    try:
        router = Router.from_config(config, clock=clock)
    except Exception as exc:
        start.wait(timeout=60)  # keep step with the other processes
        return [("error", f"Router() failed: {exc!r}", 0)]

    def call() -> None:
        try:
            go.wait(timeout=30)
            rate = router.complete(body, api_key=secret).rate_limit
            outcome: Outcome = ("ok", rate.remaining, rate.reset)
        except RateLimitError as exc:
            outcome = ("429", exc.retry_after, int(exc.headers["X-RateLimit-Reset"]))
        except Exception as exc:
            outcome = ("error", repr(exc), 0)
        with lock:
            outcomes.append(outcome)

    try:
        threads = [threading.Thread(target=call) for _ in range(THREADS)]
        start.wait(timeout=60)  # every process has its Router: go
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        router.close()
    return outcomes


def work(jobs: Any, start: Any, results: Any) -> None:
    """A spawned process: serve each job it is given, until it is given None."""
    while (job := jobs.get()) is not None:
        job_id, *arguments = job
        try:
            outcomes = send_requests(*arguments, start)
        except Exception as exc:
            outcomes = [("error", repr(exc), 0)]
        results.put((job_id, outcomes))


class Workers:
    """PROCESSES spawned processes, started once: spawning is most of the cost of a run."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.start, self.results = ctx.Barrier(PROCESSES), ctx.Queue()
        self.jobs = [ctx.Queue() for _ in range(PROCESSES)]
        self.processes = [
            ctx.Process(target=work, args=(jobs, self.start, self.results), daemon=True)
            for jobs in self.jobs
        ]
        for process in self.processes:
            process.start()

    def run(self, config: dict[str, Any], secret: str) -> list[Outcome]:
        """PROCESSES × THREADS concurrent requests with ``secret``; their outcomes."""
        job_id = secrets.token_hex(4)
        body = {**BODY, "model": model_of(config)}
        for jobs in self.jobs:
            jobs.put((job_id, config, secret, body, FrozenClock(AT)))
        outcomes: list[Outcome] = []
        deadline, answered = time.monotonic() + 60, 0
        while answered < PROCESSES:
            try:
                answer_id, part = self.results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{answered} of {PROCESSES} processes answered in 60 s"
                ) from None
            if answer_id == job_id:  # not a late answer to an earlier, failed run
                outcomes += part
                answered += 1
        return outcomes

    def close(self) -> None:
        for jobs in self.jobs:
            jobs.put(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


def model_of(config: dict[str, Any]) -> str:
    return config["providers"][0]["name"] + "#x1"


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    pool = Workers()
    yield pool
    pool.close()


def echo_config(database_url: str) -> dict[str, Any]:
    """An echo provider named for one test alone, so its totals are that test's."""
    model = {
        "id": "x1",
        "prompt_price": "0.0000000015",
        "completion_price": "0.000001",
        "max_output_length": 1,
    }
    provider = {"name": "echo_" + secrets.token_hex(5), "kind": "echo", "models": [model]}
    return {
        "database_url": database_url,
        "quota": {"throttle_seconds": THROTTLE},
        "providers": [provider],
    }


@pytest.fixture
def config(database_url: str) -> dict[str, Any]:
    return echo_config(database_url)


@pytest.fixture
def router(config: dict[str, Any], make_router: Callable[..., Router]) -> Router:
    return make_router(config, clock=FrozenClock(AT))


@contextmanager
def balance_samples(router: Router, key: KeyRecord) -> Iterator[list[int]]:
    """The key's balance, read every 10 ms while the block runs."""
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(router.store.get_key(key.id).balance_nanos)
            stop.wait(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(timeout=5)


def ledger_rows(router: Router, key: KeyRecord) -> list[Any]:
    with router.store.transaction() as conn:
        return list(conn.execute(select(ledger).where(ledger.c.key_id == key.id)).all())


def assert_books_balance(router: Router, key: KeyRecord, provider: str) -> list[Any]:
    """The ledger, the key, the usage report and the provider totals tell one story."""
    rows = ledger_rows(router, key)
    spent = router.store.get_key(key.id).spent_nanos
    assert spent == sum(r.charged_nanos for r in rows)
    (usage,) = router.usage(key_id=key.id)
    assert (usage.requests, usage.cost_nanos, usage.charged_nanos) == (
        len(rows),
        sum(r.cost_nanos for r in rows),
        spent,
    )
    (total,) = [t for t in router.provider_totals() if t.provider == provider]
    assert (total.requests, total.prompt_tokens, total.completion_tokens, total.cost_nanos) == (
        len(rows),
        sum(r.prompt_tokens for r in rows),
        sum(r.completion_tokens for r in rows),
        sum(r.cost_nanos for r in rows),
    )
    return rows


@pytest.mark.parametrize("database_url", database_urls(), indirect=True)
class TestConcurrentAdmission:
    def test_the_last_allowance_and_the_throttle_slot_go_to_exactly_six(
        self, router: Router, config: dict[str, Any], workers: Workers
    ) -> None:
        key, secret = router.create_key("busy", daily_requests=40)
        body = {**BODY, "model": model_of(config)}
        for _ in range(35):
            router.complete(body, api_key=secret)

        outcomes = workers.run(config, secret)

        assert [o for o in outcomes if o[0] == "error"] == []
        admitted = sorted(o[1:] for o in outcomes if o[0] == "ok")
        # each of the 5 allowances saw its own count; the 6th took the one throttle slot
        assert admitted == [
            (0, AT),
            (0, AT + THROTTLE),
            (1, MIDNIGHT),
            (2, MIDNIGHT),
            (3, MIDNIGHT),
            (4, MIDNIGHT),
        ]
        rejected = [o[1:] for o in outcomes if o[0] == "429"]
        assert rejected == [(THROTTLE, AT + THROTTLE)] * (PROCESSES * THREADS - 6)

        rows = assert_books_balance(router, key, config["providers"][0]["name"])
        assert Counter((r.admission, r.status, r.cost_nanos, r.charged_nanos) for r in rows) == {
            ("allowance", "ok", COST, 0): 40,
            ("throttle", "ok", COST, 0): 1,
        }
        with pytest.raises(RateLimitError) as after:
            router.complete(body, api_key=secret)
        assert after.value.retry_after == THROTTLE

    def test_a_balance_for_seven_reservations_admits_exactly_seven_credit_calls(
        self, router: Router, config: dict[str, Any], workers: Workers
    ) -> None:
        initial = 7 * RESERVATION
        key, secret = router.create_key("paying", daily_requests=2, credits="0.000007056")
        assert router.store.get_key(key.id).balance_nanos == initial
        with balance_samples(router, key) as balances:
            outcomes = workers.run(config, secret)

        assert [o for o in outcomes if o[0] == "error"] == []
        admitted = sorted(o[1:] for o in outcomes if o[0] == "ok")
        # 2 allowances, 7 credit calls, the throttle slot; refunds of 2 nano-dollars a call
        # never add up to another reservation. A key with a balance pays past its allowance,
        # so its Reset is midnight, except in the throttle slot its balance could not pay for.
        assert admitted == [(0, AT + THROTTLE)] + [(0, MIDNIGHT)] * 8 + [(1, MIDNIGHT)]
        assert Counter(o[0] for o in outcomes) == {"ok": 10, "429": PROCESSES * THREADS - 10}

        rows = assert_books_balance(router, key, config["providers"][0]["name"])
        assert Counter((r.admission, r.charged_nanos) for r in rows) == {
            ("allowance", 0): 2,
            ("credits", COST): 7,
            ("throttle", 0): 1,
        }
        after = router.store.get_key(key.id)
        assert (after.spent_nanos, after.balance_nanos) == (7 * COST, initial - 7 * COST)
        assert balances and min(balances) >= 0

    def test_processes_starting_together_with_a_new_provider_all_serve(
        self, make_router: Callable[..., Router], database_url: str, workers: Workers
    ) -> None:
        keys_only = make_router(echo_config(database_url), clock=FrozenClock(AT))
        key, secret = keys_only.create_key("fresh", daily_requests=PROCESSES * THREADS)
        config = echo_config(database_url)  # a provider no Router has created yet

        outcomes = workers.run(config, secret)

        assert [o for o in outcomes if o[0] == "error"] == []
        assert sorted(o[1] for o in outcomes) == list(range(PROCESSES * THREADS))
        rows = assert_books_balance(keys_only, key, config["providers"][0]["name"])
        assert Counter(r.admission for r in rows) == {"allowance": PROCESSES * THREADS}

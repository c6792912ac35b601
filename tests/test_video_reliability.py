"""Video tasks survive what a fleet lives through, on every database of the matrix: a router
restarted between create and poll, a process crashing at each step of a task's life (before
the provider answered, after it answered but before the client heard, between ending the
task and settling it), tasks nobody polls, expiry beside the chat sweeper, Idempotency-Key
replays and races, and a provider that does not answer a poll. Each ends with the same
books: one ledger row per task, charged once, the provider's totals counted once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from llmrouter import Router
from llmrouter.errors import ConflictError
from llmrouter.store import KeyRecord
from llmrouter.video import tasks as video_tasks
from tests.conftest import database_urls
from tests.upstreams.ark_server import FakeArk, Fault, TaskPlan

pytest_plugins = ["tests.video_fixtures"]

SECRET_KEY = "video-reliability-secret-key-0123456789"
MODEL = "Ark#seedance-1-0-pro"
#: 720p, 16:9, 24 fps, 5 s: 1280 × 720 × 24 × 5 / 1024 = 108000 tokens at $0.000001
RESERVED = 108_000_000
#: what the fake reports using: 50000 tokens
CHARGED = 50_000_000
POLL_SECONDS = 0.05
#: longer than SUBMIT_GIVE_UP_MS, so an interrupted create fails before it would expire
EXPIRY_SECONDS = 1800
BODY = {"model": MODEL, "prompt": "a fox in the snow", "duration": 5, "resolution": "720p"}

pytestmark = pytest.mark.parametrize("database_url", database_urls(), indirect=True)


class Clock:
    """Real time, plus what a test skipped (a task's expiry is a minute at least)."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.time() + self.skipped

    def skip(self, seconds: float) -> None:
        self.skipped += seconds


def video_config(database_url: str, fake: FakeArk, **overrides: Any) -> dict[str, Any]:
    model = {
        "id": "seedance-1-0-pro",
        "output_modalities": ["video"],
        "completion_price": "0.000001",
        "resolutions": ["480p", "720p", "1080p"],
        "min_duration": 2,
        "max_duration": 12,
    }
    return {
        "database_url": database_url,
        "secret_key": SECRET_KEY,
        "video_poll_seconds": POLL_SECONDS,
        "video_task_expiry_seconds": EXPIRY_SECONDS,
        "sweep_every_seconds": 0,
        "providers": [fake.provider(models=[model], max_retries=0, read_timeout=0.5)],
        **overrides,
    }


@dataclass
class Fleet:
    """Routers on one database, as processes of one deployment are (one clock for all)."""

    database_url: str
    fake: FakeArk
    clock: Clock
    routers: list[Router]

    def router(self) -> Router:
        """A router starting now: another process, or this one after a restart."""
        config = video_config(self.database_url, self.fake)
        router = Router.from_config(config, clock=self.clock)
        self.routers.append(router)
        return router

    def poll_until_ended(self, router: Router, token: str, key: KeyRecord) -> dict[str, Any]:
        for _ in range(100):
            view = router.video.get(token, caller=key).view()
            if view["status"] not in ("queued", "running"):
                return view
            time.sleep(POLL_SECONDS * 1.5)
        raise AssertionError(f"the task never ended: {view}")


@pytest.fixture
def fleet(database_url: str, fake_ark: FakeArk) -> Iterator[Fleet]:
    fake_ark.book.plan = TaskPlan(completion_tokens=50_000)
    fleet = Fleet(database_url, fake_ark, Clock(), [])
    yield fleet
    for router in fleet.routers:
        router.close()


_names = iter(range(1_000_000))


def new_key(router: Router, credits: str = "1") -> KeyRecord:
    record, _ = router.create_key(
        f"video-reliability-{next(_names)}-{time.time_ns()}", credits=credits
    )
    return record


def ledger_rows(router: Router, key: KeyRecord) -> list[Any]:
    ledger = router.store.tables.ledger
    with router.store.transaction(read_only=True) as conn:
        return list(conn.execute(select(ledger).where(ledger.c.key_id == key.id)).all())


def balance(router: Router, key: KeyRecord) -> int:
    return router.get_key(key.id).balance_nanos


def ark_total(router: Router) -> tuple[int, int]:
    """Ark's totals: calls and cost."""
    for total in router.store.provider_totals():
        if total.provider == "Ark":
            return total.requests, total.cost_nanos
    return 0, 0


def assert_settled_once(
    router: Router, key: KeyRecord, totals_before: tuple[int, int], *, charged: int
) -> None:
    """One ledger row, charged ``charged`` once; the provider's totals moved once."""
    (row,) = ledger_rows(router, key)
    assert row.status == ("ok" if charged else "failed")
    assert row.charged_nanos == charged
    assert balance(router, key) == 1_000_000_000 - charged
    calls, cost = ark_total(router)
    assert (calls - totals_before[0], cost - totals_before[1]) == (1, charged)


class Crash(BaseException):
    """The process dies here: nothing after this point runs, no handler catches it."""


def crash_after(call: Callable[..., Any], when: Callable[..., bool]) -> Callable[..., Any]:
    """``call``, then a crash the first time ``when(*args)`` holds."""
    crashed = []

    def crashing(*args: Any, **kwargs: Any) -> Any:
        result = call(*args, **kwargs)
        if not crashed and when(*args, **kwargs):
            crashed.append(True)
            raise Crash
        return result

    return crashing


# ---------------------------------------------------------------- restart


def test_a_restarted_router_polls_the_token_and_settles_once(fleet: Fleet) -> None:
    first = fleet.router()
    key = new_key(first)
    before = ark_total(first)
    task = first.video.create(BODY, caller=key)
    assert task.record.status == "queued" and balance(first, key) == 1_000_000_000 - RESERVED
    first.close()

    second = fleet.router()
    view = fleet.poll_until_ended(second, task.status_token, key)
    assert view["status"] == "succeeded" and view["video_url"]
    assert view["charged"] == "0.05" and view["reserved"] == "0.108"
    assert_settled_once(second, key, before, charged=CHARGED)
    gets = fleet.fake.book.count("GET")
    time.sleep(POLL_SECONDS * 2)
    assert fleet.router().video.get(task.status_token, caller=key).record.status == "succeeded"
    assert fleet.fake.book.count("GET") == gets  # a finished task is never fetched again
    assert_settled_once(second, key, before, charged=CHARGED)


def test_two_routers_polling_at_once_settle_a_task_once(fleet: Fleet) -> None:
    routers = [fleet.router(), fleet.router()]
    key = new_key(routers[0])
    before = ark_total(routers[0])
    task = routers[0].video.create(BODY, caller=key)
    views: list[dict[str, Any]] = []

    def poll(router: Router) -> None:
        views.append(fleet.poll_until_ended(router, task.status_token, key))

    threads = [threading.Thread(target=poll, args=(r,)) for r in routers for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {v["status"] for v in views} == {"succeeded"} and len(views) == 8
    assert_settled_once(routers[1], key, before, charged=CHARGED)
    assert fleet.fake.book.count("GET") == 2  # queued -> running -> succeeded


# ---------------------------------------------------------------- crashes


def test_a_crash_after_the_provider_answered_loses_no_task(fleet: Fleet) -> None:
    """The row has its upstream id, the client never heard: the key's list finds the
    task, a poll settles it once, and the provider made one task."""
    dying = fleet.router()
    key = new_key(dying)
    before = ark_total(dying)
    store = dying.store
    store.update_task = crash_after(  # type: ignore[method-assign]
        store.update_task, lambda task_id, values: "upstream_id" in values
    )
    with pytest.raises(Crash):
        dying.video.create(BODY, caller=key)

    later = fleet.router()
    (listed,) = later.video.list(caller=key)
    assert listed.record.upstream_id and listed.view()["status"] == "queued"
    view = fleet.poll_until_ended(later, listed.status_token, key)
    assert view["status"] == "succeeded"
    assert_settled_once(later, key, before, charged=CHARGED)
    assert fleet.fake.book.count("POST") == 1


def test_a_crash_before_the_provider_answered_fails_the_task_after_the_give_up(
    fleet: Fleet,
) -> None:
    """The provider made the task but its id never reached the row (``submitting``): after
    SUBMIT_GIVE_UP_MS the sweep ends it failed and hands the reservation back."""
    dying = fleet.router()
    key = new_key(dying)
    before = ark_total(dying)
    adapter = dying.directory.adapters["Ark"]
    adapter.create_task = crash_after(  # type: ignore[method-assign]
        adapter.create_task, lambda *args: True
    )
    with pytest.raises(Crash):
        dying.video.create(BODY, caller=key)

    later = fleet.router()
    (listed,) = later.video.list(caller=key)
    assert listed.record.status == "submitting" and listed.view()["status"] == "queued"
    assert later.video.sweep().ended == [] and balance(later, key) == 1_000_000_000 - RESERVED
    fleet.clock.skip(video_tasks.SUBMIT_GIVE_UP_MS / 1000)
    swept = later.video.sweep()
    assert [t.id for t in swept.ended if t.key_id == key.id] == [listed.record.id]
    view = later.video.get(listed.status_token, caller=key).view()
    assert view["status"] == "failed" and "interrupted" in view["error"]
    assert view["charged"] == "0"
    assert_settled_once(later, key, before, charged=0)


def test_a_crash_between_ending_and_settling_is_settled_by_the_sweep(fleet: Fleet) -> None:
    dying = fleet.router()
    key = new_key(dying)
    before = ark_total(dying)
    task = dying.video.create(BODY, caller=key)
    phases = dying.phases
    phases.settle = crash_after(phases.settle, lambda *args, **kwargs: True)  # type: ignore[method-assign]
    with pytest.raises(Crash):
        fleet.poll_until_ended(dying, task.status_token, key)
    (row,) = ledger_rows(dying, key)
    assert row.status == "ok"  # the crash came after the settlement's write

    # the same crash with the write not made: the ticket is left pending
    key = new_key(dying)
    before = ark_total(dying)
    task = dying.video.create(BODY, caller=key)
    phases.settle = lambda *args, **kwargs: (_ for _ in ()).throw(Crash())  # type: ignore[method-assign]
    with pytest.raises(Crash):
        fleet.poll_until_ended(dying, task.status_token, key)
    (row,) = ledger_rows(dying, key)
    assert row.status == "pending" and dying.store.get_task(task.record.id).status == "succeeded"

    later = fleet.router()
    swept = later.video.sweep()
    assert task.record.id in [t.id for t in swept.settled]
    assert task.record.id not in [t.id for t in later.video.sweep().settled]
    assert_settled_once(later, key, before, charged=CHARGED)


# ---------------------------------------------------------------- sweep and expiry


def test_tasks_nobody_polls_are_settled_by_the_sweep(fleet: Fleet) -> None:
    router = fleet.router()
    key = new_key(router)
    before = ark_total(router)
    fleet.fake.book.next_plans = [TaskPlan(completion_tokens=50_000), TaskPlan.failing()]
    made = [router.video.create(BODY, caller=key) for _ in range(2)]
    ids = {t.record.id for t in made}
    for _ in range(2):
        time.sleep(POLL_SECONDS * 1.5)
        fleet.router().video.sweep()
    statuses = sorted(router.store.get_task(i).status for i in ids)  # type: ignore[union-attr]
    assert statuses == ["failed", "succeeded"]
    rows = ledger_rows(router, key)
    assert sorted((r.status, r.charged_nanos) for r in rows) == [("failed", 0), ("ok", CHARGED)]
    assert balance(router, key) == 1_000_000_000 - CHARGED
    calls, cost = ark_total(router)
    assert (calls - before[0], cost - before[1]) == (2, CHARGED)


def test_expired_tasks_release_their_reservation_and_the_chat_sweep_leaves_live_ones(
    fleet: Fleet,
) -> None:
    router = fleet.router()
    key = new_key(router)
    fleet.fake.book.plan = TaskPlan.staying_queued()
    task = router.video.create(BODY, caller=key)
    fleet.clock.skip(EXPIRY_SECONDS - 10)
    assert router.sweep() == []  # the chat sweeper: the ticket's deadline is past the expiry
    assert ledger_rows(router, key)[0].status == "pending"
    assert task.record.id not in {t.id for t in router.video.sweep().ended}
    fleet.clock.skip(11)
    swept = router.video.sweep()
    assert task.record.id in [t.id for t in swept.ended]
    view = router.video.get(task.status_token, caller=key).view()
    assert view["status"] == "expired" and view["charged"] == "0"
    (row,) = ledger_rows(router, key)
    assert (row.status, row.charged_nanos) == ("failed", 0)
    assert balance(router, key) == 1_000_000_000
    assert router.sweep() == []


def test_sweeping_every_pending_call_leaves_live_video_tickets(fleet: Fleet) -> None:
    router = fleet.router()
    key = new_key(router)
    fleet.fake.book.plan = TaskPlan.staying_queued()
    router.video.create(BODY, caller=key)
    router.sweep(older_than=0)
    assert ledger_rows(router, key)[0].status == "pending"


def test_a_task_whose_provider_left_the_config_still_expires(fleet: Fleet) -> None:
    router = fleet.router()
    key = new_key(router)
    fleet.fake.book.plan = TaskPlan.staying_queued()
    task = router.video.create(BODY, caller=key)
    echo = {"name": "echo", "kind": "echo", "models": [{"id": "echo"}]}
    config = video_config(fleet.database_url, fleet.fake, providers=[echo])
    without = Router.from_config(config, clock=fleet.clock)
    fleet.routers.append(without)
    time.sleep(POLL_SECONDS * 1.5)
    # it cannot be polled (the sweep goes on with the other tasks)...
    assert task.record.id not in {t.id for t in without.video.sweep().ended}
    fleet.clock.skip(EXPIRY_SECONDS + 1)
    swept = without.video.sweep()
    assert task.record.id in [t.id for t in swept.ended]
    assert balance(without, key) == 1_000_000_000


# ---------------------------------------------------------------- idempotency


def test_the_same_idempotency_key_and_body_make_one_task(fleet: Fleet) -> None:
    router = fleet.router()
    key = new_key(router)
    first = router.video.create(BODY, caller=key, idempotency_key="retry-1")
    again = router.video.create(dict(BODY), caller=key, idempotency_key="retry-1")
    assert again.status_token == first.status_token
    assert balance(router, key) == 1_000_000_000 - RESERVED
    assert len(ledger_rows(router, key)) == 1 and fleet.fake.book.count("POST") == 1
    with pytest.raises(ConflictError) as refused:
        router.video.create({**BODY, "duration": 6}, caller=key, idempotency_key="retry-1")
    assert refused.value.status == 409 and refused.value.code == "idempotency_conflict"
    assert fleet.fake.book.count("POST") == 1


def test_racing_requests_with_one_idempotency_key_make_one_task(fleet: Fleet) -> None:
    routers = [fleet.router(), fleet.router()]
    key = new_key(routers[0])
    start = threading.Barrier(8)
    tokens: list[str] = []
    errors: list[BaseException] = []

    def create(router: Router) -> None:
        start.wait()
        try:
            task = router.video.create(BODY, caller=key, idempotency_key="race")
            tokens.append(task.record.id)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(r,)) for r in routers for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(tokens)) == 1 and len(tokens) == 8
    assert fleet.fake.book.count("POST") == 1
    assert len(ledger_rows(routers[0], key)) == 1
    assert balance(routers[0], key) == 1_000_000_000 - RESERVED


# ---------------------------------------------------------------- a provider not answering


@pytest.mark.parametrize("fault", [Fault(delay=1.0), Fault(status=500)], ids=["slow", "500"])
def test_a_poll_the_provider_does_not_answer_is_not_a_final_status(
    fleet: Fleet, fault: Fault
) -> None:
    router = fleet.router()
    key = new_key(router)
    task = router.video.create(BODY, caller=key)
    fleet.fake.script.append(fault)
    time.sleep(POLL_SECONDS * 1.5)
    view = router.video.get(task.status_token, caller=key).view()
    assert view["status"] == "queued" and view["error"] is None
    assert ledger_rows(router, key)[0].status == "pending"
    view = fleet.poll_until_ended(router, task.status_token, key)
    assert view["status"] == "succeeded" and view["charged"] == "0.05"

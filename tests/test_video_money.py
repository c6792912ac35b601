"""The money paths of video tasks under a hostile review: every task ends with one ledger row
charged what it should be, once, whichever process, sweeper or restart ends or settles it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from llmrouter import Router
from tests.conftest import database_urls
from tests.test_video_reliability import (
    BODY,
    CHARGED,
    POLL_SECONDS,
    RESERVED,
    Clock,
    Crash,
    Fleet,
    balance,
    ledger_rows,
    new_key,
    video_config,
)
from tests.upstreams.ark_server import FakeArk, TaskPlan

pytest_plugins = ["tests.video_fixtures"]

pytestmark = pytest.mark.parametrize("database_url", database_urls(), indirect=True)


@pytest.fixture
def fleet(database_url: str, fake_ark: FakeArk) -> Any:
    fake_ark.book.plan = TaskPlan(completion_tokens=50_000)
    fleet = Fleet(database_url, fake_ark, Clock(), [])
    yield fleet
    for router in fleet.routers:
        router.close()


def _crash_between_ending_and_settling(fleet: Fleet) -> tuple[Router, Any, Any]:
    """A task the provider finished, ended ``succeeded`` by a process that died before it
    settled the ticket (left ``pending``)."""
    dying = fleet.router()
    key = new_key(dying)
    task = dying.video.create(BODY, caller=key)
    dying.phases.settle = lambda *args, **kwargs: (_ for _ in ()).throw(Crash())  # type: ignore[method-assign]
    with pytest.raises(Crash):
        fleet.poll_until_ended(dying, task.status_token, key)
    (row,) = ledger_rows(dying, key)
    assert row.status == "pending" and dying.store.get_task(task.record.id).status == "succeeded"
    return dying, key, task


def test_sweeping_every_pending_call_after_a_crash_leaves_an_ended_task_to_be_charged(
    fleet: Fleet,
) -> None:
    # After a crash the operator sweeps every pending call (older_than=0) and the video
    # sweep: the succeeded task is charged what it used, not handed out for nothing.
    _, key, _ = _crash_between_ending_and_settling(fleet)
    later = fleet.router()
    later.sweep(older_than=0)
    later.video.sweep()
    (row,) = ledger_rows(later, key)
    assert (row.status, row.charged_nanos) == ("ok", CHARGED)
    assert balance(later, key) == 1_000_000_000 - CHARGED


def test_a_ticket_the_chat_sweeper_abandoned_is_still_settled_when_its_task_ended(
    fleet: Fleet,
) -> None:
    # The chat sweeper closed the ended task's pending ticket at its deadline before any
    # video sweep ran: the video sweep still settles it, once.
    _, key, task = _crash_between_ending_and_settling(fleet)
    later = fleet.router()
    fleet.clock.skip(3 * 3600)
    assert later.sweep()  # the deadline path abandons it
    settled = later.video.sweep().settled
    assert task.record.id in [t.id for t in settled]
    assert task.record.id not in [t.id for t in later.video.sweep().settled]
    (row,) = ledger_rows(later, key)
    assert (row.status, row.charged_nanos) == ("ok", CHARGED)
    assert balance(later, key) == 1_000_000_000 - CHARGED


def test_a_task_whose_model_left_the_config_is_charged_its_reservation(fleet: Fleet) -> None:
    # The model was taken out of the config while the task ran (its provider stays): the
    # task succeeds and is settled at the estimate the key agreed to, not for nothing.
    first = fleet.router()
    key = new_key(first)
    task = first.video.create(BODY, caller=key)
    other = {"id": "another-video", "output_modalities": ["video"], "completion_price": "0.000001"}
    config = video_config(fleet.database_url, fleet.fake)
    config["providers"][0]["models"] = [other]
    without = Router.from_config(config, clock=fleet.clock)
    fleet.routers.append(without)
    time.sleep(POLL_SECONDS * 1.5)
    view = fleet.poll_until_ended(without, task.status_token, key)
    assert view["status"] == "succeeded"
    (row,) = ledger_rows(without, key)
    assert (row.status, row.charged_nanos) == ("ok", RESERVED)
    assert balance(without, key) == 1_000_000_000 - RESERVED

"""The ark kind against the fake Ark upstream: the create body (text, images and their
roles, top-level duration / resolution / ratio), every status, the video and its usage,
cancel of queued tasks only, errors, and a hostile upstream."""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal

import pytest

from llmrouter.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnsupportedError,
)
from llmrouter.providers.ark import ArkAdapter
from llmrouter.providers.video_base import (
    ImageInput,
    TaskStatus,
    UpstreamTask,
    VideoAdapter,
    VideoRequest,
)
from llmrouter.schemas import ChatRequest
from tests.upstreams.ark_server import FakeArk
from tests.upstreams.faults import Fault
from tests.upstreams.video_tasks import TaskPlan

pytest_plugins = ["tests.video_fixtures"]
AdapterFactory = Callable[..., VideoAdapter]

MODEL = "dreamina-seedance-2-0-260128"
SEED_PROMPT = "A cinematic 6-second product reveal of a crypto analytics dashboard"


def ask(*images: ImageInput, duration: int = 6) -> VideoRequest:
    return VideoRequest(SEED_PROMPT, duration, "720p", "16:9", images)


def created(adapter: VideoAdapter, fake: FakeArk, plan: TaskPlan | None = None) -> UpstreamTask:
    if plan is not None:
        fake.book.next_plans.append(plan)
    return adapter.create_task(ask(), MODEL)


def test_text_only_create_sends_the_documented_body(
    ark_adapter: VideoAdapter, fake_ark: FakeArk
) -> None:
    task = ark_adapter.create_task(ask(), MODEL)

    assert task.status is TaskStatus.QUEUED and task.id.startswith("cgt-")
    [sent] = fake_ark.book.requests
    assert (sent.method, sent.path) == ("POST", "/api/v3/contents/generations/tasks")
    assert sent.body == {
        "model": MODEL,
        "content": [{"type": "text", "text": SEED_PROMPT}],
        "duration": 6,
        "resolution": "720p",
        "ratio": "16:9",
    }
    assert "--" not in sent.body["content"][0]["text"]  # no old-style text commands


@pytest.mark.parametrize(
    "roles",
    [("first_frame",), ("first_frame", "last_frame"), ("reference_image",) * 3],
)
def test_images_are_image_url_items_with_their_roles(
    ark_adapter: VideoAdapter, fake_ark: FakeArk, roles: tuple[str, ...]
) -> None:
    images = [ImageInput(f"https://img.example/{i}.png", role) for i, role in enumerate(roles)]

    ark_adapter.create_task(ask(*images), MODEL)

    content = fake_ark.book.requests[-1].body["content"]
    assert content[0] == {"type": "text", "text": SEED_PROMPT}
    assert content[1:] == [
        {"type": "image_url", "image_url": {"url": f"https://img.example/{i}.png"}, "role": role}
        for i, role in enumerate(roles)
    ]


def test_a_task_lives_queued_running_succeeded(
    ark_adapter: VideoAdapter, fake_ark: FakeArk
) -> None:
    task = created(ark_adapter, fake_ark, TaskPlan.succeeding(completion_tokens=246840))

    running = ark_adapter.get_task(task.id)
    done = ark_adapter.get_task(task.id)

    assert running.status is TaskStatus.RUNNING and running.video_url is None
    assert done.status is TaskStatus.SUCCEEDED
    assert done.video_url == f"https://ark-content.example/{task.id}.mp4?sig=abc"
    assert done.usage.completion_tokens == 246840
    assert done.usage.seconds == Decimal(6)
    updated_at = fake_ark.book.tasks[task.id].created_at + 20
    assert done.video_expires_at == (updated_at + 24 * 3600) * 1000
    assert done.error is None
    assert fake_ark.book.count("GET", task.id) == 2


@pytest.mark.parametrize(
    ("plan", "ours"),
    [
        (TaskPlan(steps=("queued", "queued")), TaskStatus.QUEUED),
        (TaskPlan(steps=("queued", "running")), TaskStatus.RUNNING),
        (TaskPlan(steps=("queued", "succeeded")), TaskStatus.SUCCEEDED),
        (TaskPlan(steps=("queued", "failed")), TaskStatus.FAILED),
        (TaskPlan(steps=("queued", "cancelled")), TaskStatus.CANCELLED),
        (TaskPlan(steps=("queued", "expired")), TaskStatus.EXPIRED),
    ],
)
def test_every_ark_status_maps_to_ours(
    ark_adapter: VideoAdapter, fake_ark: FakeArk, plan: TaskPlan, ours: TaskStatus
) -> None:
    task = created(ark_adapter, fake_ark, plan)

    polled = ark_adapter.get_task(task.id)

    assert polled.status is ours
    assert (polled.video_url is not None) == (ours is TaskStatus.SUCCEEDED)


def test_a_failed_task_says_why_without_the_key(
    ark_adapter: VideoAdapter, fake_ark: FakeArk
) -> None:
    plan = TaskPlan(steps=("queued", "failed"), error=f"quota of key {fake_ark.api_key} exhausted")
    task = created(ark_adapter, fake_ark, plan)

    failed = ark_adapter.get_task(task.id)

    assert failed.status is TaskStatus.FAILED
    assert failed.error is not None and "OutputVideoSensitiveContentDetected" in failed.error
    assert "exhausted" in failed.error and fake_ark.api_key not in failed.error
    assert failed.video_url is None and failed.usage.completion_tokens is None


def test_a_queued_task_is_cancelled(ark_adapter: VideoAdapter, fake_ark: FakeArk) -> None:
    task = created(ark_adapter, fake_ark, TaskPlan.staying_queued())

    ark_adapter.cancel_task(task.id)

    assert fake_ark.book.count("DELETE", task.id) == 1
    assert ark_adapter.get_task(task.id).status is TaskStatus.CANCELLED


def test_a_running_task_is_not_cancelled(ark_adapter: VideoAdapter, fake_ark: FakeArk) -> None:
    task = created(ark_adapter, fake_ark, TaskPlan.running())

    with pytest.raises(UpstreamRejectedError, match="running; Ark cancels only queued"):
        ark_adapter.cancel_task(task.id)

    assert fake_ark.book.count("DELETE") == 0  # never sent: it would be refused anyway


def test_a_finished_task_is_never_deleted_by_a_cancel(
    ark_adapter: VideoAdapter, fake_ark: FakeArk
) -> None:
    task = created(ark_adapter, fake_ark, TaskPlan(steps=("succeeded",)))

    with pytest.raises(UpstreamRejectedError):
        ark_adapter.cancel_task(task.id)

    assert fake_ark.book.count("DELETE") == 0 and task.id in fake_ark.book.tasks


def test_ark_refuses_a_delete_of_a_running_task(ark_adapter: ArkAdapter, fake_ark: FakeArk) -> None:
    """The fake's side: what a cancel racing the task's start gets."""
    task = created(ark_adapter, fake_ark, TaskPlan.running())

    with pytest.raises(UpstreamRejectedError, match="cannot be cancelled"):
        ark_adapter.transport.delete(ark_adapter._task_url(task.id), ark_adapter.headers)


def test_chat_is_refused(ark_adapter: VideoAdapter) -> None:
    request = ChatRequest.model_validate(
        {"model": "Ark#m", "messages": [{"role": "user", "content": "hi"}]}
    )
    with pytest.raises(UpstreamUnsupportedError, match="video model"):
        ark_adapter.chat(request, MODEL)
    with pytest.raises(UpstreamUnsupportedError, match="video model"):
        ark_adapter.stream(request, MODEL)


# ---------------------------------------------------------------------------- errors


def test_a_wrong_key_is_an_auth_error_without_the_key(
    make_ark_adapter: AdapterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "ark-wrong-key-0123456789abcdefghij"
    adapter = make_ark_adapter(api_key=wrong)
    with caplog.at_level(logging.WARNING, logger="llmrouter"):
        with pytest.raises(UpstreamAuthError) as raised:
            adapter.create_task(ask(), MODEL)
        with pytest.raises(UpstreamAuthError):
            adapter.get_task("cgt-1")

    assert raised.value.upstream_status == 401
    assert wrong not in str(raised.value) and wrong not in caplog.text


def test_what_ark_rejects_is_a_rejected_error(ark_adapter: VideoAdapter) -> None:
    with pytest.raises(UpstreamRejectedError, match="`duration`") as raised:
        ark_adapter.create_task(ask(duration=99), MODEL)
    assert raised.value.upstream_status == 400


def test_an_unknown_task_is_a_rejected_error(ark_adapter: VideoAdapter) -> None:
    with pytest.raises(UpstreamRejectedError, match="not found"):
        ark_adapter.get_task("cgt-nobody")


def test_a_task_id_stays_one_path_segment(ark_adapter: ArkAdapter) -> None:
    assert ark_adapter._task_url("../x?y=1#z").endswith("/tasks/..%2Fx%3Fy%3D1%23z")
    with pytest.raises(UpstreamRejectedError, match=r"task id cgt\?x=1 is not found"):
        ark_adapter.get_task("cgt?x=1")  # the whole id reached Ark, none of it as a query
    with pytest.raises(UpstreamRejectedError, match="no task id"):
        ark_adapter.get_task("")


def test_a_server_error_is_an_upstream_error_with_retry_after(
    ark_adapter: VideoAdapter, fake_ark: FakeArk
) -> None:
    task = created(ark_adapter, fake_ark)
    fake_ark.script.append(Fault(status=500, retry_after=3, message=f"boom {fake_ark.api_key}"))

    with pytest.raises(UpstreamError) as raised:
        ark_adapter.get_task(task.id)

    assert type(raised.value) is UpstreamError and raised.value.upstream_status == 500
    assert raised.value.retry_after == 3 and fake_ark.api_key not in str(raised.value)
    assert ark_adapter.get_task(task.id).status is TaskStatus.RUNNING  # the fault was one GET


def test_a_slow_answer_is_a_timeout(make_ark_adapter: AdapterFactory, fake_ark: FakeArk) -> None:
    adapter = make_ark_adapter(read_timeout=0.2)
    fake_ark.script.append(Fault(delay=0.6))
    with pytest.raises(UpstreamTimeoutError):
        adapter.create_task(ask(), MODEL)


# ---------------------------------------------------------------------------- hostile


def test_a_huge_answer_is_refused_by_the_bound(
    make_ark_adapter: AdapterFactory, fake_ark: FakeArk
) -> None:
    adapter = make_ark_adapter(max_answer_bytes=2048)
    task = created(adapter, fake_ark)
    fake_ark.script.append(Fault(padding=100_000))
    with pytest.raises(UpstreamError, match="larger than 2048 bytes"):
        adapter.get_task(task.id)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("<html>oops</html>", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"status": "running"}', "id"),
        ('{"id": "cgt-1"}', "status"),
        ('{"id": "cgt-1", "status": "paused"}', "does not document"),
        ('{"id": "cgt-1", "status": "succeeded"}', "without content.video_url"),
        ('{"id": "cgt-1", "status": "succeeded", "content": {"video_url": 7}}', "video_url"),
        ('{"id": "cgt-1", "status": "running", "usage": {"completion_tokens": 1.5}}', "usage"),
        ('{"id": "cgt-1", "status": "running", "usage": {"completion_tokens": -1}}', "usage"),
        ('{"id": "cgt-1", "status": "running", "updated_at": NaN}', "not JSON"),
        ('{"id": "cgt-1", "status": "failed", "error": "a string"}', "error"),
        ('{"id": 12, "status": "queued"}', "id"),
    ],
)
def test_an_unreadable_task_is_an_upstream_error(
    ark_adapter: VideoAdapter, fake_ark: FakeArk, raw: str, says: str
) -> None:
    fake_ark.script.append(Fault(raw=raw))
    with pytest.raises(UpstreamError, match=says) as raised:
        ark_adapter.get_task("cgt-1")
    assert type(raised.value) is UpstreamError


@pytest.mark.parametrize("raw", ["{}", '{"id": ""}', '{"id": null}', "not json"])
def test_an_unreadable_create_answer_is_an_upstream_error(
    ark_adapter: VideoAdapter, fake_ark: FakeArk, raw: str
) -> None:
    fake_ark.script.append(Fault(raw=raw))
    with pytest.raises(UpstreamError):
        ark_adapter.create_task(ask(), MODEL)


def test_a_connection_reset_mid_answer_is_an_upstream_error(
    ark_adapter: VideoAdapter, fake_ark: FakeArk
) -> None:
    task = created(ark_adapter, fake_ark)
    fake_ark.script.append(Fault(reset_mid_body=True))
    with pytest.raises(UpstreamError):
        ark_adapter.get_task(task.id)

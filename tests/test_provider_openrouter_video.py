"""The openrouter kind against the fake OpenRouter video API: the submit body (frames and
references), every status, the video URL and exact cost, no cancel, errors, and a
hostile upstream."""

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
from llmrouter.providers.video_base import (
    ImageInput,
    TaskStatus,
    UpstreamTask,
    VideoAdapter,
    VideoRequest,
)
from llmrouter.schemas import ChatRequest
from tests.upstreams.faults import Fault
from tests.upstreams.openrouter_server import FakeOpenRouter
from tests.upstreams.video_tasks import TaskPlan

pytest_plugins = ["tests.video_fixtures"]
AdapterFactory = Callable[..., VideoAdapter]

MODEL = "bytedance/seedance-2.0"
PROMPT = "A cinematic 6-second product reveal of a crypto analytics dashboard"


def ask(*images: ImageInput) -> VideoRequest:
    return VideoRequest(PROMPT, 6, "720p", "16:9", images)


def submitted(
    adapter: VideoAdapter, fake: FakeOpenRouter, plan: TaskPlan | None = None
) -> UpstreamTask:
    if plan is not None:
        fake.book.next_plans.append(plan)
    return adapter.create_task(ask(), MODEL)


def test_text_only_submit_sends_the_documented_body(
    openrouter_adapter: VideoAdapter, fake_openrouter: FakeOpenRouter
) -> None:
    job = openrouter_adapter.create_task(ask(), MODEL)

    assert job.status is TaskStatus.QUEUED and job.id.startswith("vgen-")
    [sent] = fake_openrouter.book.requests
    assert (sent.method, sent.path) == ("POST", "/api/v1/videos")
    assert sent.body == {
        "model": MODEL,
        "prompt": PROMPT,
        "duration": 6,
        "resolution": "720p",
        "aspect_ratio": "16:9",
    }


def test_frames_and_references_go_where_openrouter_takes_them(
    openrouter_adapter: VideoAdapter, fake_openrouter: FakeOpenRouter
) -> None:
    openrouter_adapter.create_task(
        ask(
            ImageInput("https://img.example/a.png", "first_frame"),
            ImageInput("https://img.example/b.png", "last_frame"),
        ),
        MODEL,
    )
    openrouter_adapter.create_task(
        ask(ImageInput("https://img.example/c.png", "reference_image")), MODEL
    )

    frames, references = (r.body for r in fake_openrouter.book.requests)
    assert frames["frame_images"] == [
        {"type": "image_url", "image_url": {"url": "https://img.example/a.png"}, "frame_type": t}
        if t == "first_frame"
        else {
            "type": "image_url",
            "image_url": {"url": "https://img.example/b.png"},
            "frame_type": t,
        }
        for t in ("first_frame", "last_frame")
    ]
    assert "input_references" not in frames
    assert references["input_references"] == [
        {"type": "image_url", "image_url": {"url": "https://img.example/c.png"}}
    ]
    assert "frame_images" not in references


def test_an_unknown_image_role_is_refused_before_sending(
    openrouter_adapter: VideoAdapter, fake_openrouter: FakeOpenRouter
) -> None:
    with pytest.raises(UpstreamUnsupportedError, match="middle_frame"):
        openrouter_adapter.create_task(ask(ImageInput("https://x/y.png", "middle_frame")), MODEL)
    assert fake_openrouter.book.requests == []


def test_a_job_lives_pending_in_progress_completed_with_its_exact_cost(
    openrouter_adapter: VideoAdapter, fake_openrouter: FakeOpenRouter
) -> None:
    cost = "0.1000000000000000055511151231257827"  # no float holds it
    job = submitted(openrouter_adapter, fake_openrouter, TaskPlan(cost=cost, progress=(0, 40, 100)))

    running = openrouter_adapter.get_task(job.id)
    done = openrouter_adapter.get_task(job.id)

    assert (running.status, running.progress, running.video_url) == (TaskStatus.RUNNING, 40, None)
    assert running.usage.cost is None
    assert done.status is TaskStatus.SUCCEEDED and done.progress == 100
    assert done.video_url == f"https://storage.openrouter.example/{job.id}.mp4?sig=abc"
    assert done.usage.cost == Decimal(cost) and str(done.usage.cost) == cost
    assert fake_openrouter.book.count("GET", job.id) == 2


@pytest.mark.parametrize(
    ("step", "ours"),
    [
        ("queued", TaskStatus.QUEUED),  # pending
        ("running", TaskStatus.RUNNING),  # in_progress
        ("succeeded", TaskStatus.SUCCEEDED),  # completed
        ("failed", TaskStatus.FAILED),
        ("cancelled", TaskStatus.CANCELLED),
        ("expired", TaskStatus.EXPIRED),
    ],
)
def test_every_openrouter_status_maps_to_ours(
    openrouter_adapter: VideoAdapter,
    fake_openrouter: FakeOpenRouter,
    step: str,
    ours: TaskStatus,
) -> None:
    job = submitted(openrouter_adapter, fake_openrouter, TaskPlan(steps=("queued", step)))

    polled = openrouter_adapter.get_task(job.id)

    assert polled.status is ours
    assert (polled.video_url is not None) == (ours is TaskStatus.SUCCEEDED)


def test_a_failed_job_says_why_without_the_key(
    openrouter_adapter: VideoAdapter, fake_openrouter: FakeOpenRouter
) -> None:
    key = fake_openrouter.api_key
    plan = TaskPlan.failing(error=f"provider refused key {key}: content policy")
    job = submitted(openrouter_adapter, fake_openrouter, plan)
    openrouter_adapter.get_task(job.id)

    failed = openrouter_adapter.get_task(job.id)

    assert failed.status is TaskStatus.FAILED and failed.error is not None
    assert "content policy" in failed.error and key not in failed.error
    assert failed.usage.cost is None


def test_cancel_is_unsupported_and_sends_nothing(
    openrouter_adapter: VideoAdapter, fake_openrouter: FakeOpenRouter
) -> None:
    job = submitted(openrouter_adapter, fake_openrouter, TaskPlan.staying_queued())

    with pytest.raises(UpstreamUnsupportedError, match="no cancel"):
        openrouter_adapter.cancel_task(job.id)

    assert len(fake_openrouter.book.requests) == 1


def test_chat_is_refused(openrouter_adapter: VideoAdapter) -> None:
    request = ChatRequest.model_validate(
        {"model": "OpenRouter#m", "messages": [{"role": "user", "content": "hi"}]}
    )
    with pytest.raises(UpstreamUnsupportedError, match="video model"):
        openrouter_adapter.chat(request, MODEL)
    with pytest.raises(UpstreamUnsupportedError, match="video model"):
        openrouter_adapter.stream(request, MODEL)


# ---------------------------------------------------------------------------- errors


def test_a_wrong_key_is_an_auth_error_without_the_key(
    make_openrouter_adapter: AdapterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-or-v1-wrong-key-0123456789abcdefghij"
    adapter = make_openrouter_adapter(api_key=wrong)
    with caplog.at_level(logging.WARNING, logger="llmrouter"):
        with pytest.raises(UpstreamAuthError) as raised:
            adapter.create_task(ask(), MODEL)
        with pytest.raises(UpstreamAuthError):
            adapter.get_task("vgen-1")

    assert raised.value.upstream_status == 401
    assert wrong not in str(raised.value) and wrong not in caplog.text


def test_what_openrouter_rejects_is_a_rejected_error(openrouter_adapter: VideoAdapter) -> None:
    with pytest.raises(UpstreamRejectedError, match="prompt: Required") as raised:
        openrouter_adapter.create_task(VideoRequest("", 6, "720p", "16:9"), MODEL)
    assert raised.value.upstream_status == 400
    with pytest.raises(UpstreamRejectedError, match="not found"):
        openrouter_adapter.get_task("vgen-nobody")
    with pytest.raises(UpstreamRejectedError, match="no job id"):
        openrouter_adapter.get_task("")


def test_a_server_error_is_an_upstream_error(
    openrouter_adapter: VideoAdapter, fake_openrouter: FakeOpenRouter
) -> None:
    job = submitted(openrouter_adapter, fake_openrouter)
    fake_openrouter.script.append(Fault(status=503, retry_after=7))

    with pytest.raises(UpstreamError) as raised:
        openrouter_adapter.get_task(job.id)

    assert type(raised.value) is UpstreamError and raised.value.upstream_status == 503
    assert raised.value.retry_after == 7
    assert openrouter_adapter.get_task(job.id).status is TaskStatus.RUNNING


def test_a_slow_answer_is_a_timeout(
    make_openrouter_adapter: AdapterFactory, fake_openrouter: FakeOpenRouter
) -> None:
    adapter = make_openrouter_adapter(read_timeout=0.2)
    fake_openrouter.script.append(Fault(delay=0.6))
    with pytest.raises(UpstreamTimeoutError):
        adapter.get_task("vgen-1")


# ---------------------------------------------------------------------------- hostile


def test_a_huge_answer_is_refused_by_the_bound(
    make_openrouter_adapter: AdapterFactory, fake_openrouter: FakeOpenRouter
) -> None:
    adapter = make_openrouter_adapter(max_answer_bytes=2048)
    job = submitted(adapter, fake_openrouter)
    fake_openrouter.script.append(Fault(padding=100_000))
    with pytest.raises(UpstreamError, match="larger than 2048 bytes"):
        adapter.get_task(job.id)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("<html>502</html>", "not JSON"),
        ('"completed"', "not a JSON object"),
        ('{"status": "completed"}', "id"),
        ('{"id": "vgen-1"}', "status"),
        ('{"id": "vgen-1", "status": "done"}', "does not document"),
        ('{"id": "vgen-1", "status": "completed"}', "without urls"),
        ('{"id": "vgen-1", "status": "completed", "urls": []}', "without urls"),
        ('{"id": "vgen-1", "status": "completed", "urls": [1]}', "urls"),
        ('{"id": "vgen-1", "status": "completed", "urls": ["u"], "usage": {"cost": -1}}', "cost"),
        ('{"id": "vgen-1", "status": "completed", "urls": ["u"], "usage": {"cost": "x"}}', "cost"),
        (
            '{"id": "vgen-1", "status": "completed", "urls": ["u"], "usage": {"cost": Infinity}}',
            "JSON",
        ),
        ('{"id": "vgen-1", "status": "failed", "error": {"nested": true}}', "error"),
        ('{"id": "vgen-1", "status": "in_progress", "progress": 250}', "progress"),
    ],
)
def test_an_unreadable_job_is_an_upstream_error(
    openrouter_adapter: VideoAdapter, fake_openrouter: FakeOpenRouter, raw: str, says: str
) -> None:
    fake_openrouter.script.append(Fault(raw=raw))
    with pytest.raises(UpstreamError, match=says) as raised:
        openrouter_adapter.get_task("vgen-1")
    assert type(raised.value) is UpstreamError

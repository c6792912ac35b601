"""ModelArk (BytePlus) and Volcengine Ark's video task API, which serves Seedance.

Create: ``POST {base}/contents/generations/tasks`` with ``model`` and ``content``: the
prompt as a ``{"type": "text"}`` item, each image as an ``image_url`` item with its
``role`` (``first_frame``, ``last_frame``, ``reference_image``). ``duration``,
``resolution`` and ``ratio`` go as top-level fields, as the current API documents them;
the older ``--dur 5 --rs 720p`` commands appended to the text are not used. The answer is
``{"id"}``; a new task is queued.

Poll: ``GET {base}/contents/generations/tasks/{id}``: ``status`` is one of queued, running,
succeeded, failed, cancelled, expired (each is ours by the same name; any other status is
an unreadable answer, never guessed final), ``content.video_url``, ``usage
.completion_tokens`` (what Ark bills), ``duration`` (the seconds generated), ``error
{code, message}`` of a failed task, ``updated_at`` in Unix seconds. Ark keeps a video
24 hours, so ``video_expires_at`` is ``updated_at`` plus a day.

Cancel: ``DELETE`` of the same URL. Ark cancels only queued tasks, and a DELETE of a
finished task deletes its record, so the task is read first and anything but queued is
refused here (``UpstreamRejectedError``) without a DELETE.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ..errors import UpstreamError, UpstreamRejectedError
from .http import HTTPTransport, path_segment
from .registry import register
from .video_base import TaskStatus, TaskUsage, UpstreamTask, VideoAdapter, VideoRequest

#: how long Ark serves a finished task's video_url
VIDEO_LIFETIME_MS = 24 * 3600 * 1000

STATUSES = {status.value: status for status in TaskStatus}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ArkCreated(_Wire):
    id: StrictStr = Field(min_length=1)


class ArkError(_Wire):
    code: StrictStr | StrictInt | None = None
    message: StrictStr | None = None


class ArkContent(_Wire):
    video_url: StrictStr | None = None


class ArkUsage(_Wire):
    completion_tokens: StrictInt | None = Field(default=None, ge=0)


class ArkTask(_Wire):
    id: StrictStr = Field(min_length=1)
    status: StrictStr
    content: ArkContent | None = None
    usage: ArkUsage | None = None
    error: ArkError | None = None
    duration: StrictInt | None = Field(default=None, ge=0)
    updated_at: StrictInt | None = Field(default=None, ge=0)


@register
class ArkAdapter(VideoAdapter):
    kind = "ark"
    default_base_url = "https://ark.ap-southeast.bytepluses.com/api/v3"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.transport = HTTPTransport(settings, self.base_url)
        self.tasks_url = self.base_url + "/contents/generations/tasks"
        secret = settings.secret()
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self.headers.update(settings.headers)

    def build_body(self, request: VideoRequest, upstream_model: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": request.prompt}]
        content += [
            {"type": "image_url", "image_url": {"url": image.url}, "role": image.role}
            for image in request.images
        ]
        return {
            "model": upstream_model,
            "content": content,
            "duration": request.duration,
            "resolution": request.resolution,
            "ratio": request.ratio,
        }

    def create_task(self, request: VideoRequest, upstream_model: str) -> UpstreamTask:
        answer = self.transport.post(
            self.tasks_url, self.build_body(request, upstream_model), self.headers
        )
        created = self.transport.parsed(ArkCreated, answer, "a created task")
        return UpstreamTask(id=created.id, status=TaskStatus.QUEUED)

    def get_task(self, task_id: str) -> UpstreamTask:
        answer = self.transport.get(self._task_url(task_id), self.headers)
        task = self.transport.parsed(ArkTask, answer, "a task")
        status = STATUSES.get(task.status)
        if status is None:
            raise UpstreamError(
                f"{self.name} sent a task status it does not document: "
                + self.transport.redacted(repr(task.status)),
                provider=self.name,
            )
        video_url = task.content.video_url if task.content else None
        if status is TaskStatus.SUCCEEDED and not video_url:
            raise UpstreamError(
                f"{self.name} sent a succeeded task without content.video_url",
                provider=self.name,
            )
        succeeded = status is TaskStatus.SUCCEEDED
        return UpstreamTask(
            id=task.id,
            status=status,
            video_url=video_url if succeeded else None,
            video_expires_at=task.updated_at * 1000 + VIDEO_LIFETIME_MS
            if succeeded and task.updated_at is not None
            else None,
            error=self._error_text(task) if status is TaskStatus.FAILED else None,
            usage=TaskUsage(
                completion_tokens=task.usage.completion_tokens if task.usage else None,
                seconds=Decimal(task.duration) if succeeded and task.duration else None,
            ),
        )

    def cancel_task(self, task_id: str) -> None:
        task = self.get_task(task_id)
        if task.status is not TaskStatus.QUEUED:
            raise UpstreamRejectedError(
                f"{self.name}: the task is {task.status.value}; Ark cancels only queued tasks",
                provider=self.name,
            )
        self.transport.delete(self._task_url(task_id), self.headers)

    def _task_url(self, task_id: str) -> str:
        if not task_id:
            raise UpstreamRejectedError(f"{self.name}: no task id", provider=self.name)
        return f"{self.tasks_url}/{path_segment(task_id)}"

    def _error_text(self, task: ArkTask) -> str:
        error = task.error
        if error is None or (error.code is None and error.message is None):
            return "the task failed (no reason given)"
        said = ": ".join(str(part) for part in (error.code, error.message) if part is not None)
        return self.transport.redacted(said)

    def close(self) -> None:
        self.transport.close()

"""OpenRouter's video generation API (kind ``openrouter``), which serves Seedance among
others. Its chat API is OpenAI's: configure that as kind ``openai-compatible``.

Create: ``POST {base}/videos`` with ``model``, ``prompt``, ``duration``, ``resolution``
and ``aspect_ratio`` (our ``ratio``). First and last frames go in ``frame_images``
(``{"type": "image_url", "image_url": {"url"}, "frame_type"}``), reference images in
``input_references`` (``{"type": "image_url", "image_url": {"url"}}``). The answer (202)
is ``{id, polling_url, status}``.

Poll: ``GET {base}/videos/{id}``: ``status`` pending → queued, in_progress → running,
completed → succeeded, and failed, cancelled, expired by the same names (any other is an
unreadable answer, never guessed final); ``urls[0]`` is the video (a signed URL a client
can fetch; ``unsigned_urls`` need our key, so they are never handed out); ``usage.cost``
is USD, read exactly from the number's text; ``error`` is a string.

Cancel: OpenRouter documents no cancel endpoint (submit, poll, content and the model list
only), so ``cancel_task`` raises ``UpstreamUnsupportedError`` and sends nothing.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ..errors import UpstreamError, UpstreamRejectedError, UpstreamUnsupportedError
from .http import HTTPTransport, path_segment
from .registry import register
from .video_base import TaskStatus, TaskUsage, UpstreamTask, VideoAdapter, VideoRequest

STATUSES = {
    "pending": TaskStatus.QUEUED,
    "in_progress": TaskStatus.RUNNING,
    "completed": TaskStatus.SUCCEEDED,
    "failed": TaskStatus.FAILED,
    "cancelled": TaskStatus.CANCELLED,
    "expired": TaskStatus.EXPIRED,
}
#: our image roles as OpenRouter's frame types (a reference image is an input reference)
FRAME_TYPES = {"first_frame": "first_frame", "last_frame": "last_frame"}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OpenRouterUsage(_Wire):
    cost: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)


class OpenRouterJob(_Wire):
    id: StrictStr = Field(min_length=1)
    status: StrictStr
    urls: list[StrictStr] | None = None
    usage: OpenRouterUsage | None = None
    error: StrictStr | None = None
    progress: StrictInt | None = Field(default=None, ge=0, le=100)


@register
class OpenRouterVideoAdapter(VideoAdapter):
    kind = "openrouter"
    default_base_url = "https://openrouter.ai/api/v1"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.transport = HTTPTransport(settings, self.base_url)
        self.videos_url = self.base_url + "/videos"
        secret = settings.secret()
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self.headers.update(settings.headers)

    def build_body(self, request: VideoRequest, upstream_model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": upstream_model,
            "prompt": request.prompt,
            "duration": request.duration,
            "resolution": request.resolution,
            "aspect_ratio": request.ratio,
        }
        frames = [
            {
                "type": "image_url",
                "image_url": {"url": image.url},
                "frame_type": FRAME_TYPES[image.role],
            }
            for image in request.images
            if image.role in FRAME_TYPES
        ]
        references = [
            {"type": "image_url", "image_url": {"url": image.url}}
            for image in request.images
            if image.role == "reference_image"
        ]
        if len(frames) + len(references) != len(request.images):
            unknown = sorted({i.role for i in request.images} - {*FRAME_TYPES, "reference_image"})
            raise UpstreamUnsupportedError(
                f"{self.name}: no image role '{unknown[0]}' in OpenRouter's video API",
                provider=self.name,
            )
        if frames:
            body["frame_images"] = frames
        if references:
            body["input_references"] = references
        return body

    def create_task(self, request: VideoRequest, upstream_model: str) -> UpstreamTask:
        answer = self.transport.post(
            self.videos_url, self.build_body(request, upstream_model), self.headers
        )
        return self._task(answer, "a submitted job")

    def get_task(self, task_id: str) -> UpstreamTask:
        if not task_id:
            raise UpstreamRejectedError(f"{self.name}: no job id", provider=self.name)
        answer = self.transport.get(f"{self.videos_url}/{path_segment(task_id)}", self.headers)
        return self._task(answer, "a job")

    def cancel_task(self, task_id: str) -> None:
        raise UpstreamUnsupportedError(
            f"{self.name}: OpenRouter's video API has no cancel; the job runs to its end",
            provider=self.name,
        )

    def _task(self, answer: bytes, what: str) -> UpstreamTask:
        job = self.transport.parsed(OpenRouterJob, answer, what)
        status = STATUSES.get(job.status)
        if status is None:
            raise UpstreamError(
                f"{self.name} sent a job status it does not document: "
                + self.transport.redacted(repr(job.status)),
                provider=self.name,
            )
        succeeded = status is TaskStatus.SUCCEEDED
        video_url = job.urls[0] if job.urls else None
        if succeeded and not video_url:
            raise UpstreamError(
                f"{self.name} sent a completed job without urls", provider=self.name
            )
        error = None
        if status is TaskStatus.FAILED:
            error = self.transport.redacted(job.error or "the job failed (no reason given)")
        return UpstreamTask(
            id=job.id,
            status=status,
            progress=job.progress,
            video_url=video_url if succeeded else None,
            error=error,
            usage=TaskUsage(cost=job.usage.cost if job.usage else None),
        )

    def close(self) -> None:
        self.transport.close()

"""The video adapter seam: one class per video task API (``ark``, ``openrouter``) turns
our task request into the provider's create call, and its task state back into ours.

A video adapter is a ``ProviderAdapter`` (it is built, registered and kept in the provider
directory like any other) whose chat calls are refused: a video model is never a chat
model. It raises only ``llmrouter.errors.Upstream*`` errors, and knows no keys, quotas or
money.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from ..errors import UpstreamUnsupportedError
from ..schemas import ChatCompletion, ChatRequest
from .base import ChunkStream, ProviderAdapter


class TaskStatus(StrEnum):
    """A task's status, ours (each provider's own vocabulary maps onto it)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self in (self.SUCCEEDED, self.FAILED, self.CANCELLED, self.EXPIRED)


@dataclass(frozen=True)
class ImageInput:
    """An image the video starts from, ends on, or takes after."""

    url: str
    #: ``first_frame``, ``last_frame`` or ``reference_image``
    role: str = "first_frame"


@dataclass(frozen=True)
class VideoRequest:
    """What a client asked for, checked (the model's resolutions, durations, ratios)."""

    prompt: str
    duration: int
    resolution: str
    ratio: str
    images: tuple[ImageInput, ...] = ()


@dataclass(frozen=True)
class TaskUsage:
    """What the provider reports having used; each is None when it says nothing of it."""

    completion_tokens: int | None = None
    seconds: Decimal | None = None
    #: USD, as OpenRouter reports ``usage.cost``
    cost: Decimal | None = None


@dataclass(frozen=True)
class UpstreamTask:
    """A task as the provider reports it."""

    id: str
    status: TaskStatus
    progress: int | None = None  # percent, when the provider gives it
    video_url: str | None = None
    #: Unix milliseconds after which ``video_url`` no longer serves, when known
    video_expires_at: int | None = None
    error: str | None = None
    usage: TaskUsage = field(default_factory=TaskUsage)


class VideoAdapter(ProviderAdapter):
    """Speaks one video task API."""

    @abstractmethod
    def create_task(self, request: VideoRequest, upstream_model: str) -> UpstreamTask:
        """Create the task upstream; its id and first status."""

    @abstractmethod
    def get_task(self, task_id: str) -> UpstreamTask:
        """The task's state now."""

    @abstractmethod
    def cancel_task(self, task_id: str) -> None:
        """Cancel a task still queued (``UpstreamRejectedError`` when the provider refuses:
        it has started, say)."""

    # A video model never answers chat: the Router refuses that before admission; these
    # are the adapter's own guard.
    def chat(self, request: ChatRequest, upstream_model: str) -> ChatCompletion:
        raise self._not_chat(upstream_model)

    def stream(self, request: ChatRequest, upstream_model: str) -> ChunkStream:
        raise self._not_chat(upstream_model)

    def _not_chat(self, upstream_model: str) -> UpstreamUnsupportedError:
        return UpstreamUnsupportedError(
            f"{self.name}: '{upstream_model}' is a video model: create a video task "
            "(POST /v1/contents/generations/tasks) instead",
            provider=self.name,
        )

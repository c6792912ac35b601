"""``router.video``: async video tasks (seed 001) on the request phases.

A task is admitted when it is created (paid from the key's balance: the estimate is
reserved, 402 when the balance cannot cover it), keeps its ticket with the task row, and is
settled exactly once when it ends — by whichever process sees it end first:

- ``create``: admit, write the task row (``submitting``) with its ticket, ask the provider,
  record its task id. A provider that refuses ends the task ``failed``: its reservation goes
  back in full and the client gets the provider's error.
- ``get``: a poll. A task that ended is answered from its row, never fetched again. Else one
  poll per ``video_poll_seconds`` reaches the provider, whatever the number of clients and
  processes polling (the store's ``claim_poll``; an in-process cache answers the rest); a
  provider that does not answer is not a final status.
- when a task ends: ``succeeded`` is charged what the provider reports (tokens, seconds or
  its own cost; never above the reservation, the rest handed back); ``failed``,
  ``cancelled`` and ``expired`` hand the reservation back in full.
- ``sweep``: polls the tasks nobody polls, ends those past ``video_task_expiry_seconds``,
  and settles the tickets of tasks whose process died between ending them and settling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from cachetools import TTLCache
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..billing import nanos_to_usd
from ..config import ModelSettings
from ..errors import (
    ConflictError,
    InvalidRequestError,
    LLMRouterError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamUnsupportedError,
)
from ..naming import Target
from ..providers.video_base import (
    ImageInput,
    TaskStatus,
    TaskUsage,
    UpstreamTask,
    VideoAdapter,
    VideoRequest,
)
from ..schemas import Usage, parse_body
from ..store import KeyRecord, VideoTaskRecord
from ..store.video_store import FINAL_STATUSES
from .pricing import charge_nanos, estimate_nanos
from .tokens import StatusTokens, not_found

if TYPE_CHECKING:
    from ..router import Router

log = logging.getLogger("llmrouter")

SUBMITTING = "submitting"
#: a task still ``submitting`` this long after it was made lost its creator: it failed
SUBMIT_GIVE_UP_MS = 10 * 60 * 1000
DEFAULT_DURATION = 5
DEFAULT_RATIO = "16:9"
DEFAULT_RESOLUTION = "720p"
MAX_IMAGES = 4
MAX_LIST = 100


_Text = Annotated[str, StringConstraints(max_length=10_000)]


class _Image(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: Annotated[str, StringConstraints(min_length=1, max_length=100_000)]
    role: str = "first_frame"


class TaskFields(BaseModel):
    """``POST /v1/contents/generations/tasks`` (seed 001's fields, and ours)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    prompt: _Text
    duration: int | None = Field(default=None, ge=1, le=3600)
    resolution: str | None = Field(default=None, max_length=16)
    ratio: str | None = Field(default=None, max_length=16)
    images: list[_Image | str] | None = Field(default=None, max_length=MAX_IMAGES)


@dataclass(frozen=True)
class VideoSweep:
    """What ``router.video.sweep()`` did: how many unfinished tasks it checked, the tasks
    found ended after its poll (ended by it, or meanwhile by a poll elsewhere), and the
    ended tasks whose pending ticket it settled (their process died in between)."""

    checked: int
    ended: list[VideoTaskRecord]
    settled: list[VideoTaskRecord]


@dataclass(frozen=True)
class VideoTask:
    """A task and the status token its key polls it with."""

    record: VideoTaskRecord
    status_token: str

    def view(self) -> dict[str, Any]:
        task = self.record
        status = "queued" if task.status == SUBMITTING else task.status
        return {
            "id": task.id,
            "object": "video.generation.task",
            "status_token": self.status_token,
            "altllm_status_token": self.status_token,
            "status": status,
            "progress": task.progress,
            "video_url": task.video_url,
            "video_url_expires_at": _iso(task.video_expires_at),
            "error": task.error,
            "model": task.model,
            "prompt": task.prompt,
            "duration": task.duration,
            "resolution": task.resolution,
            "ratio": task.ratio,
            "reserved": nanos_to_usd(task.reserved_nanos),
            "charged": nanos_to_usd(task.charged_nanos or 0),
            "created_at": _iso(task.created_at),
            "updated_at": _iso(task.updated_at),
        }


class VideoTasks:
    """The video task operations of one Router (``router.video``)."""

    def __init__(self, router: Router, secret_key: str | None) -> None:
        self._router = router
        self._tokens = StatusTokens(secret_key) if secret_key else None
        settings = router.settings
        self._poll_ms = int(settings.video_poll_seconds * 1000)
        self._expiry_ms = int(settings.video_task_expiry_seconds * 1000)
        # the last view of each task polled here: clients polling faster than the poll
        # interval are answered from it. It keeps the router's clock, as claim_poll does
        # (on another clock a view could outlive the interval it stands for).
        self._recent: TTLCache[str, VideoTaskRecord] = TTLCache(
            maxsize=10_000,
            ttl=max(settings.video_poll_seconds, 0.001),
            timer=lambda: router.now_ms() / 1000,
        )

    # ---------------------------------------------------------------- create

    def create(
        self,
        fields: Mapping[str, Any],
        *,
        caller: KeyRecord,
        idempotency_key: str | None = None,
    ) -> VideoTask:
        """A new task (or, for an ``idempotency_key`` seen before with the same body, the
        task it made)."""
        tokens = self._token_maker()
        parsed = _parse(fields)
        target, adapter = self._video_target(parsed.model)
        request = _video_request(parsed, target.model)
        body_hash = _hash(fields)
        if idempotency_key is not None:
            if not (0 < len(idempotency_key) <= 200) or not idempotency_key.isprintable():
                raise InvalidRequestError(
                    "The Idempotency-Key header is 1 to 200 printable characters.",
                    param="Idempotency-Key",
                )
            earlier = self._router.store.find_task(caller.id, idempotency_key)
            if earlier is not None:
                return self._same_request(earlier, body_hash, tokens)
        key, targets = self._router.phases.allowed_targets(caller, [target])
        reserve = estimate_nanos(target.model, request)
        now = self._router.now_ms()
        admitted = self._router.phases.admit(
            key,
            targets,
            reserve,
            request_id="vidtask-" + uuid.uuid4().hex,
            lifetime_ms=self._expiry_ms + SUBMIT_GIVE_UP_MS,
            paid_only=True,
        )
        ticket = admitted.ticket
        task_id = "vtask-" + uuid.uuid4().hex
        try:
            record = self._router.store.insert_task(
                {
                    "id": task_id,
                    "key_id": key.id,
                    "request_id": ticket.request_id,
                    "provider": target.provider,
                    "model": target.public_id,
                    "upstream_model": target.upstream_model,
                    "upstream_id": None,
                    "status": SUBMITTING,
                    "progress": None,
                    "video_url": None,
                    "video_expires_at": None,
                    "error": None,
                    "prompt": request.prompt,
                    "duration": request.duration,
                    "resolution": request.resolution,
                    "ratio": request.ratio,
                    "images": [{"url": i.url, "role": i.role} for i in request.images],
                    "reserved_nanos": ticket.reserved_nanos,
                    "cost_nanos": None,
                    "charged_nanos": None,
                    "idempotency_key": idempotency_key,
                    "body_hash": body_hash,
                    "created_at": now,
                    "updated_at": now,
                    "polled_at": now,
                    "expires_at": now + self._expiry_ms,
                }
            )
        except BaseException:
            self._router.phases.release(ticket)
            if idempotency_key is not None:  # made meanwhile by the same key and key
                earlier = self._router.store.find_task(caller.id, idempotency_key)
                if earlier is not None:
                    return self._same_request(earlier, body_hash, tokens)
            raise
        try:
            upstream = adapter.create_task(request, target.upstream_model)
        except UpstreamError as exc:
            self._end(record, target, TaskStatus.FAILED, {"error": exc.message[:500]})
            exc.headers = {**admitted.rate_limit.headers(), **exc.headers}
            raise
        changes = {"upstream_id": upstream.id[:200], **_state(upstream, now)}
        if upstream.status.final:
            record = self._end(record, target, upstream.status, changes, upstream.usage)
        else:
            self._router.store.update_task(task_id, changes)
            record = self._read(task_id)
        return VideoTask(record, tokens.issue(task_id, key.id))

    # ---------------------------------------------------------------- read

    def get(self, status_token: str, *, caller: KeyRecord) -> VideoTask:
        """The task, polled upstream at most once per ``video_poll_seconds`` everywhere."""
        tokens = self._token_maker()
        record = self._own(tokens, status_token, caller)
        return VideoTask(self._polled(record), status_token)

    def list(
        self, *, caller: KeyRecord, limit: int = 20, before: str | None = None
    ) -> list[VideoTask]:
        """The key's tasks, newest first; ``before``: a status token of the page's last."""
        tokens = self._token_maker()
        if not 1 <= limit <= MAX_LIST:
            raise InvalidRequestError(f"'limit' is 1 to {MAX_LIST}.", param="limit")
        after = self._own(tokens, before, caller) if before else None
        records = self._router.store.list_tasks(caller.id, limit=limit, before=after)
        return [VideoTask(r, tokens.issue(r.id, caller.id)) for r in records]

    def cancel(self, status_token: str, *, caller: KeyRecord) -> VideoTask:
        """Cancel a queued task: its reservation goes back in full. A task running or
        ended is a 409."""
        tokens = self._token_maker()
        record = self._polled(self._own(tokens, status_token, caller))
        if record.status != TaskStatus.QUEUED or record.upstream_id is None:
            raise ConflictError(
                f"Only a queued task can be cancelled; this one is {record.status}.",
                param="status_token",
                code="task_not_cancellable",
            )
        target, adapter = self._task_target(record), self._task_adapter(record)
        try:
            adapter.cancel_task(record.upstream_id)
        except (UpstreamRejectedError, UpstreamUnsupportedError) as exc:
            # the provider started it before this router's polls saw it start, or it has
            # no way to cancel (OpenRouter)
            raise ConflictError(
                f"This task cannot be cancelled: {exc.message}",
                param="status_token",
                code="task_not_cancellable",
            ) from exc
        ended = self._end(record, target, TaskStatus.CANCELLED, {})
        return VideoTask(ended, status_token)

    # ---------------------------------------------------------------- sweep

    def sweep(self) -> VideoSweep:
        """Settle the tickets of tasks ended without their settlement, then poll every
        unfinished task (ending those past their expiry, and those whose creator died
        before the provider answered). A task that cannot be polled or settled (its
        provider down, the database refusing one write) is left for the next sweep; the
        others are still swept."""
        store = self._router.store
        settled: list[VideoTaskRecord] = []
        for record in store.ended_with_pending_ticket():
            target = self._task_target(record)
            try:
                if self._settle(record, target, TaskStatus(record.status), TaskUsage()):
                    settled.append(record)
            except LLMRouterError as exc:  # the others are still settled
                log.warning("settling video task %s: %s", record.id, exc.message)
        ended: list[VideoTaskRecord] = []
        unfinished = store.unfinished_tasks()
        for record in unfinished:
            try:
                after = self._polled(record, cached=False)
            except LLMRouterError as exc:
                log.warning("sweeping video task %s: %s", record.id, exc.message)
                continue
            if after.status in FINAL_STATUSES:
                ended.append(after)
        return VideoSweep(checked=len(unfinished), ended=ended, settled=settled)

    # ---------------------------------------------------------------- helpers

    def _polled(self, record: VideoTaskRecord, *, cached: bool = True) -> VideoTaskRecord:
        if record.status in FINAL_STATUSES:
            return record
        if cached and record.id in self._recent:
            return self._recent[record.id]
        now = self._router.now_ms()
        # ending a task needs no adapter: a task whose provider left the config still
        # expires, and its reservation still goes back
        target = self._task_target(record)
        if now >= record.expires_at:
            return self._end(record, target, TaskStatus.EXPIRED, {"error": "expired"})
        if record.upstream_id is None:
            if now - record.created_at >= SUBMIT_GIVE_UP_MS:
                reason = "the task's creation was interrupted before the provider answered"
                return self._end(record, target, TaskStatus.FAILED, {"error": reason})
            return record
        adapter = self._task_adapter(record)
        store = self._router.store
        if store.claim_poll(record.id, now=now, interval_ms=self._poll_ms):
            try:
                upstream = adapter.get_task(record.upstream_id)
            except UpstreamError:
                pass  # no answer is not a final status: the next poll asks again
            else:
                changes = _state(upstream, now)
                if upstream.status.final:
                    return self._end(record, target, upstream.status, changes, upstream.usage)
                store.update_task(record.id, changes)
        fresh = self._read(record.id)
        self._recent[record.id] = fresh
        return fresh

    def _end(
        self,
        record: VideoTaskRecord,
        target: Target,
        status: TaskStatus,
        changes: dict[str, Any],
        usage: TaskUsage | None = None,
    ) -> VideoTaskRecord:
        """End the task (once, whichever process gets here first) and settle its ticket."""
        now = self._router.now_ms()
        cost = 0
        if status is TaskStatus.SUCCEEDED:
            usage = usage or TaskUsage()
            if usage.cost is None and not self._priced(record):
                cost = record.reserved_nanos  # its prices left the config: the estimate
            else:
                cost = charge_nanos(target.model, _request_of(record), usage)
        values = {
            **changes,
            "status": status.value,
            "updated_at": now,
            "cost_nanos": cost,
            "charged_nanos": min(cost, record.reserved_nanos),
        }
        if self._router.store.finish_task(record.id, values):
            self._settle(self._read(record.id), target, status, usage or TaskUsage())
        self._recent.pop(record.id, None)
        return self._read(record.id)

    def _settle(
        self, record: VideoTaskRecord, target: Target, status: TaskStatus, usage: TaskUsage
    ) -> bool:
        """Settle the task's ticket; False when it was settled already."""
        ticket = self._router.store.ticket_of(record.request_id)
        if ticket is None:
            return False  # settled already
        phases = self._router.phases
        if status is TaskStatus.SUCCEEDED:
            tokens = usage.completion_tokens or 0
            phases.settle(
                ticket,
                target,
                "ok",
                Usage(completion_tokens=tokens, total_tokens=tokens),
                usage.completion_tokens is None and usage.cost is None,
                cost_nanos=record.cost_nanos or 0,
            )
        else:
            phases.settle(ticket, target, "failed", Usage(), False, record.error or status.value)
        return True

    def _own(self, tokens: StatusTokens, token: str, caller: KeyRecord) -> VideoTaskRecord:
        task_id = tokens.task_of(token, caller.id)
        record = self._router.store.get_task(task_id)
        if record is None or record.key_id != caller.id:
            raise not_found()
        return record

    def _read(self, task_id: str) -> VideoTaskRecord:
        record = self._router.store.get_task(task_id)
        assert record is not None  # tasks are never deleted
        return record

    def _same_request(
        self, earlier: VideoTaskRecord, body_hash: str, tokens: StatusTokens
    ) -> VideoTask:
        if earlier.body_hash != body_hash:
            raise ConflictError(
                "This Idempotency-Key was used with another request body.",
                param="Idempotency-Key",
                code="idempotency_conflict",
            )
        return VideoTask(earlier, tokens.issue(earlier.id, earlier.key_id))

    def _video_target(self, model: str) -> tuple[Target, VideoAdapter]:
        directory, target = self._router._resolve(model)
        adapter = directory.adapters.get(target.provider)
        if not target.model.is_video or not isinstance(adapter, VideoAdapter):
            raise InvalidRequestError(
                f"The model '{target.public_id}' is not a video model: video tasks need one "
                'whose output_modalities are ["video"].',
                param="model",
                code="not_a_video_model",
            )
        return target, adapter

    def _task_target(self, record: VideoTaskRecord) -> Target:
        """The task's model as the directory has it now (a model gone from the config is
        settled at its reservation: the estimate the key agreed to; see ``_priced``)."""
        try:
            return self._router.directory.catalog.resolve(record.model)
        except LLMRouterError:
            return Target(
                record.provider,
                record.upstream_model,
                ModelSettings(id=record.upstream_model, output_modalities=["video"]),
            )

    def _task_adapter(self, record: VideoTaskRecord) -> VideoAdapter:
        """The adapter of the task's provider, or 409 when it left the config."""
        adapter = self._router.directory.adapters.get(record.provider)
        if not isinstance(adapter, VideoAdapter):
            raise ConflictError(
                f"The provider '{record.provider}' of this task is no longer configured.",
                param="status_token",
                code="provider_gone",
            )
        return adapter

    def _priced(self, record: VideoTaskRecord) -> bool:
        """Whether the config still has the task's model, and so its prices."""
        try:
            self._router.directory.catalog.resolve(record.model)
        except LLMRouterError:
            return False
        return True

    def _token_maker(self) -> StatusTokens:
        if self._tokens is None:
            raise ConflictError(
                "This router has no secret_key, so it cannot sign video task status "
                "tokens: set secret_key or secret_key_env in its config.",
                code="secret_key_missing",
            )
        return self._tokens


def _parse(fields: Mapping[str, Any]) -> TaskFields:
    parsed = parse_body(TaskFields, fields)  # a lone surrogate is never stored
    if not parsed.prompt.strip():
        raise InvalidRequestError("Invalid 'prompt': it is empty.", param="prompt")
    return parsed


def _video_request(fields: TaskFields, model: ModelSettings) -> VideoRequest:
    default = min(
        max(model.default_duration or DEFAULT_DURATION, model.min_duration), model.max_duration
    )
    duration = fields.duration if fields.duration is not None else default
    if not model.min_duration <= duration <= model.max_duration:
        raise InvalidRequestError(
            f"Invalid 'duration': this model makes videos of {model.min_duration} to "
            f"{model.max_duration} seconds.",
            param="duration",
        )
    resolution = fields.resolution or (model.resolutions or [DEFAULT_RESOLUTION])[0]
    if model.resolutions and resolution not in model.resolutions:
        raise InvalidRequestError(
            f"Invalid 'resolution': one of {', '.join(model.resolutions)}.", param="resolution"
        )
    ratio = fields.ratio or (model.ratios or [DEFAULT_RATIO])[0]
    if model.ratios and ratio not in model.ratios:
        raise InvalidRequestError(
            f"Invalid 'ratio': one of {', '.join(model.ratios)}.", param="ratio"
        )
    images = []
    for index, image in enumerate(fields.images or []):
        url, role = (image, "first_frame") if isinstance(image, str) else (image.url, image.role)
        if role not in ("first_frame", "last_frame", "reference_image"):
            raise InvalidRequestError(
                f"Invalid 'images[{index}].role': first_frame, last_frame or reference_image.",
                param=f"images[{index}].role",
            )
        images.append(ImageInput(url, role))
    return VideoRequest(fields.prompt, duration, resolution, ratio, tuple(images))


def _request_of(record: VideoTaskRecord) -> VideoRequest:
    images = tuple(ImageInput(i["url"], i["role"]) for i in record.images)
    return VideoRequest(record.prompt, record.duration, record.resolution, record.ratio, images)


def _state(upstream: UpstreamTask, now: int) -> dict[str, Any]:
    status = upstream.status.value if not upstream.status.final else None
    values: dict[str, Any] = {
        "progress": upstream.progress,
        "video_url": upstream.video_url,
        "video_expires_at": upstream.video_expires_at,
        "error": upstream.error[:500] if upstream.error else None,
        "updated_at": now,
    }
    if status is not None:
        values["status"] = status
    return values


def _hash(fields: Mapping[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _iso(millis: int | None) -> str | None:
    if millis is None:
        return None
    return (
        datetime.fromtimestamp(millis / 1000, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )

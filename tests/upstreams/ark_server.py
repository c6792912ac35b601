"""A fake ModelArk video task API (``/api/v3/contents/generations/tasks``) on loopback.

It checks what Ark checks (the bearer key, ``model`` and a non-empty ``content`` of known
item types and image roles, the documented top-level fields and their values), keeps its
tasks in memory with a scripted life (``tests.upstreams.video_tasks``), cancels only queued
tasks (a DELETE of a finished one deletes it, as Ark does), records every request, and
obeys the shared fault script (``tests.upstreams.faults``) on every route.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, g, request

from .faults import Fault, FaultScript, padded, reset_mid_body, verbatim_answer
from .loopback import LoopbackServer
from .video_tasks import FakeTask, TaskBook, TaskPlan

__all__ = ["FakeArk", "Fault", "TaskPlan", "serve_fake_ark"]

TASKS_PATH = "/api/v3/contents/generations/tasks"
KNOWN_FIELDS = {
    "model", "content", "callback_url", "return_last_frame", "service_tier",
    "execution_expires_after", "generate_audio", "draft", "tools", "safety_identifier",
    "resolution", "ratio", "duration", "frames", "seed", "camera_fixed", "watermark",
}  # fmt: skip
ITEM_TYPES = {"text", "image_url", "video_url", "audio_url", "draft_task"}
IMAGE_ROLES = {"first_frame", "last_frame", "reference_image"}
RESOLUTIONS = {"480p", "720p", "1080p"}
RATIOS = {"16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive"}


@dataclass
class FakeArk:
    api_key: str = "ark-upstream-test-0123456789abcdef"
    script: FaultScript = field(default_factory=FaultScript)
    book: TaskBook = field(default_factory=TaskBook)
    url: str = ""

    def app(self) -> Flask:
        app = Flask("fake-ark")
        app.add_url_rule(TASKS_PATH, view_func=self._create, methods=["POST"])
        app.add_url_rule(TASKS_PATH + "/<task_id>", view_func=self._task, methods=["GET", "DELETE"])
        return app

    @property
    def base_url(self) -> str:
        """What an ``ark`` provider's ``base_url`` is set to."""
        return self.url + "/api/v3"

    def provider(self, **overrides: Any) -> dict[str, Any]:
        """A ``[[providers]]`` entry of kind ark on this fake (a dict: a Router's config
        takes it as it is, ``ProviderSettings.model_validate`` too)."""
        return {
            "name": "Ark",
            "kind": "ark",
            "base_url": self.base_url,
            "api_key": self.api_key,
            **overrides,
        }

    def reset(self) -> None:
        self.script.clear()
        self.book.reset()

    # ------------------------------------------------------------------ handlers

    def _create(self) -> Response:
        body = request.get_json(force=True, silent=True)
        self.book.record("POST", request.path, body)
        model = body.get("model") if isinstance(body, dict) else None
        refusal = self._refusal(self.script.take(model if isinstance(model, str) else None))
        if refusal is not None:
            return refusal
        problem = _invalid(body)
        if problem:
            return _error(400, "InvalidParameter", problem, "BadRequest")
        task = self.book.create("cgt-20260101000000-", body["model"], body, int(time.time()))
        return self._answer({"id": task.id})

    def _task(self, task_id: str) -> Response:
        self.book.record(request.method, request.path, None)
        task = self.book.tasks.get(task_id)
        refusal = self._refusal(self.script.take(task.model if task else None))
        if refusal is not None:
            return refusal
        if task is None:
            return _error(
                404,
                "ResourceNotFound",
                f"The specified resource task id {task_id} is not found.",
                "NotFound",
            )
        if request.method == "DELETE":
            return self._delete(task)
        task.advance()
        return self._answer(_rendered(task))

    def _delete(self, task: FakeTask) -> Response:
        if task.status == "queued":
            task.forced = "cancelled"
        elif task.status == "running":
            return _error(
                400,
                "InvalidParameter",
                f"Task {task.id} is running and cannot be cancelled; only queued tasks can.",
                "BadRequest",
            )
        else:
            del self.book.tasks[task.id]
        return self._answer({})

    # ------------------------------------------------------------------ helpers

    def _refusal(self, fault: Fault) -> Response | None:
        """A bad key's 401, or the fault's answer; None to answer normally."""
        g.fault = fault  # per request: the server is threaded
        fault.pause()
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return _error(
                401,
                "AuthenticationError",
                f"The API key {given} in the request is missing or invalid.",
                "Unauthorized",
            )
        if fault.status:
            return _error(
                fault.status,
                fault.error_type or "InternalServiceError",
                fault.message or f"scripted failure {fault.status}",
                "ServerError",
                fault.retry_after_header(),
            )
        return verbatim_answer(fault, streamed=False)

    def _answer(self, body: dict[str, Any]) -> Response:
        text = json.dumps(padded(body, g.fault))
        if g.fault.reset_mid_body:
            return reset_mid_body(text, "application/json", request.environ)
        return Response(text, mimetype="application/json")


def _rendered(task: FakeTask) -> dict[str, Any]:
    body, plan, status = task.body, task.plan, task.status
    answer: dict[str, Any] = {
        "id": task.id,
        "model": task.model,
        "status": status,
        "error": None,
        "created_at": task.created_at,
        "updated_at": task.created_at + 10 * task.step,
        "seed": 1276,
        "resolution": body.get("resolution", "720p"),
        "ratio": body.get("ratio", "16:9"),
        "framespersecond": 24,
        "service_tier": body.get("service_tier", "default"),
        "execution_expires_after": body.get("execution_expires_after", 172800),
    }
    if status == "succeeded":
        answer["content"] = {"video_url": f"https://ark-content.example/{task.id}.mp4?sig=abc"}
        answer["duration"] = plan.duration or body.get("duration", 5)
        answer["usage"] = {
            "completion_tokens": plan.completion_tokens,
            "total_tokens": plan.completion_tokens,
        }
    if status == "failed":
        answer["error"] = {"code": plan.error_code, "message": plan.error}
    return answer


def _invalid(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        return f"The parameter `{unknown[0]}` specified in the request is not valid."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "The parameter `model` specified in the request is missing."
    content = body.get("content")
    if not isinstance(content, list) or not content:
        return "The parameter `content` specified in the request is missing."
    for index, item in enumerate(content):
        if not isinstance(item, dict) or item.get("type") not in ITEM_TYPES:
            return f"The parameter `content[{index}].type` specified in the request is not valid."
        if item["type"] == "text" and not (isinstance(item.get("text"), str) and item["text"]):
            return f"The parameter `content[{index}].text` specified in the request is missing."
        if item["type"] == "image_url":
            url = item.get("image_url")
            if not isinstance(url, dict) or not isinstance(url.get("url"), str):
                return f"The parameter `content[{index}].image_url.url` is missing."
            if item.get("role", "first_frame") not in IMAGE_ROLES:
                return (
                    f"The parameter `content[{index}].role` specified in the request is not valid."
                )
    duration = body.get("duration", 5)
    if not isinstance(duration, int) or isinstance(duration, bool) or not 2 <= duration <= 15:
        return "The parameter `duration` specified in the request is not valid."
    if body.get("resolution", "720p") not in RESOLUTIONS:
        return "The parameter `resolution` specified in the request is not valid."
    if body.get("ratio", "16:9") not in RATIOS:
        return "The parameter `ratio` specified in the request is not valid."
    return None


def _error(
    status: int, code: str, message: str, kind: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"error": {"code": code, "message": message, "param": "", "type": kind}}
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)


def serve_fake_ark(**kwargs: Any) -> tuple[FakeArk, LoopbackServer]:
    fake = FakeArk(**kwargs)
    server = LoopbackServer(fake.app())
    fake.url = server.url
    return fake, server

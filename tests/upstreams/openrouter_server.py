"""A fake OpenRouter video generation API (``/api/v1/videos``) on loopback.

It checks what OpenRouter checks (the bearer key, ``model`` and ``prompt``, known fields,
frame images with a ``frame_type``), answers a submit with 202 ``{id, polling_url,
status}``, keeps its jobs in memory with a scripted life (``tests.upstreams.video_tasks``),
reports ``usage.cost`` as the plan's number text verbatim, has no cancel route (as
OpenRouter documents none), records every request, and obeys the shared fault script
(``tests.upstreams.faults``).
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

__all__ = ["FakeOpenRouter", "Fault", "TaskPlan", "serve_fake_openrouter"]

VIDEOS_PATH = "/api/v1/videos"
KNOWN_FIELDS = {
    "model", "prompt", "duration", "resolution", "aspect_ratio", "size", "frame_images",
    "input_references", "generate_audio", "seed", "callback_url", "provider",
}  # fmt: skip
STATUSES = {
    "queued": "pending",
    "running": "in_progress",
    "succeeded": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "expired": "expired",
}
#: stands in for usage.cost while dumping, then replaced by the plan's number text
COST_MARK = "__cost__"


@dataclass
class FakeOpenRouter:
    api_key: str = "sk-or-v1-upstream-test-0123456789abcdef"
    script: FaultScript = field(default_factory=FaultScript)
    book: TaskBook = field(default_factory=TaskBook)
    url: str = ""

    def app(self) -> Flask:
        app = Flask("fake-openrouter")
        app.add_url_rule(VIDEOS_PATH, view_func=self._submit, methods=["POST"])
        app.add_url_rule(VIDEOS_PATH + "/<job_id>", view_func=self._poll, methods=["GET"])
        return app

    @property
    def base_url(self) -> str:
        """What an ``openrouter`` provider's ``base_url`` is set to."""
        return self.url + "/api/v1"

    def provider(self, **overrides: Any) -> dict[str, Any]:
        """A ``[[providers]]`` entry of kind openrouter on this fake (a dict: a Router's config
        takes it as it is, ``ProviderSettings.model_validate`` too)."""
        return {
            "name": "OpenRouter",
            "kind": "openrouter",
            "base_url": self.base_url,
            "api_key": self.api_key,
            **overrides,
        }

    def reset(self) -> None:
        self.script.clear()
        self.book.reset()

    # ------------------------------------------------------------------ handlers

    def _submit(self) -> Response:
        body = request.get_json(force=True, silent=True)
        self.book.record("POST", request.path, body)
        model = body.get("model") if isinstance(body, dict) else None
        refusal = self._refusal(self.script.take(model if isinstance(model, str) else None))
        if refusal is not None:
            return refusal
        problem = _invalid(body)
        if problem:
            return _error(400, problem)
        job = self.book.create("vgen-", body["model"], body, int(time.time()))
        return self._answer(_rendered(job), status=202)

    def _poll(self, job_id: str) -> Response:
        self.book.record("GET", request.path, None)
        job = self.book.tasks.get(job_id)
        refusal = self._refusal(self.script.take(job.model if job else None))
        if refusal is not None:
            return refusal
        if job is None:
            return _error(404, f"Video generation job {job_id} not found")
        job.advance()
        return self._answer(_rendered(job))

    # ------------------------------------------------------------------ helpers

    def _refusal(self, fault: Fault) -> Response | None:
        g.fault = fault  # per request: the server is threaded
        fault.pause()
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return _error(401, f"No auth credentials found for key {given}")
        if fault.status:
            message = fault.message or f"scripted failure {fault.status}"
            return _error(fault.status, message, fault.retry_after_header())
        return verbatim_answer(fault, streamed=False)

    def _answer(self, body: dict[str, Any], status: int = 200) -> Response:
        text = json.dumps(padded(body, g.fault))
        if COST_MARK in text:
            cost = body["usage"]["cost"].removeprefix(COST_MARK)
            text = text.replace(json.dumps(body["usage"]["cost"]), cost)
        if g.fault.reset_mid_body:
            return reset_mid_body(text, "application/json", request.environ)
        return Response(text, status=status, mimetype="application/json")


def _rendered(job: FakeTask) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": job.id,
        "polling_url": f"{VIDEOS_PATH}/{job.id}",
        "status": STATUSES[job.status],
    }
    if job.progress is not None:
        answer["progress"] = job.progress
    if job.status == "succeeded":
        answer["generation_id"] = f"gen-{job.id}"
        answer["urls"] = [f"https://storage.openrouter.example/{job.id}.mp4?sig=abc"]
        answer["unsigned_urls"] = [f"https://openrouter.ai{VIDEOS_PATH}/{job.id}/content?index=0"]
        answer["usage"] = {"cost": COST_MARK + job.plan.cost, "is_byok": False}
    if job.status == "failed":
        answer["error"] = job.plan.error
    return answer


def _invalid(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Invalid request body: expected an object"
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        return f"Unrecognized key(s) in object: '{unknown[0]}'"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Required"
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return "prompt: Required"
    for index, frame in enumerate(body.get("frame_images", [])):
        if not isinstance(frame, dict) or frame.get("type") != "image_url":
            return f"frame_images.{index}.type: Invalid literal value, expected 'image_url'"
        if not isinstance((frame.get("image_url") or {}).get("url"), str):
            return f"frame_images.{index}.image_url.url: Required"
        if frame.get("frame_type") not in ("first_frame", "last_frame"):
            return f"frame_images.{index}.frame_type: expected 'first_frame' | 'last_frame'"
    for index, reference in enumerate(body.get("input_references", [])):
        if not isinstance(reference, dict) or reference.get("type") != "image_url":
            return f"input_references.{index}.type: Invalid literal value, expected 'image_url'"
    duration = body.get("duration", 5)
    if not isinstance(duration, int) or isinstance(duration, bool) or duration < 1:
        return "duration: Expected a positive integer"
    return None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"code": status, "message": message}}
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)


def serve_fake_openrouter(**kwargs: Any) -> tuple[FakeOpenRouter, LoopbackServer]:
    fake = FakeOpenRouter(**kwargs)
    server = LoopbackServer(fake.app())
    fake.url = server.url
    return fake, server

"""Seed 001's video task routes: create a task, poll it by its status token, list the
key's tasks, cancel a queued one. OpenAI's error shape; a token of another key, or altered
in any byte, is 404 ``task_not_found``."""

from __future__ import annotations

from ..errors import InvalidRequestError
from ..router import Router
from .access import caller, json_object
from .route import Route
from .wire import Request, Response, json_response

_TASKS = "/contents/generations/tasks"


def create_task(router: Router, request: Request) -> Response:
    key = caller(router, request)
    task = router.video.create(
        json_object(router, request),
        caller=key,
        idempotency_key=request.header("Idempotency-Key"),
    )
    return json_response(task.view(), 200)


def get_task(router: Router, request: Request, status_token: str) -> Response:
    task = router.video.get(status_token, caller=caller(router, request))
    return json_response(task.view())


def list_tasks(router: Router, request: Request) -> Response:
    key = caller(router, request)
    raw_limit = request.query.get("limit", "20")
    if not raw_limit.isdigit() or len(raw_limit) > 4:
        raise InvalidRequestError("'limit' is a whole number from 1 to 100.", param="limit")
    tasks = router.video.list(
        caller=key, limit=int(raw_limit), before=request.query.get("before") or None
    )
    views = [t.view() for t in tasks]
    # a full page has more only if a task comes after its last (a page ending exactly at
    # the oldest task has none)
    more = len(views) == int(raw_limit) and bool(
        router.video.list(caller=key, limit=1, before=tasks[-1].status_token)
    )
    return json_response(
        {
            "object": "list",
            "data": views,
            "has_more": more,
            "next_before": views[-1]["status_token"] if views else None,
        }
    )


def cancel_task(router: Router, request: Request, status_token: str) -> Response:
    task = router.video.cancel(status_token, caller=caller(router, request))
    return json_response(task.view())


VIDEO_ROUTES = (
    Route("POST", _TASKS, create_task, "create a video generation task (seed 001)"),
    Route("GET", _TASKS, list_tasks, "the calling key's video tasks, newest first"),
    Route("GET", _TASKS + "/{status_token}", get_task, "poll a video task by its status token"),
    Route("DELETE", _TASKS + "/{status_token}", cancel_task, "cancel a queued video task"),
)

"""``RouterMiddleware``: a Router's API inside any WSGI application, under a prefix.

    app = RouterMiddleware(app, router, prefix="/llm")

serves ``/llm/v1/chat/completions`` (and ``/llm/chat/completions``, for clients that add
``/v1`` themselves or never do), ``/llm/v1/models``, … and ``/llm/health``; every other path
goes to the wrapped application untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .http import RouterAPI
from .http.wire import Request
from .router import Router

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class RouterMiddleware:
    def __init__(self, app: WSGIApp, router: Router, *, prefix: str = "/llm") -> None:
        prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.app = app
        self.router = router
        self.api = RouterAPI(
            router, prefixes=(prefix + "/v1", prefix), health_route=prefix + "/health"
        )

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request.from_environ(environ)
        if self.api.match(request.path) is None:
            return self.app(environ, start_response)
        return self.api.handle(request)(start_response)

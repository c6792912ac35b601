"""``RouterAPI``: a Router's OpenAI-compatible API as one WSGI application.

Every front end is a thin adapter over it: ``llmrouter.wsgi.RouterMiddleware`` for any WSGI
app, ``flask_ext.LLMRouter`` for Flask. The routes live in one table (``routes.py``) and
answer under each of the API's prefixes (``/v1`` and, for clients that never add it, the
bare root); the first prefix is the one ``GET /v1/provider`` lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import MethodNotAllowedError, NotFoundError
from ..router import Router
from .connection_routes import ENVELOPED_PATHS
from .route import Route
from .routes import HEALTH, ROUTES
from .wire import Request, Response, error_response


@dataclass(frozen=True)
class Match:
    route: Route | None  # None: under the API's prefix, but no route (404)
    parameters: tuple[str, ...] = ()
    #: every route of the path, one per method (``route`` is the one of the request's)
    routes: tuple[Route, ...] = ()


class RouterAPI:
    """The API of ``router`` at ``prefixes`` (canonical first; ``""`` is the root) and its
    health check at ``health_route`` (None: none). Unknown paths below a non-empty prefix
    get OpenAI's 404; at the root they are not the API's (a host keeps its own)."""

    def __init__(
        self,
        router: Router,
        *,
        prefixes: tuple[str, ...] = ("/v1", ""),
        health_route: str | None = "/health",
    ) -> None:
        self.router = router
        self.prefixes = tuple(p.rstrip("/") for p in prefixes)
        self.health_route = health_route

    def endpoints(self, base: str = "") -> list[str]:
        """``METHOD path`` of every route, under ``base`` (where the app is mounted)."""
        listed = [f"{r.method} {base}{self.prefixes[0]}{r.shown}" for r in ROUTES]
        if self.health_route:
            listed.append(f"GET {base}{self.health_route}")
        return listed

    def match(self, path: str, method: str = "GET") -> Match | None:
        """The route ``path`` names (of ``method`` when several methods share the path), a
        404 of the API's, or None when it is not the API's."""
        if self.health_route and path == self.health_route:
            return Match(HEALTH, routes=(HEALTH,))
        for prefix in self.prefixes:
            if prefix and not (path == prefix or path.startswith(prefix + "/")):
                continue
            below = path[len(prefix) :]
            # The first template that matches names the path; its routes are the methods.
            found: list[tuple[Route, tuple[str, ...]]] = []
            for route in ROUTES:
                parameters = route.match(below)
                if parameters is not None and (not found or route.template == found[0][0].template):
                    found.append((route, parameters))
            if found:
                route, parameters = next(((r, p) for r, p in found if r.method == method), found[0])
                return Match(route, parameters, tuple(r for r, _ in found))
            if prefix:
                return Match(None)
        return None

    def handle(self, request: Request) -> Response:
        """The answer to ``request``: never an exception, never a traceback."""
        # HEAD is GET without the body (HTTP requires it wherever GET is allowed).
        match = self.match(request.path, "GET" if request.method == "HEAD" else request.method)
        try:
            if match is None or match.route is None:
                raise NotFoundError(f"Unknown route: {request.method} {request.path}")
            route = match.route
            if request.method == "OPTIONS":
                methods = ", ".join(r.method for r in match.routes or (route,))
                return Response(204, [], {"Allow": f"{methods}, OPTIONS"})
            if request.method == "HEAD" and route.method == "GET":
                answer = self._answer(route, request, match.parameters)
                return Response(answer.status, [], answer.headers, answer.close)
            if request.method != route.method:
                allowed = ", ".join(r.method for r in match.routes)
                raise MethodNotAllowedError(
                    f"{request.method} is not allowed on {request.path}; use {allowed}.",
                    headers={"Allow": allowed},
                )
            return self._answer(route, request, match.parameters)
        except Exception as exc:
            enveloped = match is not None and match.route is not None and match.route.enveloped
            return error_response(exc, request, enveloped=enveloped or _enveloped_path(request))

    def _answer(self, route: Route, request: Request, parameters: tuple[str, ...]) -> Response:
        request.environ["llmrouter.endpoints"] = self.endpoints(request.base)
        return route.handler(self.router, request, *parameters)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        return self.handle(Request.from_environ(environ))(start_response)


def _enveloped_path(request: Request) -> bool:
    """A path below seed 003's routes (unknown ones too) answers in its envelope."""
    parts = request.path.strip("/").split("/")
    return parts[0] in ENVELOPED_PATHS or (len(parts) > 1 and parts[1] in ENVELOPED_PATHS)

"""``LLMRouter``: the Flask extension that mounts a Router's API inside an app."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask

from llmrouter import __version__
from llmrouter.router import Router

from .blueprint import build_blueprint, json_response, router

#: Flask config keys read by ``init_app`` (constructor arguments win over them).
CONFIG_KEYS = {
    "LLMROUTER_CONFIG": "TOML path or dict to build the Router from when none is given "
    "(default: $LLMROUTER_CONFIG, else the embedded default)",
    "LLMROUTER_URL_PREFIX": 'where the API is mounted (default "/v1")',
    "LLMROUTER_UNPREFIXED_ROUTES": "also answer the API routes without the prefix, for "
    "clients that add /v1 themselves or never do (default True)",
    "LLMROUTER_HEALTH_ROUTE": 'the health check route (default "/health"; False to leave out)',
}


@dataclass
class _State:
    router: Router


class LLMRouter:
    """Mount a Router as an OpenAI-compatible API: ``LLMRouter(app, router=router)``."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        router: Router | None = None,
        url_prefix: str | None = None,
        unprefixed_routes: bool | None = None,
        health_route: str | bool | None = None,
    ) -> None:
        self._router = router
        self._url_prefix = url_prefix
        self._unprefixed_routes = unprefixed_routes
        self._health_route = health_route
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if "llmrouter" in app.extensions:
            raise RuntimeError(
                "LLMRouter is already registered on this app. Create one LLMRouter per app "
                "(or call init_app once); to serve several routers, use several apps."
            )
        router_ = self._router or Router.from_config(
            app.config.get("LLMROUTER_CONFIG") or os.environ.get("LLMROUTER_CONFIG")
        )
        prefix = _pick(self._url_prefix, app.config.get("LLMROUTER_URL_PREFIX"), "/v1")
        unprefixed = _pick(
            self._unprefixed_routes, app.config.get("LLMROUTER_UNPREFIXED_ROUTES"), True
        )
        health = _pick(self._health_route, app.config.get("LLMROUTER_HEALTH_ROUTE"), "/health")
        app.extensions["llmrouter"] = _State(router_)
        prefix = prefix.rstrip("/")
        # Under its own prefix the API answers unknown routes itself (OpenAI's 404 body);
        # at the root that would take over the host app's 404s, so it does not.
        app.register_blueprint(
            build_blueprint("llmrouter", catch_all=bool(prefix)), url_prefix=prefix or None
        )
        if unprefixed and prefix:
            app.register_blueprint(build_blueprint("llmrouter_unprefixed", catch_all=False))
        if health:
            app.register_blueprint(_health_blueprint(health))


def _pick(argument: Any, configured: Any, default: Any) -> Any:
    if argument is not None:
        return argument
    return configured if configured is not None else default


def _health_blueprint(route: str) -> Blueprint:
    bp = Blueprint("llmrouter_health", __name__)

    @bp.route(route, methods=["GET"])
    def health() -> Any:
        r = router()
        body = {"status": "healthy", "service": r.settings.service_name, "version": __version__}
        try:
            r.store.ping()
        except Exception:
            return json_response(
                {**body, "status": "unhealthy", "reason": "the database is unreachable"}, 503
            )
        return json_response(body)

    return bp

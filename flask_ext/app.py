"""A standalone app serving one Router, for ``llmrouter serve`` and for production:
``gunicorn 'flask_ext.app:create_app()'``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, request

from llmrouter.errors import LLMRouterError, MethodNotAllowedError, NotFoundError
from llmrouter.router import Router

from .extension import LLMRouter


def create_app(config: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> Flask:
    """An app with the API at ``/v1`` and at the root; ``config`` defaults to
    ``$LLMROUTER_CONFIG``, then the embedded default (SQLite file + echo provider)."""
    app = Flask("llmrouter")
    router = Router.from_config(
        config if config is not None else os.environ.get("LLMROUTER_CONFIG")
    )
    # The whole app is ours: the API at the root too, and the health check at /health.
    LLMRouter(app, router=router, unprefixed_routes=True, health_route="/health")

    # Routes nobody registered get OpenAI's error body too.
    @app.errorhandler(404)
    def not_found(_: Exception) -> Response:
        return _error(NotFoundError(f"Unknown route: {request.method} {request.path}"))

    @app.errorhandler(405)
    def not_allowed(_: Exception) -> Response:
        return _error(MethodNotAllowedError(f"{request.method} is not allowed on {request.path}"))

    return app


def _error(exc: LLMRouterError) -> Response:
    return Response(json.dumps(exc.to_dict()), status=exc.status, mimetype="application/json")

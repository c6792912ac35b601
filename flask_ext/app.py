"""A standalone app serving one Router, for ``llmrouter serve`` and for production:
``gunicorn 'flask_ext.app:create_app()'``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from llmrouter.router import Router

from .blueprint import error_response
from .extension import LLMRouter


def create_app(config: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> Flask:
    """An app with the API at ``/v1`` and at the root; ``config`` defaults to
    ``$LLMROUTER_CONFIG``, then the embedded default (SQLite file + echo provider)."""
    app = Flask("llmrouter")
    router = Router.from_config(
        config if config is not None else os.environ.get("LLMROUTER_CONFIG")
    )
    LLMRouter(app, router=router)
    # The whole app is ours: routes nobody registered get OpenAI's error body too.
    app.register_error_handler(404, error_response)
    app.register_error_handler(405, error_response)
    return app

"""``LLMRouter``: the Flask extension that mounts a Router's API inside an app.

A thin adapter over ``llmrouter.http.RouterAPI``: Flask routes the API's paths to it, and
it answers them; nothing of the protocol lives here.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from llmrouter.config import load_settings
from llmrouter.errors import DatabaseSchemaError, StoreUnavailableError
from llmrouter.http import IDENTITY_KEY, ROUTES, Request, RouterAPI
from llmrouter.http.wire import json_response
from llmrouter.router import Router
from llmrouter.store import Store

from .commands import register_commands

#: Flask config keys read by ``init_app`` (constructor arguments win over them).
CONFIG_KEYS = {
    "LLMROUTER_CONFIG": "TOML path or dict to build the Router from when none is given "
    "(default: $LLMROUTER_CONFIG, else the embedded default)",
    "LLMROUTER_URL_PREFIX": 'where the API is mounted (default "/v1")',
    "LLMROUTER_UNPREFIXED_ROUTES": "also answer the API routes at the app's root, for "
    "clients that add /v1 themselves or never do (default False: the root is the host's)",
    "LLMROUTER_HEALTH_ROUTE": 'the health check route (default "<prefix>/health"; False to '
    "leave out)",
}
_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
log = logging.getLogger("llmrouter")
IdentityLoader = Callable[[], str | None]


@dataclass
class _State:
    #: None while its database is not at this version's schema (``problem`` says so)
    router: Router | None
    api: RouterAPI | None
    schema_store: Callable[[], Store]
    problem: DatabaseSchemaError | None = None
    identity_loader: IdentityLoader | None = None

    def ready_router(self) -> Router:
        if self.router is None:
            assert self.problem is not None
            raise self.problem
        return self.router


def current_router() -> Router:
    """The Router of the current app (inside a request or an app context)."""
    return _state().ready_router()


def _state() -> _State:
    state = current_app.extensions.get("llmrouter")
    if state is None:
        raise RuntimeError("LLMRouter is not registered on this app: call LLMRouter(app).")
    return state


class LLMRouter:
    """Mount a Router as an OpenAI-compatible API: ``LLMRouter(app, router=router)``, or
    ``LLMRouter(app, db=db)`` to build one on a Flask-SQLAlchemy host's database."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        router: Router | None = None,
        db: Any = None,
        url_prefix: str | None = None,
        unprefixed_routes: bool | None = None,
        health_route: str | bool | None = None,
    ) -> None:
        if router is not None and db is not None:
            raise ValueError("give LLMRouter a router or a db, not both")
        self._router = router
        self._db = db
        self._url_prefix = url_prefix
        self._unprefixed_routes = unprefixed_routes
        self._health_route = health_route
        self._identity_loader: IdentityLoader | None = None
        if app is not None:
            self.init_app(app)

    def identity_loader(self, loader: IdentityLoader) -> IdentityLoader:
        """Decorate a function returning the router key id of the signed-in user (or None):
        the host's own login then calls the API without a Bearer secret."""
        self._identity_loader = loader
        for state in self._states:
            state.identity_loader = loader
        return loader

    @property
    def _states(self) -> list[_State]:
        return getattr(self, "_registered", [])

    def init_app(self, app: Flask) -> None:
        if "llmrouter" in app.extensions:
            raise RuntimeError(
                "LLMRouter is already registered on this app. Create one LLMRouter per app "
                "(or call init_app once); to serve several routers, use several apps."
            )
        config = app.config.get("LLMROUTER_CONFIG") or os.environ.get("LLMROUTER_CONFIG")
        problem = None
        try:
            router = self._router or self._build_router(app, config)
        except DatabaseSchemaError as exc:
            # The app still starts, so that `flask llmrouter db upgrade` can fix it; every
            # API request is refused meanwhile with this message.
            log.error("llmrouter cannot serve: %s", exc.message)
            router, problem = None, exc
        prefix = _pick(self._url_prefix, app.config.get("LLMROUTER_URL_PREFIX"), "/v1")
        # The root is the host's unless it asks: Flask would hand an identical rule to
        # whichever was registered first, silently (the host's own /health, say).
        unprefixed = _pick(
            self._unprefixed_routes, app.config.get("LLMROUTER_UNPREFIXED_ROUTES"), False
        )
        prefix = prefix.rstrip("/")
        health = _pick(
            self._health_route, app.config.get("LLMROUTER_HEALTH_ROUTE"), f"{prefix}/health"
        )
        prefixes = (prefix, "") if unprefixed and prefix else (prefix,)
        api = RouterAPI(router, prefixes=prefixes, health_route=health or None) if router else None
        state = _State(
            router,
            api,
            lambda: self._schema_store(app, config),
            problem,
            self._identity_loader,
        )
        app.extensions["llmrouter"] = state
        self._registered = [*self._states, state]
        app.register_blueprint(_blueprint(prefixes, health or None))
        register_commands(app)

    def _build_router(self, app: Flask, config: Any) -> Router:
        if self._db is None:
            return Router.from_config(config)
        # The host's engine, inside its app context: a relative SQLite path resolves
        # exactly as the host's own does (Flask-SQLAlchemy puts it in the instance folder).
        with app.app_context():
            return Router.from_config(config, engine=self._db.engine)

    def _schema_store(self, app: Flask, config: Any) -> Store:
        """The router's database without the start-up schema check, for the ``db``
        commands that bring it to this version's schema."""
        settings = load_settings(config)
        engine = None
        if self._db is not None:
            with app.app_context():
                engine = self._db.engine
        return Store(
            settings.database_url,
            engine=engine,
            timeout=settings.database_timeout_seconds,
            table_prefix=settings.table_prefix,
            check_schema=False,
        )


def _blueprint(prefixes: tuple[str, ...], health: str | None) -> Blueprint:
    """Flask rules for the API's paths, all answered by ``_serve``. Under a prefix every
    path is the API's (unknown ones get its 404); at the root only its own routes are, so
    the host keeps its 404s."""
    bp = Blueprint("llmrouter", __name__)
    for prefix in prefixes:
        if prefix:
            _add(bp, prefix)
            _add(bp, f"{prefix}/<path:rest>")
            continue
        for route in ROUTES:
            _add(bp, _flask_rule(route.template))
    if health:
        _add(bp, health)
    return bp


def _flask_rule(template: str) -> str:
    """``/keys/{key_id}/rotate`` -> ``/keys/<key_id>/rotate``; ``{m:path}`` -> ``<path:m>``."""
    return re.sub(
        r"\{(\w+)(:path)?\}", lambda m: f"<path:{m[1]}>" if m[2] else f"<{m[1]}>", template
    )


def _add(bp: Blueprint, rule: str) -> None:
    # HEAD and OPTIONS are the API's to answer (Flask would answer them its own way).
    bp.add_url_rule(rule, "api", _serve, methods=_ANY_METHOD, provide_automatic_options=False)


def _serve(**_: str) -> Response:
    state = _state()
    environ = request.environ
    if state.identity_loader is not None:
        identity = state.identity_loader()
        if identity:
            environ[IDENTITY_KEY] = identity
    if state.api is None:
        assert state.problem is not None
        answer = json_response(
            StoreUnavailableError(f"{state.problem.reason}; the API is off until then").to_dict(),
            503,
        )
    else:
        answer = state.api.handle(Request.from_environ(environ))
    response = Response(answer.body, status=answer.status, headers=answer.headers)
    if answer.close is not None:
        # The body's own cleanup does not run if it is closed before it starts.
        response.call_on_close(answer.close)
    return response


def _pick(argument: Any, configured: Any, default: Any) -> Any:
    if argument is not None:
        return argument
    return configured if configured is not None else default

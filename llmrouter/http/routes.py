"""The API's routes: one table, each route a method, a path template, a handler and a line
for the endpoint list of ``GET /v1/provider``. Handlers use only the Router's public
methods."""

from __future__ import annotations

from typing import Any

from .. import __version__, usage
from ..keys import NewKey, TopUp, key_view, parse_fields
from ..metering import MeteredStream
from ..router import Router
from ..store import KeyRecord
from .access import admin, caller, json_object
from .connection_routes import CONNECTION_ROUTES
from .route import Route
from .session_routes import SESSION_ROUTES
from .video_routes import VIDEO_ROUTES
from .wire import Request, Response, event_stream, json_response


def chat_completions(router: Router, request: Request) -> Response:
    key = caller(router, request)
    result = router.complete(request.json_body(router.settings.max_body_bytes), caller=key)
    if isinstance(result.body, MeteredStream):
        return event_stream(result.body, result.body.close, result.headers())
    return json_response(result.body.model_dump_json(exclude_none=True), headers=result.headers())


def list_models(router: Router, request: Request) -> Response:
    return json_response(router.models().model_dump_json())


def get_model(router: Router, request: Request, model_id: str) -> Response:
    return json_response(router.model(model_id).model_dump_json())


def usage_report(router: Router, request: Request) -> Response:
    key = caller(router, request, fresh=True)  # a revoked key reads nothing more, anywhere
    since, until = request.query.get("since"), request.query.get("until")
    rows = router.usage_visible_to(
        key,
        key_id=request.query.get("key_id") or None,
        since_day=usage.day_of(since, field="since") if since else None,
        until_day=usage.day_of(until, field="until") if until else None,
    )
    return json_response(usage.report(rows))


# ---------------------------------------------------------------------- API keys
# The key routes check the caller's secret in the database (``fresh``), not the cache: an
# admin key revoked or rotated in another process manages nothing, at once.


def _with_secret(record: KeyRecord, secret: str, status: int = 200) -> Response:
    # The one answer that carries a secret: shown once, never stored, never again.
    return json_response({**key_view(record), "secret": secret}, status)


def create_key(router: Router, request: Request) -> Response:
    admin(router, request, "API keys")
    new = parse_fields(NewKey, json_object(router, request))
    record, secret = router.create_key(
        new.name,
        admin=new.admin,
        credits=new.credits,
        daily_requests=new.daily_requests,
        throttle_seconds=new.throttle_seconds,
        requests_per_minute=new.requests_per_minute,
        allowed_models=new.allowed_models,
        allowed_providers=new.allowed_providers,
        allowed_tools=new.allowed_tools,
    )
    return _with_secret(record, secret, 201)


def list_keys(router: Router, request: Request) -> Response:
    admin(router, request, "API keys")
    return json_response({"object": "list", "data": [key_view(k) for k in router.list_keys()]})


def get_key(router: Router, request: Request, key_id: str) -> Response:
    admin(router, request, "API keys")
    return json_response(key_view(router.get_key(key_id)))


def update_key(router: Router, request: Request, key_id: str) -> Response:
    admin(router, request, "API keys")
    body = json_object(router, request)
    router.get_key(key_id)  # an unknown key is a 404 before its fields are looked at
    return json_response(key_view(router.update_key(key_id, **body)))


def rotate_key(router: Router, request: Request, key_id: str) -> Response:
    admin(router, request, "API keys")
    return _with_secret(*router.rotate_key(key_id))


def top_up_key(router: Router, request: Request, key_id: str) -> Response:
    admin(router, request, "API keys")
    top_up = parse_fields(TopUp, json_object(router, request))
    return json_response(key_view(router.top_up(key_id, top_up.amount)))


def revoke_key(router: Router, request: Request, key_id: str) -> Response:
    admin(router, request, "API keys")
    return json_response(key_view(router.revoke_key(key_id)))


def my_key(router: Router, request: Request) -> Response:
    return json_response(key_view(router.get_key(caller(router, request, fresh=True).id)))


def rotate_my_key(router: Router, request: Request) -> Response:
    return _with_secret(*router.rotate_key(caller(router, request, fresh=True).id))


def provider_info(router: Router, request: Request) -> Response:
    settings = router.settings
    # the tools the config offers; a key or a model may narrow them (tool_selection.py)
    builtin_tools = router.tools.enabled(settings.tools)
    return json_response(
        {
            "object": "provider",
            "name": settings.service_name,
            "version": __version__,
            "api": "openai-compatible",
            "model_naming": "Provider#Model",
            "endpoints": request.environ["llmrouter.endpoints"],
            "capabilities": {
                "streaming": True,
                "tools": True,
                "json_mode": True,
                "usage_in_stream": True,
                "builtin_tools": bool(builtin_tools),
            },
            "builtin_tools": [
                {"name": t.name, "description": t.description, "parameters": t.parameters}
                for t in builtin_tools
            ],
            "providers": [
                {"name": p.name, "kind": p.kind, "aliases": p.aliases, "models": len(p.models)}
                for p in router.directory.providers
            ],
            "quota": {
                "daily_requests": settings.quota.daily_requests,
                "throttle_seconds": settings.quota.throttle_seconds,
                "requests_per_minute": settings.quota.requests_per_minute,
            },
        }
    )


def health(router: Router, request: Request) -> Response:
    body: dict[str, Any] = {
        "status": "healthy",
        "service": router.settings.service_name,
        "version": __version__,
    }
    if router.healthy():
        return json_response(body)
    return json_response(
        {**body, "status": "unhealthy", "reason": "the database is unreachable"}, 503
    )


ROUTES = (
    Route("POST", "/chat/completions", chat_completions, "chat completions (streamed or not)"),
    Route("GET", "/models", list_models, "the routable models"),
    Route("GET", "/models/{model_id:path}", get_model, "one model (Provider#Model, '#' as %23)"),
    Route("GET", "/provider", provider_info, "this service: endpoints, providers, quota"),
    Route("GET", "/usage", usage_report, "usage and spend (admins: every key's)"),
    # The caller's own key, then the admin routes; a path's more specific templates first.
    Route("GET", "/keys/me", my_key, "the calling key"),
    Route("POST", "/keys/me/rotate", rotate_my_key, "a new secret for the calling key"),
    Route("POST", "/keys", create_key, "create a key (admin; its secret is shown once)"),
    Route("GET", "/keys", list_keys, "every key (admin)"),
    Route("POST", "/keys/{key_id}/rotate", rotate_key, "a new secret for a key (admin)"),
    Route("POST", "/keys/{key_id}/topup", top_up_key, "add USD to a key's balance (admin)"),
    Route("GET", "/keys/{key_id}", get_key, "one key (admin)"),
    Route("PATCH", "/keys/{key_id}", update_key, "change a key's name, limits, restrictions"),
    Route("DELETE", "/keys/{key_id}", revoke_key, "revoke a key (admin)"),
    *CONNECTION_ROUTES,
    *SESSION_ROUTES,
    *VIDEO_ROUTES,
)
HEALTH = Route("GET", "", health, "liveness and the database's health")

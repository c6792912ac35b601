"""Seed 003's routes: provider connections (``/llm-providers``), for admin keys only, in
seed 003's envelope — ``{"success": true, "data": …}``, and ``{"success": false,
"error": {"code", "message", "field"}}`` with the HTTP status on failure."""

from __future__ import annotations

from ..connections.fields import view
from ..router import Router
from .access import admin, json_object
from .route import Route
from .wire import Request, Response, enveloped

#: the first path segment (below the API's prefix) of the enveloped routes
ENVELOPED_PATHS = frozenset({"llm-providers"})
_WHAT = "provider connections"


def list_connections(router: Router, request: Request) -> Response:
    admin(router, request, _WHAT)
    return enveloped([view(c) for c in router.connections.list()])


def create_connection(router: Router, request: Request) -> Response:
    admin(router, request, _WHAT)
    return enveloped(view(router.connections.create(json_object(router, request))), 201)


def get_connection(router: Router, request: Request, connection_id: str) -> Response:
    admin(router, request, _WHAT)
    return enveloped(view(router.connections.get(connection_id)))


def update_connection(router: Router, request: Request, connection_id: str) -> Response:
    admin(router, request, _WHAT)
    body = json_object(router, request)
    return enveloped(view(router.connections.update(connection_id, body)))


def delete_connection(router: Router, request: Request, connection_id: str) -> Response:
    admin(router, request, _WHAT)
    return enveloped(view(router.connections.delete(connection_id)))


def test_connection(router: Router, request: Request, connection_id: str) -> Response:
    admin(router, request, _WHAT)
    return enveloped(router.connections.test(connection_id).view())


CONNECTION_ROUTES = tuple(
    Route(method, template, handler, summary, enveloped=True)
    for method, template, handler, summary in (
        ("GET", "/llm-providers", list_connections, "provider connections and config providers"),
        ("POST", "/llm-providers", create_connection, "add a provider connection (admin)"),
        ("POST", "/llm-providers/{id}/test", test_connection, "test a connection (admin)"),
        ("GET", "/llm-providers/{id}", get_connection, "one provider connection (admin)"),
        ("PATCH", "/llm-providers/{id}", update_connection, "change a connection (admin)"),
        ("DELETE", "/llm-providers/{id}", delete_connection, "delete a connection (admin)"),
    )
)

"""Seed 003's chat routes: ``POST /llm-providers/{id}/chat`` and the chat sessions of a
connection, for admin keys only, in seed 003's envelope. The rules (sessions, billing,
trimming) are ``connections/chat.py``'s."""

from __future__ import annotations

from ..connections.chat import parse_chat_input, session_view
from ..router import Router
from .access import admin, json_object
from .route import Route
from .wire import Request, Response, enveloped

_WHAT = "chat sessions"


def chat(router: Router, request: Request, connection_id: str) -> Response:
    key = admin(router, request, _WHAT)
    turn = parse_chat_input(json_object(router, request))
    reply = router.connections.sessions.chat(
        connection_id, turn.message, turn.session_id, caller=key
    )
    response = enveloped(reply.view())
    response.headers.update(reply.headers)  # the key's X-RateLimit-* after this call
    return response


def list_sessions(router: Router, request: Request, connection_id: str) -> Response:
    admin(router, request, _WHAT)
    return enveloped([session_view(s) for s in router.connections.sessions.list(connection_id)])


def get_session(router: Router, request: Request, connection_id: str, session_id: str) -> Response:
    admin(router, request, _WHAT)
    record = router.connections.sessions.get(connection_id, session_id)
    return enveloped(session_view(record, with_messages=True))


def delete_session(
    router: Router, request: Request, connection_id: str, session_id: str
) -> Response:
    admin(router, request, _WHAT)
    return enveloped(session_view(router.connections.sessions.delete(connection_id, session_id)))


SESSION_ROUTES = tuple(
    Route(method, template, handler, summary, enveloped=True)
    for method, template, handler, summary in (
        ("POST", "/llm-providers/{id}/chat", chat, "chat with a connection in a session (admin)"),
        ("GET", "/llm-providers/{id}/sessions", list_sessions, "a connection's chat sessions"),
        ("GET", "/llm-providers/{id}/sessions/{sid}", get_session, "one chat session (admin)"),
        ("DELETE", "/llm-providers/{id}/sessions/{sid}", delete_session, "delete a session"),
    )
)

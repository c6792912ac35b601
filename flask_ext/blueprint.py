"""The OpenAI-compatible routes: chat completions, models, provider info, usage.

Views find their Router in ``current_app.extensions["llmrouter"]``, so one blueprint
serves any number of apps. Every error leaves as OpenAI's error body, never HTML.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge

from llmrouter import __version__, usage
from llmrouter.errors import (
    InvalidRequestError,
    LLMRouterError,
    MethodNotAllowedError,
    NotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
)
from llmrouter.metering import MeteredStream
from llmrouter.router import Router
from llmrouter.streaming import DONE, encode_event
from llmrouter.usage import day_of

log = logging.getLogger("llmrouter")
_ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def router() -> Router:
    return current_app.extensions["llmrouter"].router


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return Response(body, status=status, mimetype="application/json", headers=headers)


def error_response(exc: BaseException) -> Response:
    """OpenAI's error body for any exception; internals are logged, never sent."""
    if isinstance(exc, RequestEntityTooLarge):
        exc = RequestTooLargeError("The request body is larger than this server accepts.")
    elif isinstance(exc, HTTPException):
        exc = _from_http_exception(exc)
    elif not isinstance(exc, LLMRouterError):
        log.exception("unexpected error while serving %s %s", request.method, request.path)
        exc = LLMRouterError("The server had an error while processing your request.")
    return json_response(exc.to_dict(), exc.status, exc.headers)


def _from_http_exception(exc: HTTPException) -> LLMRouterError:
    message = exc.description or exc.name
    if exc.code == 404:
        return NotFoundError(f"Unknown route: {request.method} {request.path}")
    if exc.code == 405:
        return MethodNotAllowedError(f"{request.method} is not allowed on {request.path}")
    status = exc.code or 500
    # Any other refusal werkzeug makes before a view runs (a malformed header, say) is
    # the client's: OpenAI's invalid_request_error with werkzeug's status.
    error = InvalidRequestError(message) if 400 <= status < 500 else LLMRouterError(message)
    error.status = status
    return error


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def json_body() -> Any:
    limit = router().settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLargeError(f"The request body is larger than {limit} bytes.")
    data = _read_at_most(limit)
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. Send a JSON object."
        ) from None


def _read_at_most(limit: int) -> bytes:
    """The body, read in pieces so one sent without a length cannot exceed ``limit``."""
    pieces, size = [], 0
    try:
        while piece := request.stream.read(min(65536, limit + 1 - size)):
            pieces.append(piece)
            size += len(piece)
            if size > limit:
                raise RequestTooLargeError(f"The request body is larger than {limit} bytes.")
    # A body cut short of its Content-Length (werkzeug: ClientDisconnected, a BadRequest)
    # or a malformed chunked encoding (werkzeug and gunicorn: OSError; a chunk cut short:
    # ValueError) is the client's fault, whichever server runs the app.
    except (BadRequest, OSError, ValueError):
        raise InvalidRequestError(
            "The request body could not be read: it ended before its Content-Length, "
            "or its chunked encoding is malformed."
        ) from None
    return b"".join(pieces)


def build_blueprint(name: str, *, catch_all: bool) -> Blueprint:
    """The API blueprint; register it under a prefix (``/v1``) and/or at the root.
    ``catch_all`` answers unknown routes below it with OpenAI's 404 body."""
    bp = Blueprint(name, __name__)
    bp.register_error_handler(Exception, error_response)

    if catch_all:

        @bp.route("/<path:unknown>", methods=_ANY_METHOD)
        def unknown_route(unknown: str) -> Response:
            raise NotFoundError(f"Unknown route: {request.method} {request.path}")

    @bp.route("/chat/completions", methods=_ANY_METHOD)
    def chat_completions() -> Response:
        _only("POST")
        result = router().complete(json_body(), api_key=bearer_token())
        if isinstance(result.body, MeteredStream):
            response = Response(
                _event_stream(result.body),
                mimetype="text/event-stream",
                headers={
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                    **result.headers(),
                },
            )
            # The generator's own cleanup does not run if it is closed before it starts.
            response.call_on_close(result.body.close)
            return response
        return json_response(
            result.body.model_dump_json(exclude_none=True), headers=result.headers()
        )

    @bp.route("/models", methods=_ANY_METHOD)
    def list_models() -> Response:
        _only("GET")
        return json_response(router().models().model_dump_json())

    @bp.route("/models/<path:model_id>", methods=_ANY_METHOD)
    def get_model(model_id: str) -> Response:
        _only("GET")
        return json_response(router().model(model_id).model_dump_json())

    @bp.route("/provider", methods=_ANY_METHOD)
    def provider_info() -> Response:
        _only("GET")
        return json_response(_provider_metadata(router()))

    @bp.route("/usage", methods=_ANY_METHOD)
    def usage_report() -> Response:
        _only("GET")
        return json_response(_usage_report(router()))

    return bp


def _only(method: str) -> None:
    if request.method != method:
        raise MethodNotAllowedError(
            f"{request.method} is not allowed on {request.path}; use {method}.",
            headers={"Allow": method},
        )


def _event_stream(stream: MeteredStream) -> Iterator[bytes]:
    """SSE lines as chunks arrive. An error after the first byte travels as an error event
    (the status line is already sent); a client disconnect closes the stream, which bills
    what was delivered."""
    try:
        for chunk in stream:
            yield encode_event(chunk.model_dump_json(exclude_none=True))
        yield DONE
    except LLMRouterError as exc:
        yield encode_event(json.dumps(exc.to_dict()))
    except Exception:
        log.exception("stream failed")
        yield encode_event(json.dumps(LLMRouterError("The stream failed.").to_dict()))
    finally:
        stream.close()


def _provider_metadata(r: Router) -> dict[str, Any]:
    return {
        "object": "provider",
        "name": r.settings.service_name,
        "version": __version__,
        "api": "openai-compatible",
        "model_naming": "Provider#Model",
        "endpoints": [
            "POST /v1/chat/completions",
            "GET /v1/models",
            "GET /v1/models/{model_id}",
            "GET /v1/provider",
            "GET /v1/usage",
            "GET /health",
        ],
        "capabilities": {
            "streaming": True,
            "tools": True,
            "json_mode": True,
            "usage_in_stream": True,
        },
        "providers": [
            {"name": p.name, "kind": p.kind, "aliases": p.aliases, "models": len(p.models)}
            for p in r.settings.providers
        ],
        "quota": {
            "daily_requests": r.settings.quota.daily_requests,
            "throttle_seconds": r.settings.quota.throttle_seconds,
            "requests_per_minute": r.settings.quota.requests_per_minute,
        },
    }


def _usage_report(r: Router) -> dict[str, Any]:
    key = r.keys.authenticate(bearer_token())
    wanted = request.args.get("key_id")
    if wanted and wanted != key.id and not key.is_admin:
        raise PermissionDeniedError("Only an admin key can see other keys' usage.", param="key_id")
    since, until = request.args.get("since"), request.args.get("until")
    rows = r.usage(
        key_id=wanted or (None if key.is_admin else key.id),
        since_day=day_of(since, field="since") if since else None,
        until_day=day_of(until, field="until") if until else None,
    )
    return usage.report(rows)

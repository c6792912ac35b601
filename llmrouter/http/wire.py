"""The HTTP wire without a framework: a WSGI request read with a bound, and responses —
JSON, OpenAI's error body, server-sent events — as WSGI answers."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from ..errors import (
    AuthenticationError,
    InvalidRequestError,
    LLMRouterError,
    RequestTooLargeError,
)
from ..streaming import DONE, encode_event

log = logging.getLogger("llmrouter")

#: the environ key under which a host vouches for the caller: a router key id
IDENTITY_KEY = "llmrouter.identity"
_DIGITS = re.compile(r"[0-9]{1,19}")
_READ_CHUNK = 65536


@dataclass
class Request:
    """The parts of a WSGI request the API reads."""

    environ: dict[str, Any]
    method: str
    path: str
    query: dict[str, str]

    @classmethod
    def from_environ(cls, environ: dict[str, Any]) -> Request:
        # WSGI carries the path as latin-1 text of its bytes; the bytes are UTF-8.
        raw = environ.get("PATH_INFO", "") or "/"
        path = raw.encode("latin-1", "replace").decode("utf-8", "replace")
        query = {
            name: values[0]
            for name, values in parse_qs(
                environ.get("QUERY_STRING", ""), keep_blank_values=True
            ).items()
        }
        return cls(environ, environ.get("REQUEST_METHOD", "GET").upper(), path, query)

    @property
    def base(self) -> str:
        """Where the application is mounted (WSGI's ``SCRIPT_NAME``)."""
        return str(self.environ.get("SCRIPT_NAME", "")).rstrip("/")

    def header(self, name: str) -> str | None:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = self.environ.get(key)
        return str(value) if value is not None else None

    def bearer_token(self) -> str | None:
        """The Bearer secret; None without one. An empty one is refused, not taken for
        none (which would fall back to the host's login)."""
        scheme, _, token = (self.header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        if not token.strip():
            raise AuthenticationError("The Authorization header has an empty Bearer secret.")
        return token.strip()

    @property
    def identity(self) -> str | None:
        """The router key id the host's own login maps this request to, if any."""
        value = self.environ.get(IDENTITY_KEY)
        return str(value) if value else None

    def json_body(self, limit: int) -> Any:
        try:
            return json.loads(self._read_at_most(limit))
        except (ValueError, RecursionError):  # RecursionError: nesting past Python's stack
            raise InvalidRequestError(
                "We could not parse the JSON body of your request. Send a JSON object."
            ) from None

    def _read_at_most(self, limit: int) -> bytes:
        """The body, read in pieces so one sent without a length cannot exceed ``limit``."""
        length = self.header("Content-Length")
        if length and not _DIGITS.fullmatch(length.strip()):
            raise InvalidRequestError("The Content-Length header is not a number of bytes.")
        expected = int(length) if length else None
        if self.header("Transfer-Encoding") and self.environ.get("wsgi.input_terminated"):
            expected = None  # a transfer encoding overrides the length (RFC 9112, 6.3)
        if expected is not None and expected > limit:
            raise RequestTooLargeError(f"The request body is larger than {limit} bytes.")
        if expected is None and not self.environ.get("wsgi.input_terminated"):
            return b""  # no length and no end-of-input promise: WSGI says there is no body
        stream = self.environ["wsgi.input"]
        pieces, size = [], 0
        try:
            while expected is None or size < expected:
                want = _READ_CHUNK if expected is None else min(_READ_CHUNK, expected - size)
                piece = stream.read(min(want, limit + 1 - size))
                if not piece:
                    break
                pieces.append(piece)
                size += len(piece)
                if size > limit:
                    raise RequestTooLargeError(f"The request body is larger than {limit} bytes.")
        # A malformed chunked encoding or a body cut short is the client's fault, whichever
        # server runs the app (werkzeug: ClientDisconnected/BadRequest, a ValueError or an
        # OSError; gunicorn: OSError subclasses, ValueError).
        except LLMRouterError:
            raise
        except Exception:
            raise InvalidRequestError(
                "The request body could not be read: it ended before its Content-Length, "
                "or its chunked encoding is malformed."
            ) from None
        if expected is not None and size < expected:
            raise InvalidRequestError(
                "The request body could not be read: it ended before its Content-Length."
            )
        return b"".join(pieces)


@dataclass
class Response:
    """A WSGI answer: status, headers, and a body that may be a stream (``close`` frees it,
    whether the client read it to the end or went away)."""

    status: int
    body: Iterable[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    close: Callable[[], None] | None = None

    def __call__(self, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response(
            f"{self.status} {HTTPStatus(self.status).phrase}", list(self.headers.items())
        )
        return _ClosingBody(self.body, self.close)


class _ClosingBody:
    """The WSGI body iterable; the server calls ``close`` at the end or on a disconnect."""

    def __init__(self, body: Iterable[bytes], close: Callable[[], None] | None) -> None:
        self._body = body
        self._close = close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            closer = getattr(self._body, "close", None)
            if closer is not None:
                closer()
        finally:
            if self._close is not None:
                self._close()


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return Response(
        status, [body.encode()], {"Content-Type": "application/json", **(headers or {})}
    )


def enveloped(data: Any, status: int = 200) -> Response:
    """Seed 003's success body: ``{"success": true, "data": …}``."""
    return json_response({"success": True, "data": data}, status)


def error_response(exc: BaseException, request: Request, *, enveloped: bool = False) -> Response:
    """OpenAI's error body for any exception (seed 003's envelope when ``enveloped``);
    internals are logged, never sent."""
    if not isinstance(exc, LLMRouterError):
        log.exception("unexpected error while serving %s %s", request.method, request.path)
        exc = LLMRouterError("The server had an error while processing your request.")
    if enveloped:
        error = {"code": exc.code or exc.type, "message": exc.message, "field": exc.param}
        return json_response({"success": False, "error": error}, exc.status, exc.headers)
    return json_response(exc.to_dict(), exc.status, exc.headers)


def event_stream(
    chunks: Iterable[Any], close: Callable[[], None], headers: dict[str, str]
) -> Response:
    """Server-sent events as chunks arrive, ``[DONE]`` at the end. An error after the first
    byte travels as an error event (the status line is already sent)."""

    def events() -> Iterator[bytes]:
        try:
            for chunk in chunks:
                yield encode_event(chunk.model_dump_json(exclude_none=True))
            yield DONE
        except LLMRouterError as exc:
            yield encode_event(json.dumps(exc.to_dict()))
        except Exception:
            log.exception("stream failed")
            yield encode_event(json.dumps(LLMRouterError("The stream failed.").to_dict()))
        finally:
            close()

    return Response(
        200,
        events(),
        {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **headers,
        },
        close,
    )

"""The HTTP transport adapters share: a pooled ``requests.Session`` with connect/read
timeouts, one bounded read of every answer whatever its method (POST, GET, DELETE), and the
mapping of transport failures and error statuses to ``Upstream*`` errors,
each with its scope, and with the provider's secrets cut out of the upstream's words.

Statuses: 400, 404, 413, 422 are the request's fault (``UpstreamRejectedError``; a 404 is
the provider not knowing the model or route, shown to the client as our 400 like the rest);
401, 403 the provider's (``UpstreamAuthError``, with our own message: the upstream's body
goes to the log only); 429 ``UpstreamRateLimitError``; 408, 504 ``UpstreamTimeoutError``;
other statuses ``UpstreamError``. ``Retry-After`` (seconds or an HTTP date) is read on 429
and every 5xx. A connection never made (refused, DNS, TLS, connect timeout) is the whole
provider's failure; one that broke after it was made (read timeout, reset) the deployment's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from pydantic import BaseModel, ValidationError
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from ..config import ProviderSettings
from ..errors import (
    FailureScope,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
)
from ..redaction import Redactor
from ..streaming import iter_sse

#: how much of an error answer is read for its message
MAX_ERROR_BYTES = 64 * 1024
#: how much of the upstream's (redacted) message an error keeps
MAX_MESSAGE_CHARS = 500

log = logging.getLogger("llmrouter")

Shape = TypeVar("Shape", bound=BaseModel)


class HTTPTransport:
    """One provider's connection pool. Thread-safe for concurrent requests."""

    def __init__(self, settings: ProviderSettings, base_url: str, pool_size: int = 64) -> None:
        self.provider = settings.name
        self.timeout = (settings.connect_timeout, settings.read_timeout)
        self.max_answer_bytes = settings.max_answer_bytes
        #: cuts this provider's secrets out of anything its upstream says
        self.redactor = Redactor.for_provider(settings)
        self.session = requests.Session()
        # requests reads proxy variables and ~/.netrc from the environment on every call
        # (a tenth of the router's overhead); read them once, when the provider is built.
        self.session.proxies = requests.utils.get_environ_proxies(base_url)
        self.session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or True
        self.session.trust_env = False
        pool = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", pool)
        self.session.mount("https://", pool)

    def post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
        """POST ``body`` as JSON and return the answer's body, or raise the matching
        upstream error. An answer over ``max_answer_bytes`` is refused, not read."""
        return self.request("POST", url, headers, body)

    def get(self, url: str, headers: dict[str, str]) -> bytes:
        """GET ``url``: the answer's body, read and refused as ``post`` does."""
        return self.request("GET", url, headers)

    def delete(self, url: str, headers: dict[str, str]) -> bytes:
        """DELETE ``url``: the answer's body, read and refused as ``post`` does."""
        return self.request("DELETE", url, headers)

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: dict[str, Any] | None = None,
    ) -> bytes:
        """One call of any method (``body``, when given, sent as JSON): the answer's body,
        at most ``max_answer_bytes`` of it, or the matching upstream error."""
        response = self._send(method, url, headers, body)
        try:
            return _read_at_most(response, self.max_answer_bytes, self.provider)
        finally:
            response.close()

    def open_stream(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> requests.Response:
        """POST ``body`` as JSON and return the open response of a stream (close it)."""
        return self._send("POST", url, headers, body)

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: dict[str, Any] | None = None,
    ) -> requests.Response:
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers = {"Content-Type": "application/json", **headers}
        try:
            # Always streamed: bodies are read here, with a bound, never whole by requests.
            response = self.session.request(
                method, url, data=data, headers=headers, timeout=self.timeout, stream=True
            )
        except requests.ConnectTimeout as exc:
            raise UpstreamError(
                f"{self.provider}: could not connect within {self.timeout[0]} s",
                provider=self.provider,
                scope=FailureScope.PROVIDER,
            ) from exc
        except requests.ReadTimeout as exc:
            raise UpstreamTimeoutError(
                f"{self.provider}: no answer within {self.timeout[1]} s", provider=self.provider
            ) from exc
        except requests.RequestException as exc:
            never_connected = _never_connected(exc)
            if never_connected is not None:
                raise UpstreamError(
                    f"{self.provider}: could not connect ({never_connected})",
                    provider=self.provider,
                    scope=FailureScope.PROVIDER,
                ) from exc
            raise UpstreamError(
                f"{self.provider}: connection failed ({type(exc).__name__})",
                provider=self.provider,
            ) from exc
        if response.status_code >= 400:
            try:
                raise self.error_for(response, _read_at_most(response, MAX_ERROR_BYTES))
            finally:
                response.close()
        return response

    def error_for(self, response: requests.Response, body: bytes) -> UpstreamError:
        """The error to raise for an upstream error status (see the module docstring),
        keeping the upstream's message, redacted, except on 401 and 403."""
        status = response.status_code
        said = upstream_message(body) or response.reason or "no message"
        if status in (401, 403):
            return self.credentials_refused(status, said)
        message = f"{self.provider} answered {status}: {self.redacted(said)}"
        error: type[UpstreamError] = UpstreamError
        if status == 429:
            error = UpstreamRateLimitError
        elif status in (400, 404, 413, 422):
            error = UpstreamRejectedError
        elif status in (408, 504):
            error = UpstreamTimeoutError
        read_retry_after = status == 429 or status >= 500
        return error(
            message,
            provider=self.provider,
            upstream_status=status,
            retry_after=retry_after_seconds(response.headers.get("Retry-After"))
            if read_retry_after
            else None,
        )

    def credentials_refused(self, status: int, said: str) -> UpstreamAuthError:
        """Our own message for a refused credential; what the upstream ``said`` (it may
        quote the credential in forms we cannot foresee) goes to the log only, redacted."""
        log.warning(
            "%s refused the router's credentials (HTTP %s): %s",
            self.provider,
            status,
            self.redacted(said),
        )
        return UpstreamAuthError(
            f"{self.provider}: the provider refused the router's credentials (HTTP {status})",
            provider=self.provider,
            upstream_status=status,
        )

    def redacted(self, said: str) -> str:
        """What the upstream ``said``, with this provider's secrets cut out, at most
        ``MAX_MESSAGE_CHARS`` long (cut after redacting, so no part of a secret is left)."""
        return self.redactor.redact(said)[:MAX_MESSAGE_CHARS]

    def events(self, response: requests.Response) -> Iterator[dict[str, Any]]:
        """The JSON objects of an SSE response, up to ``[DONE]`` or its end.

        An error object (``{"error": …}``, in OpenAI's, Anthropic's or Gemini's shape) raises
        ``UpstreamError`` with its message; so does a broken or unreadable stream.
        """
        try:
            for event in iter_sse(response, self.max_answer_bytes):
                if event.data == "[DONE]":
                    return
                if not event.data:
                    continue
                payload = json.loads(event.data)
                if not isinstance(payload, dict):
                    raise ValueError("an event that is not a JSON object")
                if "error" in payload:
                    raise self._stream_error(payload)
                yield payload
        except requests.RequestException as exc:
            raise UpstreamError(
                f"{self.provider} stream broke off ({type(exc).__name__})", provider=self.provider
            ) from exc
        except ValueError as exc:
            raise UpstreamError(
                f"{self.provider} sent an unreadable stream event", provider=self.provider
            ) from exc

    def _stream_error(self, payload: dict[str, Any]) -> UpstreamError:
        error = payload["error"]
        kind = (error.get("type") or error.get("status")) if isinstance(error, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) and not isinstance(code, bool) else None
        said = message_of(payload) or json.dumps(payload)
        if status in (401, 403):
            return self.credentials_refused(status, said)
        # The error's type is the upstream's words too, so it is redacted with the message.
        said = (f"({kind}): " if kind else ": ") + said
        return UpstreamError(
            f"{self.provider} stream failed " + self.redacted(said),
            provider=self.provider,
            upstream_status=status,
        )

    def parsed(self, shape: type[Shape], body: bytes, what: str) -> Shape:
        """``body`` read as the wire shape ``shape`` (a pydantic model; numbers exact, see
        ``json_object``), or ``UpstreamError`` naming the first field that does not fit."""
        answer = json_object(body, self.provider)
        try:
            return shape.model_validate(answer)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"]) or "the answer"
            raise UpstreamError(
                f"{self.provider} sent {what} that does not fit: "
                + self.redacted(f"{field}: {error['msg']}"),
                provider=self.provider,
            ) from exc

    def close(self) -> None:
        self.session.close()


def upstream_message(body: bytes) -> str:
    """The human message of an upstream error body, in any of the providers' shapes
    (whole: it is cut to length only once redacted)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()
    return message_of(parsed) or json.dumps(parsed)


def path_segment(value: str) -> str:
    """``value`` (an upstream's task id, say) as one quoted URL path segment, so that no
    id can reach another route (``../``, ``?``, ``#``)."""
    return quote(value, safe="")


def json_object(body: bytes, provider: str) -> dict[str, Any]:
    """An answer's JSON object, every number with a fraction or an exponent read as an
    exact ``Decimal`` (never a float: money and token counts stay exact), or
    ``UpstreamError`` for anything else: not JSON, not an object, ``NaN`` or ``Infinity``."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        parsed = json.loads(body, parse_float=Decimal, parse_constant=no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise UpstreamError(
            f"{provider} sent an answer that is not JSON", provider=provider
        ) from exc
    if not isinstance(parsed, dict):
        raise UpstreamError(
            f"{provider} sent an answer that is not a JSON object", provider=provider
        )
    return parsed


def _read_at_most(response: requests.Response, limit: int, provider: str | None = None) -> bytes:
    """The body, or (``provider`` given) ``UpstreamError`` once it passes ``limit`` bytes;
    without ``provider`` the first ``limit`` bytes (enough of an error message)."""
    pieces, size = [], 0
    try:
        for piece in response.iter_content(chunk_size=65536):
            pieces.append(piece)
            size += len(piece)
            if size > limit:
                if provider is None:
                    break
                raise UpstreamError(
                    f"{provider} sent an answer larger than {limit} bytes", provider=provider
                )
    except requests.RequestException as exc:
        raise UpstreamError(
            f"{provider or 'the provider'}: answer broke off ({type(exc).__name__})",
            provider=provider,
        ) from exc
    return b"".join(pieces)[:limit]


def message_of(body: Any) -> str | None:
    """``error.message`` (OpenAI, Anthropic, Gemini), ``message`` or ``detail`` (Mistral,
    whose validation errors are lists of ``{"loc", "msg"}``, shown as ``loc: msg``)."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    for key in ("message", "detail"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            return message_of(value)
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return "; ".join(
                ".".join(str(p) for p in v.get("loc", [])) + f": {v.get('msg', '')}" for v in value
            )
    return None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The seconds a ``Retry-After`` header asks for, in either of its forms (``"120"``,
    or an HTTP date such as ``"Wed, 21 Oct 2026 07:28:00 GMT"``); None when absent or
    unreadable. A date in the past is 0."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None  # "-0000": no zone we could trust
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _never_connected(exc: requests.RequestException) -> str | None:
    """Why no connection was made (refused, DNS, TLS, a proxy's refusal), or None when the
    failure came after one was: requests wraps urllib3's errors, which say which."""
    if isinstance(exc, (requests.exceptions.SSLError, requests.exceptions.ProxyError)):
        return type(exc).__name__
    seen: list[BaseException] = []
    pending: list[Any] = [exc]
    while pending and len(seen) < 16:
        cause = pending.pop()
        if not isinstance(cause, BaseException) or any(cause is s for s in seen):
            continue
        if isinstance(cause, NewConnectionError):  # NameResolutionError is one of these
            return type(cause).__name__
        seen.append(cause)
        pending += [*cause.args, getattr(cause, "reason", None), cause.__cause__]
    return None

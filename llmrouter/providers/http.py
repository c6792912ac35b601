"""The HTTP transport adapters share: a pooled ``requests.Session`` with connect/read
timeouts, and the mapping of transport failures and error statuses to ``Upstream*`` errors.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from ..config import ProviderSettings
from ..errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
)
from ..streaming import iter_sse

#: how much of an error answer is read for its message
MAX_ERROR_BYTES = 64 * 1024

# Key-shaped tokens an upstream may echo back in an error message ("Incorrect API key
# provided: sk-abc…"); they are cut out before the message reaches a client.
_KEY_PATTERN = re.compile(r"\b(sk|pk|rk|key|AIza)[-_A-Za-z0-9*.]{8,}")


class HTTPTransport:
    """One provider's connection pool. Thread-safe for concurrent requests."""

    def __init__(self, settings: ProviderSettings, base_url: str, pool_size: int = 64) -> None:
        self.provider = settings.name
        self.timeout = (settings.connect_timeout, settings.read_timeout)
        self.max_answer_bytes = settings.max_answer_bytes
        self._secret = settings.secret()
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
        response = self._send(url, body, headers)
        try:
            return _read_at_most(response, self.max_answer_bytes, self.provider)
        finally:
            response.close()

    def open_stream(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> requests.Response:
        """POST ``body`` as JSON and return the open response of a stream (close it)."""
        return self._send(url, body, headers)

    def _send(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> requests.Response:
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", **headers}
        try:
            # Always streamed: bodies are read here, with a bound, never whole by requests.
            response = self.session.post(
                url, data=data, headers=headers, timeout=self.timeout, stream=True
            )
        except requests.ConnectTimeout as exc:
            raise UpstreamError(
                f"{self.provider}: could not connect within {self.timeout[0]} s",
                provider=self.provider,
            ) from exc
        except requests.ReadTimeout as exc:
            raise UpstreamTimeoutError(
                f"{self.provider}: no answer within {self.timeout[1]} s", provider=self.provider
            ) from exc
        except requests.RequestException as exc:
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

    def error_for(
        self, response: requests.Response, body: bytes
    ) -> UpstreamError | UpstreamRejectedError:
        """The error to raise for an upstream error status, keeping its message."""
        status = response.status_code
        text = upstream_message(body) or response.reason or "no message"
        message = f"{self.provider} answered {status}: {self.redact(text)}"
        if status in (401, 403):
            return UpstreamAuthError(message, provider=self.provider, upstream_status=status)
        if status == 429:
            return UpstreamRateLimitError(
                message,
                provider=self.provider,
                upstream_status=status,
                retry_after=_retry_after(response),
            )
        if status in (400, 413, 422):
            return UpstreamRejectedError(message)
        if status in (408, 504):
            return UpstreamTimeoutError(message, provider=self.provider, upstream_status=status)
        return UpstreamError(message, provider=self.provider, upstream_status=status)

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
        kind = error.get("type") or error.get("status") if isinstance(error, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        message = self.redact(message_of(payload) or json.dumps(payload)[:500])
        return UpstreamError(
            f"{self.provider} stream failed" + (f" ({kind})" if kind else "") + f": {message}",
            provider=self.provider,
            upstream_status=code if isinstance(code, int) else None,
        )

    def redact(self, text: str) -> str:
        """``text`` with this provider's key and anything key-shaped removed."""
        if self._secret:
            text = text.replace(self._secret, "[redacted]")
        return _KEY_PATTERN.sub("[redacted]", text)

    def close(self) -> None:
        self.session.close()


def upstream_message(body: bytes) -> str:
    """The human message of an upstream error body, in any of the providers' shapes."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:500].decode(errors="replace").strip()
    return message_of(parsed) or json.dumps(parsed)[:500]


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


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None

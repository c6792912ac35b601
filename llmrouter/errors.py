"""The error tree of llmrouter and its OpenAI-shaped HTTP body.

Every failure a caller can see is one of these classes; over HTTP each renders as
``{"error": {"message", "type", "param", "code"}}`` with its ``status``::

    LLMRouterError                       500 api_error
    ├── ConfigError                      (startup only: names the file and the key)
    ├── InvalidRequestError              400 invalid_request_error  (param names the field)
    │   ├── RequestTooLargeError         413 request_too_large
    │   └── UpstreamRejectedError        400 the upstream refused the request's content
    ├── AuthenticationError              401 invalid_api_key
    ├── PermissionDeniedError            403 permission_denied
    ├── NotFoundError                    404 not_found
    │   └── ModelNotFoundError           404 model_not_found        (names close matches)
    ├── MethodNotAllowedError            405 method_not_allowed
    ├── InsufficientCreditsError         402 insufficient_credits
    ├── RateLimitError                   429 rate_limit_exceeded    (Retry-After)
    ├── StoreUnavailableError            503 store_unavailable
    └── UpstreamError                    502 upstream_error         (provider-side failure)
        ├── UpstreamAuthError            502 upstream_auth_error    (our provider key was refused)
        ├── UpstreamRateLimitError       429 upstream_rate_limited  (no fallback left)
        └── UpstreamTimeoutError         504 upstream_timeout

Adapters raise only the ``Upstream*`` branch; the Router raises the rest.
"""

from __future__ import annotations

import math
from typing import Any


class LLMRouterError(Exception):
    """Base of every llmrouter error; renders as OpenAI's error body."""

    status: int = 500
    type: str = "api_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class ConfigError(LLMRouterError):
    """The configuration cannot be used; the message names the source and the key."""

    code = "invalid_config"

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        self.reason = message
        self.source = source
        self.key = key
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message, param=key)

    def at(self, source: str, key_prefix: str = "") -> ConfigError:
        """The same error, located in ``source`` (and below ``key_prefix``)."""
        key = ".".join(part for part in (key_prefix, self.key) if part) or None
        return ConfigError(self.reason, source=self.source or source, key=key)


class InvalidRequestError(LLMRouterError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class RequestTooLargeError(InvalidRequestError):
    status = 413
    code = "request_too_large"


class UpstreamRejectedError(InvalidRequestError):
    """The provider answered 400/422: the request's content is at fault, not the gateway."""

    code = "upstream_rejected_request"


class AuthenticationError(LLMRouterError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(LLMRouterError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFoundError(LLMRouterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str, suggestions: list[str] | None = None) -> None:
        message = f"The model '{model}' does not exist."
        if suggestions:
            message += " Did you mean: " + ", ".join(f"'{s}'" for s in suggestions) + "?"
        super().__init__(message, param="model")
        self.model = model
        self.suggestions = list(suggestions or [])


class MethodNotAllowedError(LLMRouterError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class InsufficientCreditsError(LLMRouterError):
    status = 402
    type = "insufficient_credits"
    code = "insufficient_credits"


class RateLimitError(LLMRouterError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, retry_after: int, headers: dict[str, str] | None = None
    ) -> None:
        merged = dict(headers or {})
        merged["Retry-After"] = str(max(1, retry_after))
        super().__init__(message, headers=merged)
        self.retry_after = max(1, retry_after)


class StoreUnavailableError(LLMRouterError):
    status = 503
    type = "api_error"
    code = "store_unavailable"


class UpstreamError(LLMRouterError):
    """The provider failed (5xx, broken connection, unreadable answer)."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    #: whether asking the same provider again may succeed (fallbacks are tried either way)
    retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param)
        self.provider = provider
        self.upstream_status = upstream_status
        self.retry_after = retry_after


class UpstreamAuthError(UpstreamError):
    code = "upstream_auth_error"
    retryable = False


class UpstreamRateLimitError(UpstreamError):
    status = 429
    type = "rate_limit_error"
    code = "upstream_rate_limited"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        if self.retry_after is not None:
            # Passed on, so that a client waits as long as the provider asked.
            self.headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))


class UpstreamTimeoutError(UpstreamError):
    status = 504
    code = "upstream_timeout"

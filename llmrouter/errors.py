"""The error tree of llmrouter and its OpenAI-shaped HTTP body.

Every failure a caller can see is one of these classes; over HTTP each renders as
``{"error": {"message", "type", "param", "code"}}`` with its ``status``::

    LLMRouterError                       500 api_error
    ├── ConfigError                      (startup only: names the file and the key)
    │   └── DatabaseSchemaError          (the tables are not at this version's revision;
    │                                        names the command that brings them there)
    ├── InvalidRequestError              400 invalid_request_error  (param names the field)
    │   └── RequestTooLargeError         413 request_too_large
    ├── AuthenticationError              401 invalid_api_key
    ├── PermissionDeniedError            403 permission_denied
    │   └── ModelNotAllowedError         403 model_not_allowed      (the key's restrictions)
    ├── NotFoundError                    404 not_found
    │   └── ModelNotFoundError           404 model_not_found        (names close matches)
    ├── MethodNotAllowedError            405 method_not_allowed
    ├── ConflictError                    409 conflict               (a duplicate name; a
    │                                        config provider changed over HTTP)
    ├── InsufficientCreditsError         402 insufficient_credits
    ├── RateLimitError                   429 rate_limit_exceeded    (Retry-After)
    ├── StoreUnavailableError            503 store_unavailable
    └── UpstreamError                    502 upstream_error         (provider-side failure)
        ├── UpstreamRejectedError        400 upstream_rejected_request (the provider refused
        │                                    the request's content: its 400/404/413/422)
        ├── UpstreamUnsupportedError     400 unsupported_by_provider (its format cannot carry
        │                                    the request; nothing was sent)
        ├── UpstreamAuthError            502 upstream_auth_error    (our provider key was refused)
        ├── UpstreamRateLimitError       429 upstream_rate_limited  (no fallback left)
        ├── UpstreamTimeoutError         504 upstream_timeout
        └── ProviderCoolingDownError     503 provider_cooling_down  (every target's breaker is
                                             open; Retry-After)

Adapters raise only the ``Upstream*`` branch; the Router raises the rest. ``ConfigError``
is raised only while a Router is built, never while it serves a request.

Each ``UpstreamError`` says what it is evidence of (``scope``), which the dispatcher's
circuit breakers read: ``request`` (the request is at fault; counts against nothing),
``deployment`` (this provider + model pair failed) or ``provider`` (the whole provider:
refused connections, DNS, TLS, our credentials refused).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, ClassVar, Self


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

    def at(self, source: str, key_prefix: str = "") -> Self:
        """The same error, located in ``source`` (and below ``key_prefix``)."""
        key = ".".join(part for part in (key_prefix, self.key) if part) or None
        return type(self)(self.reason, source=self.source or source, key=key)


class DatabaseSchemaError(ConfigError):
    """The database's llmrouter tables are missing, older or newer than this version's;
    the message names what to run (``llmrouter db upgrade``)."""

    code = "database_schema"


class InvalidRequestError(LLMRouterError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class RequestTooLargeError(InvalidRequestError):
    status = 413
    code = "request_too_large"


class AuthenticationError(LLMRouterError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(LLMRouterError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class ModelNotAllowedError(PermissionDeniedError):
    """The key's ``allowed_models`` / ``allowed_providers`` do not include the model."""

    code = "model_not_allowed"


class NotFoundError(LLMRouterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str, suggestions: list[str] | None = None, *, hint: str = "") -> None:
        message = f"The model '{model}' does not exist."
        if suggestions:
            message += " Did you mean: " + ", ".join(f"'{s}'" for s in suggestions) + "?"
        if hint:
            message += " " + hint
        super().__init__(message, param="model")
        self.model = model
        self.suggestions = list(suggestions or [])


class MethodNotAllowedError(LLMRouterError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ConflictError(LLMRouterError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


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


class FailureScope(StrEnum):
    """What an upstream failure is evidence of (read by the circuit breakers)."""

    REQUEST = "request"  # the request is at fault: counts against no breaker
    DEPLOYMENT = "deployment"  # this provider + upstream model pair failed
    PROVIDER = "provider"  # the whole provider: unreachable, or our credentials refused


class UpstreamError(LLMRouterError):
    """The provider failed (5xx, broken connection, unreadable answer)."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    #: whether asking the same provider again may succeed (fallbacks are tried either way)
    retryable: bool = True
    #: what the failure says about the provider (see ``FailureScope``)
    scope: FailureScope = FailureScope.DEPLOYMENT
    #: False when no provider served anything, so the request is no call at all
    is_call: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
        param: str | None = None,
        scope: FailureScope | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param)
        self.provider = provider
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        if scope is not None:
            self.scope = scope


class UpstreamRejectedError(UpstreamError):
    """The provider refused the request's content (400/404/413/422): the request is at
    fault, not the provider, so it is not retried but may suit a fallback."""

    status = 400
    type = "invalid_request_error"
    code = "upstream_rejected_request"
    retryable = False
    scope = FailureScope.REQUEST


class UpstreamUnsupportedError(UpstreamError):
    """The provider's format cannot carry the request (``n`` > 1 on Anthropic, a schema
    Gemini cannot express). Nothing was sent; a fallback may carry it, and when none can
    the request is no call at all."""

    status = 400
    type = "invalid_request_error"
    code = "unsupported_by_provider"
    retryable = False
    scope = FailureScope.REQUEST
    is_call = False


class UpstreamAuthError(UpstreamError):
    code = "upstream_auth_error"
    retryable = False
    scope = FailureScope.PROVIDER


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


class ProviderCoolingDownError(UpstreamError):
    """Every target of the request has an open circuit breaker; nothing was sent."""

    status = 503
    type = "api_error"
    code = "provider_cooling_down"
    retryable = False
    is_call = False

    def __init__(self, message: str, *, retry_after: float, **kwargs: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)
        self.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))

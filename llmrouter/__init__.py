"""llmrouter: an embeddable LLM router with Provider#Model names, per-key quotas and
exact billing. ``Router`` is the entry point; this module re-exports its public names:
every error (the tree is drawn in ``llmrouter.errors``) and every type a Router method
takes or returns. Importing it loads no web framework."""

__version__ = "0.1.0"

from .config import ModelSettings, ProviderSettings, QuotaSettings, Settings
from .errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    DatabaseSchemaError,
    FailureScope,
    InsufficientCreditsError,
    InvalidRequestError,
    LLMRouterError,
    MethodNotAllowedError,
    ModelNotAllowedError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    ProviderCoolingDownError,
    RateLimitError,
    RequestTooLargeError,
    StoreUnavailableError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnsupportedError,
)
from .metering import MeteredStream
from .quota import RateLimitInfo
from .router import ChatResult, Router
from .schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    ModelCard,
    ModelList,
    Usage,
)
from .store import KeyRecord, ProviderTotal, SweptCall, UsageRow
from .tools import RegisteredTool, ToolRegistry

__all__ = [
    "AuthenticationError",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatRequest",
    "ChatResult",
    "ConfigError",
    "ConflictError",
    "DatabaseSchemaError",
    "FailureScope",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "KeyRecord",
    "LLMRouterError",
    "MeteredStream",
    "MethodNotAllowedError",
    "ModelCard",
    "ModelList",
    "ModelNotAllowedError",
    "ModelNotFoundError",
    "ModelSettings",
    "NotFoundError",
    "PermissionDeniedError",
    "ProviderCoolingDownError",
    "ProviderSettings",
    "ProviderTotal",
    "QuotaSettings",
    "RateLimitError",
    "RateLimitInfo",
    "RegisteredTool",
    "RequestTooLargeError",
    "Router",
    "Settings",
    "StoreUnavailableError",
    "SweptCall",
    "ToolRegistry",
    "UpstreamAuthError",
    "UpstreamError",
    "UpstreamRateLimitError",
    "UpstreamRejectedError",
    "UpstreamTimeoutError",
    "UpstreamUnsupportedError",
    "Usage",
    "UsageRow",
    "__version__",
]

"""llmrouter: an embeddable LLM router with Provider#Model names, per-key quotas and
exact billing. ``Router`` is the whole public surface; errors live in ``llmrouter.errors``."""

__version__ = "0.1.0"

from .errors import (
    AuthenticationError,
    ConfigError,
    InsufficientCreditsError,
    InvalidRequestError,
    LLMRouterError,
    ModelNotFoundError,
    RateLimitError,
    UpstreamError,
)
from .router import ChatResult, Router
from .schemas import ChatCompletion, ChatCompletionChunk

__all__ = [
    "AuthenticationError",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatResult",
    "ConfigError",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "LLMRouterError",
    "ModelNotFoundError",
    "RateLimitError",
    "Router",
    "UpstreamError",
    "__version__",
]

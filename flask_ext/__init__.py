"""Flask integration of llmrouter: ``LLMRouter(app, router=router)`` mounts the API."""

from .app import create_app
from .extension import CONFIG_KEYS, LLMRouter, current_router

__all__ = ["CONFIG_KEYS", "LLMRouter", "create_app", "current_router"]

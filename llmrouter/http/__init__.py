"""The OpenAI-compatible HTTP API, framework-free: ``RouterAPI`` is a WSGI application."""

from .access import CSRF_HEADER
from .api import RouterAPI
from .route import Route
from .routes import ROUTES
from .wire import IDENTITY_KEY, Request, Response

__all__ = ["CSRF_HEADER", "IDENTITY_KEY", "ROUTES", "Request", "Response", "Route", "RouterAPI"]

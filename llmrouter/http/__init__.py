"""The OpenAI-compatible HTTP API, framework-free: ``RouterAPI`` is a WSGI application."""

from .api import RouterAPI
from .routes import CSRF_HEADER, ROUTES, Route
from .wire import IDENTITY_KEY, Request, Response

__all__ = ["CSRF_HEADER", "IDENTITY_KEY", "ROUTES", "Request", "Response", "Route", "RouterAPI"]

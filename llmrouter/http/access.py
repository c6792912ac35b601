"""Who is asking, and what a route may read of the request: the caller's key (by Bearer
secret or the host's login), the admin check, and a JSON object body."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequestError, PermissionDeniedError
from ..router import Router
from ..store import KeyRecord
from .wire import Request

#: methods that change state: a cookie-authenticated one must prove it is same-site
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "X-LLMRouter-CSRF"


def caller(router: Router, request: Request, *, fresh: bool = False) -> KeyRecord:
    """Who is asking: the key of a Bearer secret, else the key the host's login maps the
    request to (a state-changing one only from the same site), else 401. ``fresh``: the
    secret is checked in the database, not the ``key_cache_seconds`` cache."""
    secret = request.bearer_token()
    if secret is None and request.identity is not None:
        if request.method in UNSAFE_METHODS and not _same_site(request):
            raise PermissionDeniedError(
                f"A request signed in by cookie must send the {CSRF_HEADER} header or come "
                "from this site (Origin): cross-site requests are refused."
            )
        return router.key_for_identity(request.identity)
    return router.authenticate(secret, fresh=fresh)


def _same_site(request: Request) -> bool:
    if request.header(CSRF_HEADER):
        return True  # a custom header: a cross-site form or simple request cannot send one
    origin = request.header("Origin")
    if not origin:
        return False
    scheme = request.environ.get("wsgi.url_scheme", "http")
    return origin == f"{scheme}://{request.header('Host')}"


def admin(router: Router, request: Request, what: str) -> KeyRecord:
    """The caller, checked in the database, if it is an admin key; 403 otherwise."""
    key = caller(router, request, fresh=True)
    if not key.is_admin:
        raise PermissionDeniedError(f"Only an admin key can manage {what}.")
    return key


def json_object(router: Router, request: Request) -> dict[str, Any]:
    body = request.json_body(router.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body

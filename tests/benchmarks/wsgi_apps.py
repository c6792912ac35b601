"""The two WSGI apps gunicorn serves for the benchmarks, under the same settings.

``passthrough`` is the floor of any router in Python behind a WSGI server: it reads the
body, ``requests.post``s it to the upstream (one keep-alive session per thread, as a Router
keeps its connections) and returns the upstream's bytes. ``llmrouter_api()`` is our API,
framework-free: ``llmrouter.wsgi.RouterMiddleware`` at the root, around an app that
answers 404. Both read what they need from the environment the command sets.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

UPSTREAM_URL_VARIABLE = "LLMROUTER_BENCH_UPSTREAM"
CONFIG_VARIABLE = "LLMROUTER_BENCH_CONFIG"

_local = threading.local()


def passthrough(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    import requests

    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    upstream = session.post(
        os.environ[UPSTREAM_URL_VARIABLE] + environ["PATH_INFO"],
        data=body,
        headers={
            "Content-Type": "application/json",
            "Authorization": environ.get("HTTP_AUTHORIZATION", ""),
        },
    )
    content = upstream.content
    start_response(
        f"{upstream.status_code} {upstream.reason}",
        [
            ("Content-Type", upstream.headers.get("Content-Type", "application/json")),
            ("Content-Length", str(len(content))),
        ],
    )
    return [content]


def _not_found(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("404 Not Found", [("Content-Type", "application/json")])
    return [b'{"error": {"message": "not found"}}']


def llmrouter_api() -> Callable[..., Iterable[bytes]]:
    """gunicorn's app factory: ``'tests.benchmarks.wsgi_apps:llmrouter_api()'``."""
    from llmrouter import Router
    from llmrouter.wsgi import RouterMiddleware

    router = Router.from_config(json.loads(os.environ[CONFIG_VARIABLE]))
    return RouterMiddleware(_not_found, router, prefix="")

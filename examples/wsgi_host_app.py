"""A plain WSGI app (no framework) with the router's API under /llm, by RouterMiddleware.

Run: python examples/wsgi_host_app.py, then
    curl http://127.0.0.1:8080/                  # the host's own page
    curl http://127.0.0.1:8080/llm/v1/models     # the router's API
and point an OpenAI client at base_url="http://127.0.0.1:8080/llm/v1" with a key printed
at start-up. Any WSGI server works the same: gunicorn 'examples.wsgi_host_app:app'.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from llmrouter import Router
from llmrouter.wsgi import RouterMiddleware


def host_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The host's own application: every path the router does not serve lands here."""
    body = json.dumps({"service": "my-wsgi-app", "path": environ["PATH_INFO"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


# The offline echo provider and an in-memory store keep the example self-contained; a real
# host gives a TOML path (LLMROUTER_CONFIG) with its providers and its database.
router = Router.from_config(
    os.environ.get("LLMROUTER_CONFIG")
    or {
        "database_url": "sqlite://",
        "providers": [{"name": "echo", "kind": "echo", "models": [{"id": "echo"}]}],
    }
)
app = RouterMiddleware(host_app, router, prefix="/llm")


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """wsgiref serves one request at a time; a thread per request lets streams overlap."""

    daemon_threads = True


def main(port: int = 8080) -> None:
    _, secret = router.create_key("wsgi-example")
    print(f"key: {secret}", flush=True)
    with make_server("127.0.0.1", port, app, ThreadingWSGIServer, WSGIRequestHandler) as server:
        print(f"serving on http://127.0.0.1:{port}/ (API under /llm/v1)", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main(int(os.environ.get("PORT", "8080")))

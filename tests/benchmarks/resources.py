"""What the sections of one run share, each started on first use and stopped at the end:
the loopback upstream, the pass-through, our API and the LiteLLM proxy. One that cannot
start raises the same ``Unavailable`` to every section that asks for it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any, TypeVar

from . import servers
from .routers import config
from .upstream import serve_upstream

T = TypeVar("T")


class Resources:
    def __init__(self, stack: ExitStack, log_dir: Path) -> None:
        self._stack = stack
        self.log_dir = log_dir
        self._started: dict[str, Any] = {}

    def _once(self, name: str, start: Callable[[], T]) -> T:
        if name not in self._started:
            try:
                self._started[name] = start()
            except Exception as exc:
                self._started[name] = exc
        found = self._started[name]
        if isinstance(found, Exception):
            raise found
        return found

    def _enter(self, manager: AbstractContextManager[T]) -> T:
        return self._stack.enter_context(manager)

    def upstream(self) -> str:
        """The loopback OpenAI-format upstream's base URL."""
        return self._once("upstream", lambda: self._enter(serve_upstream()))

    def passthrough(self) -> str:
        return self._once(
            "passthrough",
            lambda: self._enter(
                servers.passthrough_server(self.upstream(), self.log_dir / "passthrough.log")
            ),
        )

    def llmrouter(self) -> tuple[str, str]:
        """Our API under gunicorn on a SQLite file, and a key it knows."""
        return self._once("llmrouter", self._start_llmrouter)

    def _start_llmrouter(self) -> tuple[str, str]:
        directory = self._enter(tempfile.TemporaryDirectory(prefix="llmrouter-bench-api-"))
        settings = config(self.upstream(), "sqlite:///" + os.path.join(directory, "api.db"))
        # the key is made before the server starts, on the database the server will open
        from llmrouter import Router

        router = Router.from_config(settings)
        try:
            _, secret = router.create_key("bench-api")
        finally:
            router.close()
        url = self._enter(servers.llmrouter_server(settings, self.log_dir / "llmrouter.log"))
        return url, secret

    def litellm_proxy(self) -> str:
        return self._once(
            "litellm_proxy",
            lambda: self._enter(
                servers.litellm_proxy(
                    self.upstream(), self.log_dir, self.log_dir / "litellm-proxy.log"
                )
            ),
        )

"""Running one round of built-in tool calls: concurrently, each within its timeout, every
outcome a tool-result string the model can read.

A call that raises becomes ``The tool <name> failed: <ExceptionType>: <message>`` (the
message only: never a traceback), with every secret the router knows and anything
key-shaped cut out; a call still running at its timeout becomes ``The tool <name> did not
answer within <n> seconds.`` Python cannot stop a thread, so a timed-out function runs on
in its worker until it returns; its result is dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from .tools import RegisteredTool

#: the longest error message a tool result carries
MAX_ERROR_CHARACTERS = 2000
#: worker threads shared by every exchange of one Router
MAX_WORKERS = 32


@dataclass(frozen=True)
class ToolOutcome:
    """One call's result as the model reads it, and whether the function returned."""

    content: str
    ok: bool


class ToolRunner:
    """Runs built-in tool calls for one Router. Thread-safe; its workers start on first use."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        #: cuts every secret the router holds out of an error message
        self._redact = redact
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(
        self,
        calls: list[tuple[RegisteredTool, str]],
        *,
        default_timeout: float,
        deadline: float | None = None,
    ) -> list[ToolOutcome]:
        """Run each ``(tool, arguments JSON)`` at once on the workers and return their
        outcomes in order. No call is waited for past its timeout (its registration's, else
        ``default_timeout``) or ``deadline`` (a ``time.monotonic()`` value: the exchange's)."""
        pool = self._workers()
        futures: list[Future[ToolOutcome]] = [
            pool.submit(self._call, tool, arguments) for tool, arguments in calls
        ]
        started = time.monotonic()
        outcomes = []
        for (tool, _), future in zip(calls, futures, strict=True):
            limit = self._limit(tool, default_timeout, deadline)
            try:
                outcomes.append(future.result(max(0.0, started + limit - time.monotonic())))
            except FutureTimeout:
                future.cancel()
                outcomes.append(
                    ToolOutcome(
                        f"The tool {tool.name} did not answer within {limit:g} seconds.", False
                    )
                )
        return outcomes

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _workers(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="llmrouter-tool")
            return self._pool

    @staticmethod
    def _limit(tool: RegisteredTool, default_timeout: float, deadline: float | None) -> float:
        limit = tool.timeout if tool.timeout is not None else default_timeout
        if deadline is not None:
            limit = min(limit, max(0.0, deadline - time.monotonic()))
        return limit

    def _call(self, tool: RegisteredTool, arguments: str) -> ToolOutcome:
        try:
            return ToolOutcome(tool.call(arguments), True)
        except Exception as exc:  # a tool's failure is the model's to read, not the request's
            said = self._redact(str(exc))[:MAX_ERROR_CHARACTERS]
            kind = type(exc).__name__
            failed = f"The tool {tool.name} failed: {kind}"
            return ToolOutcome(f"{failed}: {said}" if said else failed, False)

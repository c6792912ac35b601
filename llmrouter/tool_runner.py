"""Running one turn of built-in tool calls: concurrently, each within its timeout, every
outcome a tool-result string the model can read.

Each call runs on a thread of its own, started for it: a slow or stuck tool holds only its
own thread, never a worker another request's tools wait for, and a tool may itself call
the router (its inner tools get threads of their own too). A call's time counts from when
it starts. At most ``MAX_RUNNING_CALLS`` calls run at once in a Router, timed-out ones
included, and a turn runs at most ``MAX_CALLS_PER_TURN``: past either, a call is not run
and its result says why.

A call that raises (anything, ``SystemExit`` included) becomes ``The tool <name> failed:
<ExceptionType>: <message>`` (the message only: never a traceback), with every secret the
router knows and anything key-shaped cut out; a call still running at its timeout becomes
``The tool <name> did not answer within <n> seconds.`` Python cannot stop a thread, so a
timed-out function runs on until it returns; its result is dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .tools import RegisteredTool, readable

#: the longest error message a tool result carries
MAX_ERROR_CHARACTERS = 2000
#: calls running at once in one Router (a timed-out call counts until it returns)
MAX_RUNNING_CALLS = 256
#: calls one model turn may make; the rest get a result saying so
MAX_CALLS_PER_TURN = 64


@dataclass(frozen=True)
class ToolOutcome:
    """One call's result as the model reads it, and whether the function returned."""

    content: str
    ok: bool


class _Call:
    """One call on its own thread; ``outcome`` is set when the function is done."""

    def __init__(self, run: Callable[[], ToolOutcome], release: Callable[[], None]) -> None:
        self._run = run
        self._release = release
        self.done = threading.Event()
        self.outcome: ToolOutcome | None = None
        self.thread = threading.Thread(target=self._main, name="llmrouter-tool", daemon=True)

    def _main(self) -> None:
        try:
            self.outcome = self._run()
        finally:
            self._release()
            self.done.set()


class ToolRunner:
    """Runs built-in tool calls for one Router. Thread-safe."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        #: cuts every secret the router holds out of an error message
        self._redact = redact
        self._slots = threading.BoundedSemaphore(MAX_RUNNING_CALLS)

    def run(
        self,
        calls: list[tuple[RegisteredTool, str]],
        *,
        default_timeout: float,
        deadline: float | None = None,
    ) -> list[ToolOutcome]:
        """Run each ``(tool, arguments JSON)`` at once and return their outcomes in order.
        No call is waited for past its timeout (its registration's, else
        ``default_timeout``) or ``deadline`` (a ``time.monotonic()`` value: the request's)."""
        started: list[tuple[RegisteredTool, _Call | ToolOutcome, float]] = []
        for number, (tool, arguments) in enumerate(calls):
            if number >= MAX_CALLS_PER_TURN:
                refused = f"The tool {tool.name} was not run: at most {MAX_CALLS_PER_TURN} "
                started.append((tool, ToolOutcome(refused + "calls are run per turn.", False), 0))
            elif not self._slots.acquire(blocking=False):
                busy = f"The tool {tool.name} was not run: too many tool calls are running."
                started.append((tool, ToolOutcome(busy, False), 0))
            else:
                call = _Call(
                    lambda t=tool, a=arguments: self._call(t, a),  # type: ignore[misc]
                    self._slots.release,
                )
                call.thread.start()
                started.append((tool, call, time.monotonic()))
        return [self._wait(tool, call, at, default_timeout, deadline) for tool, call, at in started]

    def _wait(
        self,
        tool: RegisteredTool,
        call: _Call | ToolOutcome,
        started_at: float,
        default_timeout: float,
        deadline: float | None,
    ) -> ToolOutcome:
        if isinstance(call, ToolOutcome):
            return call
        limit = tool.timeout if tool.timeout is not None else default_timeout
        ends_at = started_at + limit
        if deadline is not None and deadline < ends_at:
            ends_at = deadline
        if call.done.wait(max(0.0, ends_at - time.monotonic())) and call.outcome is not None:
            return call.outcome
        if ends_at < started_at + limit:
            said = f"The tool {tool.name} did not answer before the request's deadline."
        else:
            said = f"The tool {tool.name} did not answer within {limit:g} seconds."
        return ToolOutcome(said, False)

    def _call(self, tool: RegisteredTool, arguments: str) -> ToolOutcome:
        try:
            return ToolOutcome(tool.call(arguments), True)
        except BaseException as exc:  # a tool's failure is the model's to read, not the request's
            return ToolOutcome(self._failure(tool, exc), False)

    def _failure(self, tool: RegisteredTool, exc: BaseException) -> str:
        failed = f"The tool {tool.name} failed: {type(exc).__name__}"
        try:
            said = readable(self._redact(str(exc)))[:MAX_ERROR_CHARACTERS]
        except Exception:  # an exception whose message cannot be read is named alone
            return failed
        return f"{failed}: {said}" if said else failed

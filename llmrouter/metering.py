"""Metering a stream on its way to the client, and settling it exactly once at its end.

The stream counts what it hands over, hides the usage chunk from a client that did not
ask for one, names the serving model, and reports how it ended: ``ok`` (the upstream
finished: a ``finish_reason`` came), ``partial`` (closed early, cut at the call's
deadline, or broke or ended unfinished after some output) or ``failed`` (nothing came).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import LLMRouterError, UpstreamTimeoutError
from .providers.base import ChunkStream
from .schemas import ChatCompletionChunk, Usage


@dataclass(frozen=True)
class StreamEnd:
    status: str  # ok | partial | failed
    usage: Usage
    usage_estimated: bool
    error: str | None


class MeteredStream:
    """What ``router.chat(stream=True)`` returns: an iterator of ``ChatCompletionChunk``.

    Close it (or use it as a context manager) to stop early: the upstream connection is
    released and what was delivered so far is billed. A client that asked for usage
    (``stream_options.include_usage``) gets it as OpenAI sends it, in a last chunk with no
    choices, whichever way the provider sent it (or an estimate when it sent none).

    An upstream error (the dispatcher raises one for a stream that ends without any
    ``finish_reason``: cut short upstream) ends it ``partial`` (over HTTP, an error event
    instead of ``[DONE]``). Past ``deadline`` (a ``time.monotonic()`` value) an unfinished
    stream is cut the same way, with ``UpstreamTimeoutError``.
    """

    def __init__(
        self,
        upstream: ChunkStream,
        *,
        model: str,
        include_usage: bool,
        estimate_usage: Callable[[int], Usage],
        on_end: Callable[[StreamEnd], None],
        deadline: float | None = None,
        on_dropped: Callable[[MeteredStream], None] | None = None,
    ) -> None:
        self._upstream = upstream
        self._model = model
        self._include_usage = include_usage
        self._estimate_usage = estimate_usage
        self._on_end = on_end
        self._deadline = deadline
        self._on_dropped = on_dropped
        self._finished = False
        self._usage: Usage | None = None
        self._last: ChatCompletionChunk | None = None
        self._delivered = 0
        self._ended = False

    def __iter__(self) -> MeteredStream:
        return self

    def __next__(self) -> ChatCompletionChunk:
        while not self._ended:
            try:
                if (
                    self._deadline is not None
                    and not self._finished
                    and time.monotonic() > self._deadline
                ):
                    raise UpstreamTimeoutError(
                        "the stream was cut: the call passed max_call_seconds"
                    )
                chunk = next(self._upstream)
            except StopIteration:
                end = self._end("ok")
                if self._include_usage and self._last is not None:
                    return self._usage_chunk(self._last, end.usage)
                raise
            except LLMRouterError as exc:
                self._end("partial" if self._delivered else "failed", exc.message)
                raise
            except BaseException as exc:
                self._end("partial" if self._delivered else "failed", type(exc).__name__)
                raise
            if chunk.usage is not None:
                # Kept for the end: there it is billed and, if asked for, sent on its own.
                self._usage, chunk.usage = chunk.usage, None
                if not chunk.choices:
                    continue
            chunk.model = self._model
            self._finished = self._finished or any(c.finish_reason for c in chunk.choices)
            self._last = chunk
            self._delivered += _characters(chunk)
            return chunk
        raise StopIteration

    def close(self) -> None:
        """Stop: release the upstream, bill what was delivered (nothing delivered: failed)."""
        self._upstream.close()
        self._end("partial" if self._delivered else "failed", "closed by the client")

    def __del__(self) -> None:
        # A stream dropped unclosed still frees its connection and settles. Not here:
        # the garbage collector may run this inside one of the store's transactions on
        # the same thread, so the closing goes to the Router's settlement queue (flushed at
        # interpreter exit; what it cannot write by then is left to the sweeper).
        if not self._ended and self._on_dropped is not None:
            with contextlib.suppress(Exception):
                self._on_dropped(self)

    def __enter__(self) -> MeteredStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _end(self, status: str, error: str | None = None) -> StreamEnd:
        if self._ended:
            return StreamEnd(status, Usage(), False, error)
        self._ended = True
        self._upstream.close()
        if self._usage is not None:
            end = StreamEnd(status, self._usage, False, error)
        else:
            end = StreamEnd(status, self._estimate_usage(self._delivered), True, error)
        self._on_end(end)
        return end

    def _usage_chunk(self, last: ChatCompletionChunk, usage: Usage) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=last.id, created=last.created, model=self._model, choices=[], usage=usage
        )


def _characters(chunk: ChatCompletionChunk) -> int:
    total = 0
    for choice in chunk.choices:
        delta = choice.delta
        total += len(delta.content or "") + len(delta.refusal or "")
        for call in delta.tool_calls or []:
            if call.function is not None:
                total += len(call.function.name or "") + len(call.function.arguments or "")
    return total

"""Reliable dispatch below the Router: retries with backoff, fallbacks, circuit breakers.

A request goes to its model's target, then to each configured fallback in order. Each
target is retried while its error says that asking again may help (``retryable``: 429,
5xx, timeouts, broken connections), with exponential backoff and jitter, or after the
provider's ``Retry-After`` (429 and 503); a ``Retry-After`` longer than
``MAX_RETRY_WAIT_SECONDS`` moves on to the next target at once. A stream is retried until
its first chunk arrives, never after. No attempt and no wait starts that would pass the
call's ``deadline``.

After its retries, a request's outcome on a target is reported once to the circuit
breakers (``breakers.py``), which skip a deployment or provider that keeps failing. Only
``UpstreamError`` is caught, and every decision is read from the error's own flags.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from .breakers import Breakers, Passage
from .errors import (
    FailureScope,
    ProviderCoolingDownError,
    UpstreamError,
    UpstreamTimeoutError,
)
from .naming import Target
from .providers.base import ChunkStream, ProviderAdapter
from .providers.directory import ProviderDirectory, TargetPolicy
from .schemas import ChatCompletion, ChatCompletionChunk, ChatRequest

#: a Retry-After longer than this is not waited for: the next fallback is tried instead
MAX_RETRY_WAIT_SECONDS = 30.0
_T = TypeVar("_T")


class Dispatcher:
    """Sends a request to the first of its targets that answers. Thread-safe.

    Each call names the provider directory snapshot it works with (adapters and policies);
    the breakers are the dispatcher's own and outlive snapshots. ``clock`` (monotonic
    seconds) times the breakers and the ``deadline`` of each call; ``sleep`` waits before
    retries (tests record the waits instead).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.breakers = Breakers(clock)
        self._clock = clock
        self._sleep = sleep

    def chat(
        self,
        request: ChatRequest,
        targets: list[Target],
        directory: ProviderDirectory,
        *,
        deadline: float | None = None,
    ) -> tuple[ChatCompletion, Target]:
        return self._first_success(
            directory,
            targets,
            lambda adapter, target: adapter.chat(request, target.upstream_model),
            deadline,
        )

    def stream(
        self,
        request: ChatRequest,
        targets: list[Target],
        directory: ProviderDirectory,
        *,
        deadline: float | None = None,
    ) -> tuple[ChunkStream, Target]:
        def open_stream(adapter: ProviderAdapter, target: Target) -> ChunkStream:
            upstream = adapter.stream(request, target.upstream_model)
            try:
                first = next(upstream)
            except StopIteration:
                raise UpstreamError(
                    f"{target.provider} sent an empty stream", provider=target.provider
                ) from None
            except BaseException:
                upstream.close()
                raise
            return ChunkStream(itertools.chain([first], upstream), upstream.close)

        def watched(stream: ChunkStream, passage: Passage, target: Target) -> ChunkStream:
            # A stream's outcome is known at its end: one that breaks after its first chunk,
            # or ends without a finish_reason (cut short upstream), counts against its
            # deployment too; one the client closes early does not.
            def chunks() -> Iterator[ChatCompletionChunk]:
                finished = False
                try:
                    for chunk in stream:
                        finished = finished or any(c.finish_reason for c in chunk.choices)
                        yield chunk
                    if not finished:
                        raise UpstreamError(
                            f"{target.provider} ended the stream before it finished",
                            provider=target.provider,
                        )
                except UpstreamError as exc:
                    passage.failed(exc.scope)
                    raise
                passage.succeeded()

            def release() -> None:
                stream.close()
                passage.succeeded()  # a no-op when the outcome was reported already

            return ChunkStream(chunks(), release)

        return self._first_success(directory, targets, open_stream, deadline, watched)

    def _first_success(
        self,
        directory: ProviderDirectory,
        targets: list[Target],
        call: Callable[[ProviderAdapter, Target], _T],
        deadline: float | None,
        served: Callable[[_T, Passage, Target], _T] | None = None,
    ) -> tuple[_T, Target]:
        """The first target's answer; ``served`` takes over reporting its outcome (a
        stream's), else the answer is a success at once."""
        errors: list[UpstreamError] = []
        half_open_in: list[float] = []
        for target in targets:
            if deadline is not None and self._clock() >= deadline:
                break
            policy = directory.policy(target.provider)
            passage = self.breakers.enter(target.provider, target.upstream_model, policy.breaker)
            if passage is None:
                half_open_in.append(
                    self.breakers.seconds_until_half_open(target.provider, target.upstream_model)
                )
                continue
            try:
                result = self._with_retries(
                    directory.adapter(target.provider), target, call, policy, deadline
                )
            except UpstreamError as exc:
                passage.failed(exc.scope)
                exc.provider = exc.provider or target.provider
                errors.append(exc)
                continue
            except BaseException:
                passage.abandoned()
                raise
            if served is None:
                passage.succeeded()
                return result, target
            return served(result, passage, target), target
        raise _final_error(targets, errors, half_open_in)

    def _with_retries(
        self,
        adapter: ProviderAdapter,
        target: Target,
        call: Callable[[ProviderAdapter, Target], _T],
        policy: TargetPolicy,
        deadline: float | None,
    ) -> _T:
        """The first answer of ``target`` within its retries, or its last error."""
        for attempt in itertools.count():
            try:
                return call(adapter, target)
            except UpstreamError as exc:
                delay = _backoff(policy.retry_backoff, attempt, exc.retry_after)
                if (
                    not exc.retryable
                    or attempt >= policy.max_retries
                    or delay is None
                    or (deadline is not None and self._clock() + delay >= deadline)
                ):
                    raise
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def _final_error(
    targets: list[Target], errors: list[UpstreamError], half_open_in: list[float]
) -> UpstreamError:
    """What a request no target served answers: the error of the first target that was
    called (the model asked for, or the fallback closest to it), else of the first that
    was tried at all; 503 when every breaker in the way was open; else the deadline."""
    called = [error for error in errors if error.is_call]
    if called or errors:
        return (called or errors)[0]
    if half_open_in:
        retry_after = min(half_open_in)
        return ProviderCoolingDownError(
            "every provider that can serve this request is cooling down after repeated "
            f"failures; try again in {max(1, math.ceil(retry_after))} s",
            retry_after=retry_after,
            provider=targets[0].provider,
            scope=FailureScope.REQUEST,
        )
    return UpstreamTimeoutError(
        "the call's deadline passed before any provider could be asked",
        provider=targets[0].provider,
        scope=FailureScope.REQUEST,
    )


def _backoff(base: float, attempt: int, retry_after: float | None) -> float | None:
    """Seconds to wait before retry ``attempt + 1``; None when not worth waiting."""
    if retry_after is not None:
        return retry_after if retry_after <= MAX_RETRY_WAIT_SECONDS else None
    return base * (2**attempt) * (0.5 + random.random() / 2)

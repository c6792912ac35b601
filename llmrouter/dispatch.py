"""Reliable dispatch below the Router: retries with backoff, fallbacks, provider cooldowns.

A request goes to its model's target, then to each configured fallback in order (a
provider refusing the request with a 400 moves it on too). Each target is retried on 429,
5xx, timeouts and broken connections (exponential backoff with
jitter, honouring ``Retry-After``), but only before anything reached the client: a
stream is retried until its first chunk arrives, never after. A provider failing
``cooldown_after`` times in a row is skipped for ``cooldown_seconds``.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import (
    InvalidRequestError,
    LLMRouterError,
    UpstreamError,
)
from .naming import Target
from .providers.base import ChunkStream, ProviderAdapter
from .schemas import ChatCompletion, ChatRequest

#: a Retry-After longer than this is not waited for: the next fallback is tried instead
MAX_RETRY_WAIT_SECONDS = 30.0
_T = TypeVar("_T")


class Cooldowns:
    """Consecutive failures per provider, and who is cooling down until when."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def remaining(self, provider: str) -> float:
        return max(0.0, self._until.get(provider, 0.0) - self._clock())

    def failed(self, provider: str, *, after: int, seconds: float) -> None:
        with self._lock:
            count = self._failures.get(provider, 0) + 1
            self._failures[provider] = count
            if count >= after and seconds > 0:
                self._until[provider] = self._clock() + seconds
                self._failures[provider] = 0

    def succeeded(self, provider: str) -> None:
        with self._lock:
            self._failures.pop(provider, None)
            self._until.pop(provider, None)


class Dispatcher:
    def __init__(
        self,
        adapters: dict[str, ProviderAdapter],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.adapters = adapters
        self.cooldowns = Cooldowns(clock)
        self._sleep = sleep

    def chat(self, request: ChatRequest, targets: list[Target]) -> tuple[ChatCompletion, Target]:
        return self._first_success(
            targets, lambda adapter, target: adapter.chat(request, target.upstream_model)
        )

    def stream(self, request: ChatRequest, targets: list[Target]) -> tuple[ChunkStream, Target]:
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

        return self._first_success(targets, open_stream)

    def _first_success(
        self, targets: list[Target], call: Callable[[ProviderAdapter, Target], _T]
    ) -> tuple[_T, Target]:
        last_error: LLMRouterError | None = None
        for target in targets:
            wait = self.cooldowns.remaining(target.provider)
            if wait:
                last_error = last_error or UpstreamError(
                    f"{target.provider} is cooling down after repeated failures; "
                    f"it is tried again in {wait:.0f} s",
                    provider=target.provider,
                    code="provider_cooling_down",
                )
                continue
            adapter = self.adapters[target.provider]
            settings = adapter.settings
            for attempt in range(settings.max_retries + 1):
                try:
                    result = call(adapter, target)
                except InvalidRequestError as exc:
                    # This provider refused the request (a 400/422), or its format cannot
                    # carry it (n > 1 on Anthropic): never worth a retry, nor a cooldown,
                    # but another provider may take it.
                    last_error = exc
                    break
                except UpstreamError as exc:
                    last_error = exc
                    self.cooldowns.failed(
                        target.provider,
                        after=settings.cooldown_after,
                        seconds=settings.cooldown_seconds,
                    )
                    delay = _backoff(settings.retry_backoff, attempt, exc.retry_after)
                    if (
                        not exc.retryable
                        or attempt == settings.max_retries
                        or delay is None
                        or self.cooldowns.remaining(target.provider)
                    ):
                        break
                    self._sleep(delay)
                else:
                    self.cooldowns.succeeded(target.provider)
                    return result, target
        assert last_error is not None  # targets is never empty
        raise last_error


def _backoff(base: float, attempt: int, retry_after: float | None) -> float | None:
    """Seconds to wait before retry ``attempt + 1``; None when not worth waiting."""
    if retry_after is not None:
        return retry_after if retry_after <= MAX_RETRY_WAIT_SECONDS else None
    return base * (2**attempt) * (0.5 + random.random() / 2)

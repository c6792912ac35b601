"""The adapter seam: one class per provider kind translates OpenAI's format to its own.

An adapter knows a wire format and nothing else: no keys, quotas or money. It raises
only ``llmrouter.errors.Upstream*`` errors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import ClassVar

from ..config import ProviderSettings
from ..schemas import ChatCompletion, ChatCompletionChunk, ChatRequest


class ChunkStream:
    """The chunks of one upstream stream; ``close()`` stops reading and frees the connection."""

    def __init__(
        self, chunks: Iterator[ChatCompletionChunk], release: Callable[[], None] = lambda: None
    ) -> None:
        self._chunks = chunks
        self._release = release
        self.closed = False

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> ChatCompletionChunk:
        if self.closed:
            raise StopIteration
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            self._release()

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ProviderAdapter(ABC):
    """Speaks one provider's wire format. Subclasses declare ``kind`` and register it."""

    kind: ClassVar[str]
    #: where the provider's API lives when the config gives no ``base_url``
    default_base_url: ClassVar[str] = ""

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.base_url = (settings.base_url or self.default_base_url).rstrip("/")

    @abstractmethod
    def chat(self, request: ChatRequest, upstream_model: str) -> ChatCompletion:
        """One non-streaming completion of ``request`` by ``upstream_model``."""

    @abstractmethod
    def stream(self, request: ChatRequest, upstream_model: str) -> ChunkStream:
        """A streamed completion. Errors of the HTTP call are raised here; the dispatcher
        reads the first chunk before the client sees anything, so an error event at the
        start of a stream can still be retried or fall back."""

    def close(self) -> None:  # noqa: B027 - optional hook: adapters without connections skip it
        """Release pooled connections (called when the Router closes)."""

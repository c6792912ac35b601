"""OpenAI's Chat Completions API, and any endpoint that speaks it (``openai-compatible``).

Variants of the format (Mistral's) subclass ``OpenAIAdapter`` and translate through its
hooks: ``to_dialect`` for the request, ``from_dialect_answer`` and ``from_dialect_chunks``
for what comes back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import requests
from pydantic import ValidationError

from ..errors import ConfigError, UpstreamError
from ..schemas import ChatCompletion, ChatCompletionChunk, ChatRequest
from .base import ChunkStream, ProviderAdapter
from .http import HTTPTransport
from .registry import register


@register
class OpenAIAdapter(ProviderAdapter):
    """The request is already OpenAI's format: only the model and auth change."""

    kind = "openai"
    default_base_url = "https://api.openai.com/v1"
    #: request fields this kind of upstream refuses: never sent (``drop_fields`` adds to them)
    unsupported_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.transport = HTTPTransport(settings, self.base_url)
        self.url = self.base_url + "/chat/completions"
        secret = settings.secret()
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self.headers.update(settings.headers)
        self.never_sent = self.unsupported_fields | frozenset(settings.drop_fields)

    def build_body(self, request: ChatRequest, upstream_model: str) -> dict[str, Any]:
        """The JSON body for this upstream: the request in its dialect, minus what it refuses."""
        body = self.to_dialect(request.upstream_body(upstream_model))
        if not self.settings.stream_usage:
            # The server lacks stream_options, so not even the client's are sent; the
            # Router estimates the usage of such streams.
            body.pop("stream_options", None)
        elif request.stream:
            # Billing needs the token counts; the Router hides the usage chunk from
            # clients that did not ask for it.
            body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        for name in self.never_sent:
            body.pop(name, None)
        return body

    def to_dialect(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` rewritten for this upstream's variant of OpenAI's format.

        OpenAI's own: ``max_tokens`` is deprecated and refused by its reasoning models
        (o1, o3, o4, gpt-5…), while every chat model takes ``max_completion_tokens``; a
        ``max_completion_tokens`` the client sent too wins.
        """
        if "max_tokens" in body:
            limit = body.pop("max_tokens")
            body.setdefault("max_completion_tokens", limit)
        return body

    def from_dialect_answer(self, completion: ChatCompletion) -> ChatCompletion:
        """A variant's answer in OpenAI's terms (OpenAI's own: unchanged). The answer is
        parsed straight from the bytes first, so variants translate the parsed model."""
        return completion

    def from_dialect_chunks(self, chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """One stream's chunks in OpenAI's terms, still as JSON objects, so a variant can
        mend what would not validate (OpenAI's own: unchanged)."""
        return chunks

    def chat(self, request: ChatRequest, upstream_model: str) -> ChatCompletion:
        answer = self.transport.post(
            self.url, self.build_body(request, upstream_model), self.headers
        )
        try:
            return self.from_dialect_answer(ChatCompletion.model_validate_json(answer))
        except ValidationError as exc:
            raise UpstreamError(
                f"{self.name} sent an answer that is not a chat.completion: {_first_error(exc)}",
                provider=self.name,
            ) from exc

    def stream(self, request: ChatRequest, upstream_model: str) -> ChunkStream:
        response = self.transport.open_stream(
            self.url, self.build_body(request, upstream_model), self.headers
        )
        return ChunkStream(self._chunks(response), response.close)

    def _chunks(self, response: requests.Response) -> Iterator[ChatCompletionChunk]:
        for payload in self.from_dialect_chunks(self.transport.events(response)):
            try:
                yield ChatCompletionChunk.model_validate(payload)
            except ValidationError as exc:
                raise UpstreamError(
                    f"{self.name} sent a chunk that is not a chat.completion.chunk: "
                    + _first_error(exc),
                    provider=self.name,
                ) from exc

    def close(self) -> None:
        self.transport.close()


@register
class OpenAICompatibleAdapter(OpenAIAdapter):
    """Any server speaking OpenAI's format at ``base_url`` (vLLM, Ollama, LM Studio, …).

    Fields such a server refuses are named in ``drop_fields``; ``stream_usage = false``
    serves one without ``stream_options``.
    """

    kind = "openai-compatible"

    def __init__(self, settings: Any) -> None:
        if not settings.base_url:
            raise ConfigError(
                f"provider '{settings.name}' of kind openai-compatible needs base_url",
                key="base_url",
            )
        super().__init__(settings)

    def to_dialect(self, body: dict[str, Any]) -> dict[str, Any]:
        """Unchanged: many such servers know ``max_tokens`` only."""
        return body


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return ".".join(str(p) for p in error["loc"]) + ": " + error["msg"]

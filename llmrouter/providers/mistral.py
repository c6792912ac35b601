"""Mistral's chat API: OpenAI's format with a few renamed fields and stricter checks.

Mistral answers 422 to any field its schema lacks and 400 to tool-call ids that are not
exactly 9 alphanumeric characters, so the request is rewritten here. Answers are mended
too: ``finish_reason`` "model_length" (the context window is full) becomes "length", and
"error" (the generation failed) raises ``UpstreamError``; streamed tool calls, which
Mistral sends whole and may leave without ``index``, are numbered 0, 1, 2… per choice.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Iterator
from typing import Any

from ..errors import UpstreamError
from ..schemas import ChatCompletion
from .openai import OpenAIAdapter
from .registry import register

# OpenAI's names of what Mistral calls otherwise.
_RENAMED = {"seed": "random_seed", "max_completion_tokens": "max_tokens"}
_TOOL_CHOICES = {"required": "any"}
_ROLES = {"developer": "system"}
# Mistral's finish reasons OpenAI lacks ("error" is raised instead).
_FINISH_REASONS = {"model_length": "length"}
_TOOL_CALL_ID = re.compile(r"[A-Za-z0-9]{9}")
_ID_ALPHABET = string.digits + string.ascii_letters


@register
class MistralAdapter(OpenAIAdapter):
    """La Plateforme's ``/v1/chat/completions``, or a self-hosted server of Mistral's API."""

    kind = "mistral"
    default_base_url = "https://api.mistral.ai/v1"
    # OpenAI fields Mistral's schema lacks. Mistral puts usage into a stream's last chunk
    # unasked, so stream_options is not needed either. Other unknown fields still reach
    # Mistral: its own (safe_prompt, prompt_mode) work, and a typo fails loudly.
    unsupported_fields = frozenset(
        {
            "stream_options",
            "user",
            "store",
            "service_tier",
            "logit_bias",
            "logprobs",
            "top_logprobs",
            "modalities",
            "audio",
            "web_search_options",
            "verbosity",
        }
    )

    def to_dialect(self, body: dict[str, Any]) -> dict[str, Any]:
        for openai_name, mistral_name in _RENAMED.items():
            if openai_name in body:
                body[mistral_name] = body.pop(openai_name)
        choice = body.get("tool_choice")
        if isinstance(choice, str):
            body["tool_choice"] = _TOOL_CHOICES.get(choice, choice)
        for message in body["messages"]:
            _to_mistral_message(message)
        return body

    def from_dialect_answer(self, completion: ChatCompletion) -> ChatCompletion:
        for choice in completion.choices:
            if choice.finish_reason is not None:
                choice.finish_reason = self._finish_reason(choice.finish_reason)
        return completion

    def from_dialect_chunks(self, chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        # OpenAI clients assemble streamed tool calls by index, but Mistral may leave it out
        # (its schema defaults it to 0), which would merge parallel calls into one. Mistral
        # sends each call whole in one delta, so a delta with an id starts the next call.
        calls_begun: dict[int, int] = {}  # choice index → tool calls begun in it
        for chunk in chunks:
            for choice in _objects(chunk.get("choices")):
                reason = choice.get("finish_reason")
                if isinstance(reason, str):
                    choice["finish_reason"] = self._finish_reason(reason)
                delta, number = choice.get("delta"), choice.get("index", 0)
                if not isinstance(delta, dict) or not isinstance(number, int):
                    continue  # not a chunk: validation names the fault
                for call in _objects(delta.get("tool_calls")):
                    begun = calls_begun.get(number, 0)
                    if call.get("id"):
                        call["index"], calls_begun[number] = begun, begun + 1
                    else:  # more of the call last begun
                        call["index"] = max(begun - 1, 0)
            yield chunk

    def _finish_reason(self, reason: str) -> str:
        if reason == "error":
            # A failed generation, not an answer: the dispatcher may retry or fall back.
            raise UpstreamError(
                f"{self.name} stopped generating with finish_reason 'error'", provider=self.name
            )
        return _FINISH_REASONS.get(reason, reason)


def _to_mistral_message(message: dict[str, Any]) -> None:
    message["role"] = _ROLES.get(message["role"], message["role"])
    if message["role"] != "tool":
        # Mistral takes a name only on tool results (the function's).
        message.pop("name", None)
    if "tool_call_id" in message:
        message["tool_call_id"] = mistral_tool_call_id(message["tool_call_id"])
    for call in message.get("tool_calls") or []:
        call["id"] = mistral_tool_call_id(call["id"])


def _objects(value: Any) -> list[dict[str, Any]]:
    """The JSON objects of ``value`` if it is a list (an upstream's, so it is checked)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def mistral_tool_call_id(tool_call_id: str) -> str:
    """``tool_call_id`` as Mistral accepts it: 9 letters and digits.

    Ids of other providers (``call_…``, ``toolu_…``) are hashed, so a call and its result
    still match, request after request; Mistral's own ids are kept.
    """
    if _TOOL_CALL_ID.fullmatch(tool_call_id):
        return tool_call_id
    number = int.from_bytes(hashlib.sha256(tool_call_id.encode()).digest()[:8], "big")
    digits = []
    for _ in range(9):
        number, digit = divmod(number, len(_ID_ALPHABET))
        digits.append(_ID_ALPHABET[digit])
    return "".join(digits)

"""``echo``: an offline, deterministic provider for development, demos and tests.

It answers with the last user message (word by word when streaming), honours
``max_tokens`` and ``stop``, and calls a tool when the request's tools ask for one:
a named or ``required`` tool_choice, or (``auto``) a tool whose name the user wrote.
After a tool result it answers ``"<tool name> returned: <result>"``. Tokens are counted
as words and punctuation, the same way for prompt and completion.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from ..schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    Message,
    NamedToolChoice,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from .base import ChunkStream
from .echo_video import EchoVideo
from .registry import register
from .video_base import VideoAdapter

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])")
_PER_MESSAGE_TOKENS = 3
_PLACEHOLDERS = {
    "string": "echo",
    "integer": 0,
    "number": 0,
    "boolean": False,
    "array": [],
    "object": {},
}


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


@register
class EchoAdapter(EchoVideo, VideoAdapter):
    """Chat as above; video models (``output_modalities = ["video"]``) make offline video
    tasks (``echo_video.py``)."""

    kind = "echo"

    def chat(self, request: ChatRequest, upstream_model: str) -> ChatCompletion:
        pieces, tool_call, finish = _answer(request)
        message = AssistantMessage(
            content=None if tool_call else "".join(pieces),
            tool_calls=[tool_call] if tool_call else None,
        )
        return ChatCompletion(
            id=_completion_id(),
            created=int(time.time()),
            model=upstream_model,
            choices=[Choice(index=0, message=message, finish_reason=finish)],
            usage=_usage(request, pieces, tool_call),
        )

    def stream(self, request: ChatRequest, upstream_model: str) -> ChunkStream:
        return ChunkStream(self._chunks(request, upstream_model))

    def _chunks(self, request: ChatRequest, upstream_model: str) -> Iterator[ChatCompletionChunk]:
        pieces, tool_call, finish = _answer(request)
        ident, created = _completion_id(), int(time.time())

        def chunk(delta: Delta, finish_reason: str | None = None) -> ChatCompletionChunk:
            choice = ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)
            return ChatCompletionChunk(
                id=ident, created=created, model=upstream_model, choices=[choice]
            )

        yield chunk(Delta(role="assistant", content=""))
        if tool_call:
            yield chunk(
                Delta(
                    tool_calls=[
                        ToolCallDelta(
                            index=0,
                            id=tool_call.id,
                            type="function",
                            function=FunctionCallDelta(name=tool_call.function.name, arguments=""),
                        )
                    ]
                )
            )
            yield chunk(
                Delta(
                    tool_calls=[
                        ToolCallDelta(
                            index=0,
                            function=FunctionCallDelta(arguments=tool_call.function.arguments),
                        )
                    ]
                )
            )
        for piece in pieces:
            yield chunk(Delta(content=piece))
        yield chunk(Delta(), finish)
        yield ChatCompletionChunk(
            id=ident,
            created=created,
            model=upstream_model,
            usage=_usage(request, pieces, tool_call),
        )


def _answer(request: ChatRequest) -> tuple[list[str], ToolCall | None, str]:
    """The answer's word pieces, or a tool call, and the finish reason."""
    last = request.messages[-1]
    tool = _tool_to_call(request, last)
    if tool is not None:
        arguments = json.dumps(_placeholder_arguments(tool), separators=(",", ":"))
        call = ToolCall(
            id="call_" + uuid.uuid4().hex[:24],
            function=FunctionCall(name=tool.function.name, arguments=arguments),
        )
        return [], call, "tool_calls"
    if last.role == "tool":
        text = f"{_tool_name(request, last.tool_call_id)} returned: {last.text()}"
    else:
        text = next((m.text() for m in reversed(request.messages) if m.role == "user"), "")
    text, finish = _apply_stop(text, request.stop)
    pieces = _TOKEN.findall(text)
    limit = request.output_limit
    if limit is not None and len(pieces) > limit:
        return pieces[:limit], None, "length"
    return pieces, None, finish


def _tool_to_call(request: ChatRequest, last: Message) -> Tool | None:
    if not request.tools or request.tool_choice == "none" or last.role == "tool":
        return None
    if isinstance(request.tool_choice, NamedToolChoice):
        return next(
            t for t in request.tools if t.function.name == request.tool_choice.function.name
        )
    if request.tool_choice == "required":
        return request.tools[0]
    said = last.text()
    return next((t for t in request.tools if t.function.name in said), None)


def _placeholder_arguments(tool: Tool) -> dict[str, Any]:
    schema = tool.function.parameters or {}
    properties = schema.get("properties", {})
    return {
        name: _PLACEHOLDERS.get(properties.get(name, {}).get("type", "string"), "echo")
        for name in schema.get("required", [])
    }


def _tool_name(request: ChatRequest, call_id: str | None) -> str:
    for message in request.messages:
        for call in message.tool_calls or []:
            if call.id == call_id:
                return call.function.name
    return "tool"


def _apply_stop(text: str, stop: str | list[str] | None) -> tuple[str, str]:
    sequences = [stop] if isinstance(stop, str) else (stop or [])
    cuts = [text.find(s) for s in sequences if s and s in text]
    return (text[: min(cuts)], "stop") if cuts else (text, "stop")


def _usage(request: ChatRequest, pieces: list[str], tool_call: ToolCall | None) -> Usage:
    prompt = sum(count_tokens(m.text()) + _PER_MESSAGE_TOKENS for m in request.messages)
    completion = len(pieces) + (count_tokens(tool_call.function.arguments) + 1 if tool_call else 0)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]

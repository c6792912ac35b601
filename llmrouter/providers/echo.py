"""``echo``: an offline, deterministic provider for development, demos and tests.

It answers with the last user message (word by word when streaming), honours
``max_tokens`` and ``stop``, and calls tools when the request's tools ask for them: a
named or ``required`` tool_choice (on the first turn), or (``auto``) every tool whose
name the user wrote. Calls come in stages, so a tool loop can be shown offline: the last
user message is split on " then ", and while the assistant has made fewer tool-calling
turns since that message (k) than there are stages, it calls, in one turn, every tool
whose name stage k contains (in the order of ``tools``; one only with
``parallel_tool_calls: false``); a stage naming none is answered with text. A message
without " then " is one stage: its tools are called once, then the results answered.
After tool results it answers ``"<tool name> returned: <result>"``, one for each tool
message since the last assistant turn, joined by ``"; "``. Tokens are counted as words
and punctuation, the same way for prompt and completion.
"""

from __future__ import annotations

import itertools
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
        pieces, tool_calls, finish = _answer(request)
        message = AssistantMessage(
            content=None if tool_calls else "".join(pieces), tool_calls=tool_calls or None
        )
        return ChatCompletion(
            id=_completion_id(),
            created=int(time.time()),
            model=upstream_model,
            choices=[Choice(index=0, message=message, finish_reason=finish)],
            usage=_usage(request, pieces, tool_calls),
        )

    def stream(self, request: ChatRequest, upstream_model: str) -> ChunkStream:
        return ChunkStream(self._chunks(request, upstream_model))

    def _chunks(self, request: ChatRequest, upstream_model: str) -> Iterator[ChatCompletionChunk]:
        pieces, tool_calls, finish = _answer(request)
        ident, created = _completion_id(), int(time.time())

        def chunk(delta: Delta, finish_reason: str | None = None) -> ChatCompletionChunk:
            choice = ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)
            return ChatCompletionChunk(
                id=ident, created=created, model=upstream_model, choices=[choice]
            )

        yield chunk(Delta(role="assistant", content=""))
        for index, call in enumerate(tool_calls):
            opened = FunctionCallDelta(name=call.function.name, arguments="")
            yield chunk(
                Delta(
                    tool_calls=[
                        ToolCallDelta(index=index, id=call.id, type="function", function=opened)
                    ]
                )
            )
            arguments = FunctionCallDelta(arguments=call.function.arguments)
            yield chunk(Delta(tool_calls=[ToolCallDelta(index=index, function=arguments)]))
        for piece in pieces:
            yield chunk(Delta(content=piece))
        yield chunk(Delta(), finish)
        yield ChatCompletionChunk(
            id=ident,
            created=created,
            model=upstream_model,
            usage=_usage(request, pieces, tool_calls),
        )


def _answer(request: ChatRequest) -> tuple[list[str], list[ToolCall], str]:
    """The answer's word pieces, or its tool calls, and the finish reason."""
    calls = [
        ToolCall(
            id="call_" + uuid.uuid4().hex[:24],
            function=FunctionCall(
                name=tool.function.name,
                arguments=json.dumps(_placeholder_arguments(tool), separators=(",", ":")),
            ),
        )
        for tool in _tools_to_call(request)
    ]
    if calls:
        return [], calls, "tool_calls"
    messages = request.messages
    if messages[-1].role == "tool":
        results = list(itertools.takewhile(lambda m: m.role == "tool", reversed(messages)))
        text = "; ".join(
            f"{_tool_name(request, m.tool_call_id)} returned: {m.text()}" for m in reversed(results)
        )
    else:
        text = next((m.text() for m in reversed(messages) if m.role == "user"), "")
    text, finish = _apply_stop(text, request.stop)
    pieces = _TOKEN.findall(text)
    limit = request.output_limit
    if limit is not None and len(pieces) > limit:
        return pieces[:limit], [], "length"
    return pieces, [], finish


def _tools_to_call(request: ChatRequest) -> list[Tool]:
    """The tools this turn calls: see the module docstring for the stages."""
    tools, choice = request.tools or [], request.tool_choice
    if not tools or choice == "none":
        return []
    messages = request.messages
    asked = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    turns = sum(1 for m in messages[asked + 1 :] if m.role == "assistant" and m.tool_calls)
    if isinstance(choice, NamedToolChoice):
        tools = [t for t in tools if t.function.name == choice.function.name]
    if turns == 0 and (isinstance(choice, NamedToolChoice) or choice == "required"):
        wanted = tools[:1]
    else:
        stages = messages[asked].text().split(" then ") if asked >= 0 else [""]
        stage = stages[turns] if turns < len(stages) else ""
        wanted = [t for t in tools if t.function.name in stage]
    return wanted[:1] if request.parallel_tool_calls is False else wanted


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


def _usage(request: ChatRequest, pieces: list[str], tool_calls: list[ToolCall]) -> Usage:
    prompt = sum(count_tokens(m.text()) + _PER_MESSAGE_TOKENS for m in request.messages)
    completion = len(pieces) + sum(count_tokens(c.function.arguments) + 1 for c in tool_calls)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]

"""Anthropic's Messages API (``POST /v1/messages``): OpenAI chat requests translated to
Claude's format, and Claude's messages and stream events translated back.

Where the two formats differ, this adapter chooses:

- ``system``/``developer`` messages, wherever they are, join (blank-line separated) into
  the top-level ``system``; consecutive turns of one role merge into one turn, so the
  results of parallel tool calls reach Claude as one user turn, as it requires.
- ``temperature`` is clamped to Anthropic's 0–1 (values up to 1 mean the same on both).
  Current Claude models refuse ``temperature`` and ``top_p`` together: when both are set,
  only ``temperature`` is sent.
- ``stop``: whitespace-only (and empty) stop sequences cannot be honoured by Anthropic,
  which refuses them, so they are dropped; ``stop: "\\n"`` means no stop sequence.
- Tool call ids must match ``^[a-zA-Z0-9_-]+$`` on Anthropic. Other ids (such as
  ``functions.get_weather:0`` from Kimi or DeepSeek) are sent with each other character
  replaced by ``_`` and ``_`` plus 8 hex digits of the original's SHA-256 appended, so a
  call and its result map alike in every request and distinct ids stay distinct.
- ``tool_choice: "none"`` is sent as ``{"type": "none"}`` with the tools kept, since
  Anthropic refuses a history with tool calls when no tools are defined. For the same
  reason, a history with tool calls in a request without tools gets one placeholder tool,
  ``no_tools_available``, with ``tool_choice`` ``{"type": "none"}`` so it is never called.
- ``max_tokens`` is required by Anthropic; when the client sets none, the adapter sends
  ``DEFAULT_MAX_TOKENS`` (4096), or the model's ``max_output_length`` when lower.
- ``response_format`` json_object/json_schema: Claude is forced to call one tool whose
  input schema is the requested schema, and that input is returned as the message
  content (finish_reason ``stop``). With client tools in the request, a system
  instruction asks for JSON instead, so the client's tools stay callable.
- ``n`` > 1 is refused (``UpstreamUnsupportedError``, param ``n``); ``seed``, penalties,
  ``logit_bias``, ``logprobs`` and fields Anthropic does not know are dropped, since
  Anthropic refuses unknown fields. Content parts other than text and images are refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from ..errors import UpstreamError, UpstreamUnsupportedError
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
    ImagePart,
    Message,
    NamedToolChoice,
    ResponseFormat,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from .base import ChunkStream, ProviderAdapter
from .http import HTTPTransport
from .registry import register

API_VERSION = "2023-06-01"
#: The tool Claude is made to call to answer in JSON (only used when the client has no tools).
JSON_TOOL = "json_response"
#: The placeholder tool defined for a history with tool calls in a request without tools.
NO_TOOLS = "no_tools_available"

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: what a malformed upstream JSON answer raises while it is read
_MALFORMED = (ValueError, KeyError, TypeError, AttributeError)
_TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}
_TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
_NOT_TOOL_ID = re.compile(r"[^a-zA-Z0-9_-]")
_DATA_URI = re.compile(r"^data:(?P<media_type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


@register
class AnthropicAdapter(ProviderAdapter):
    """Claude models through Anthropic's Messages API."""

    kind = "anthropic"
    default_base_url = "https://api.anthropic.com"
    #: sent as ``max_tokens`` when the client sets no limit (Anthropic requires one)
    DEFAULT_MAX_TOKENS = 4096

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.transport = HTTPTransport(settings, self.base_url)
        self.url = self.base_url.removesuffix("/v1") + "/v1/messages"
        secret = settings.secret()
        self.headers = {"anthropic-version": API_VERSION}
        if secret:
            self.headers["x-api-key"] = secret
        self.headers.update(settings.headers)

    def build_body(self, request: ChatRequest, upstream_model: str) -> dict[str, Any]:
        return translate_request(request, upstream_model, self._default_max_tokens(upstream_model))

    def chat(self, request: ChatRequest, upstream_model: str) -> ChatCompletion:
        body = self.build_body(request, upstream_model)
        answer = self.transport.post(self.url, body, self.headers)
        try:
            return translate_response(json.loads(answer), json_mode=_json_tool_mode(request))
        except _MALFORMED as exc:
            raise UpstreamError(
                f"{self.name} sent an answer that is not a Messages API message", provider=self.name
            ) from exc

    def stream(self, request: ChatRequest, upstream_model: str) -> ChunkStream:
        body = {**self.build_body(request, upstream_model), "stream": True}
        response = self.transport.open_stream(self.url, body, self.headers)
        translator = StreamTranslator(json_mode=_json_tool_mode(request))
        return ChunkStream(self._chunks(response, translator), response.close)

    def _chunks(
        self, response: requests.Response, translator: StreamTranslator
    ) -> Iterator[ChatCompletionChunk]:
        for payload in self.transport.events(response):
            try:
                yield from translator.feed(payload)
            except _MALFORMED as exc:
                raise UpstreamError(
                    f"{self.name} sent an unreadable stream event", provider=self.name
                ) from exc
            if translator.finished:
                return
        raise UpstreamError(f"{self.name} stream ended before message_stop", provider=self.name)

    def _default_max_tokens(self, upstream_model: str) -> int:
        # A max_tokens above the model's own output limit is a 400 from Anthropic.
        limit = next(
            (m.max_output_length for m in self.settings.models if m.id == upstream_model), None
        )
        return min(self.DEFAULT_MAX_TOKENS, limit or self.DEFAULT_MAX_TOKENS)

    def close(self) -> None:
        self.transport.close()


# --------------------------------------------------------------------------- request


def translate_request(
    request: ChatRequest, upstream_model: str, default_max_tokens: int
) -> dict[str, Any]:
    """The Messages API body for ``request``, without ``stream`` (the adapter adds it)."""
    if request.n is not None and request.n > 1:
        raise UpstreamUnsupportedError(
            "Anthropic models return one choice only: n must be 1", param="n"
        )
    system, messages = _conversation(request.messages)
    json_format = _json_format(request)
    schema = json_format.json_schema.schema_ if json_format and json_format.json_schema else None
    if json_format and request.tools:
        system.append(_json_instruction(schema))
    body: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": request.output_limit or default_max_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, 1.0)
    elif request.top_p is not None:  # current models refuse both: temperature wins
        body["top_p"] = request.top_p
    if stop_sequences := _stop_sequences(request.stop):
        body["stop_sequences"] = stop_sequences
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if json_format and not request.tools:
        body.update(_json_tool(schema))
    elif request.tools:
        body.update(_tools(request))
    elif _has_tool_blocks(messages):
        body.update(_no_tools())
    return body


def _stop_sequences(stop: str | list[str] | None) -> list[str]:
    """The stop sequences Anthropic accepts: those with a non-whitespace character."""
    sequences = [stop] if isinstance(stop, str) else stop or []
    return [sequence for sequence in sequences if sequence.strip()]


def _conversation(messages: list[Message]) -> tuple[list[str], list[dict[str, Any]]]:
    """The system texts, and the turns with consecutive same-role turns merged."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        if message.role in ("system", "developer"):
            system.append(message.text())
            continue
        if message.role == "assistant":
            role, blocks = "assistant", _assistant_blocks(message, position)
        elif message.role == "tool":
            role, blocks = "user", [_tool_result(message)]
        else:
            role, blocks = "user", _user_blocks(message, position)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _user_blocks(message: Message, position: int) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"type": "text", "text": message.content}]
    blocks: list[dict[str, Any]] = []
    for part in message.content or []:
        if isinstance(part, TextPart):
            blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append(_image_block(part.image_url.url, position))
        else:
            raise UpstreamUnsupportedError(
                f"Anthropic models do not accept content parts of type '{part.type}'",
                param=f"messages[{position}].content",
            )
    return blocks


def _image_block(url: str, position: int) -> dict[str, Any]:
    if not url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URI.match(url)
    if match is None:
        raise UpstreamUnsupportedError(
            "an image data URI must be base64: data:<media type>;base64,<data>",
            param=f"messages[{position}].content",
        )
    source = {"type": "base64", "media_type": match["media_type"], "data": match["data"]}
    return {"type": "image", "source": source}


def _assistant_blocks(message: Message, position: int) -> list[dict[str, Any]]:
    # Anthropic refuses empty text blocks, which OpenAI clients often send with tool calls.
    text = message.text()
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for call in message.tool_calls or []:
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise UpstreamUnsupportedError(
                f"the arguments of tool call '{call.id}' are not a JSON object",
                param=f"messages[{position}].tool_calls",
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.id),
                "name": call.function.name,
                "input": arguments,
            }
        )
    return blocks


def _tool_result(message: Message) -> dict[str, Any]:
    # Message's validation guarantees that a tool message has a tool_call_id.
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": _tool_id(message.tool_call_id or ""),
    }
    if text := message.text():
        block["content"] = text
    return block


def _tool_id(call_id: str) -> str:
    """``call_id`` as Anthropic accepts it, the same in every request (see the docstring)."""
    if _TOOL_ID.fullmatch(call_id):
        return call_id
    # The hash keeps ids apart that differ only in the replaced characters.
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:8]
    return f"{_NOT_TOOL_ID.sub('_', call_id)}_{digest}"


def _has_tool_blocks(turns: list[dict[str, Any]]) -> bool:
    return any(
        block["type"] in ("tool_use", "tool_result") for turn in turns for block in turn["content"]
    )


def _tools(request: ChatRequest) -> dict[str, Any]:
    tools = []
    for tool in request.tools or []:
        function = tool.function
        entry: dict[str, Any] = {"name": function.name}
        if function.description:
            entry["description"] = function.description
        entry["input_schema"] = function.parameters or {"type": "object", "properties": {}}
        tools.append(entry)
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        tool_choice: dict[str, Any] = {"type": "tool", "name": choice.function.name}
    else:
        tool_choice = {"type": _TOOL_CHOICES[choice or "auto"]}
    if request.parallel_tool_calls is False and tool_choice["type"] != "none":
        tool_choice["disable_parallel_tool_use"] = True
    return {"tools": tools, "tool_choice": tool_choice}


def _no_tools() -> dict[str, Any]:
    tool = {
        "name": NO_TOOLS,
        "description": "No tools are available. Never call this tool.",
        "input_schema": {"type": "object", "properties": {}},
    }
    return {"tools": [tool], "tool_choice": {"type": "none"}}


def _json_format(request: ChatRequest) -> ResponseFormat | None:
    fmt = request.response_format
    return fmt if fmt is not None and fmt.type != "text" else None


def _json_tool_mode(request: ChatRequest) -> bool:
    """Whether the JSON answer comes from a forced tool call (see the module docstring)."""
    return _json_format(request) is not None and not request.tools


def _json_tool(schema: dict[str, Any] | None) -> dict[str, Any]:
    tool = {
        "name": JSON_TOOL,
        "description": "Give the final answer as this tool's input.",
        "input_schema": schema or {"type": "object"},
    }
    return {"tools": [tool], "tool_choice": {"type": "tool", "name": JSON_TOOL}}


def _json_instruction(schema: dict[str, Any] | None) -> str:
    text = "Answer with one JSON object only, without any text or code fence around it."
    return text + (f" It must conform to this JSON schema: {json.dumps(schema)}" if schema else "")


# --------------------------------------------------------------------------- response


def translate_response(payload: dict[str, Any], json_mode: bool) -> ChatCompletion:
    """The ``chat.completion`` for a Messages API message."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in payload["content"]:
        if block["type"] == "text":
            texts.append(block["text"])
        elif block["type"] == "tool_use":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            if json_mode:
                texts.append(arguments)
            else:
                function = FunctionCall(name=block["name"], arguments=arguments)
                calls.append(ToolCall(id=block["id"], function=function))
        # thinking and redacted_thinking blocks have no place in OpenAI's message
    message = AssistantMessage(
        content="".join(texts) if texts or not calls else None, tool_calls=calls or None
    )
    finish = finish_reason(payload.get("stop_reason"), json_mode)
    return ChatCompletion(
        id="chatcmpl-" + payload["id"],
        created=int(time.time()),
        model=payload["model"],
        choices=[Choice(index=0, message=message, finish_reason=finish)],
        usage=usage_of(payload.get("usage")),
    )


def finish_reason(stop_reason: str | None, json_mode: bool) -> str:
    if json_mode and stop_reason == "tool_use":
        return "stop"
    return _FINISH_REASONS.get(stop_reason or "end_turn", "stop")


def usage_of(usage: Any) -> Usage | None:
    """OpenAI usage: cache writes and reads are prompt tokens too (Anthropic counts them apart).
    None when the answer reported no output tokens (an Anthropic-compatible server may leave
    usage out): the Router then estimates it rather than billing nothing."""
    if not isinstance(usage, dict) or not isinstance(usage.get("output_tokens"), int):
        return None
    cached = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0)
    prompt += cached
    completion = usage.get("output_tokens") or 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details={"cached_tokens": cached},
    )


# --------------------------------------------------------------------------- stream


@dataclass
class _ToolBlock:
    #: the OpenAI tool call index, or None for the forced JSON tool (streamed as content)
    position: int | None
    has_input: bool = False


class StreamTranslator:
    """Turns one stream's Anthropic events into OpenAI chunks, in order."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.finished = False
        self._id = "chatcmpl-"
        self._model = ""
        self._created = int(time.time())
        self._usage: dict[str, Any] = {}
        self._stop_reason: str | None = None
        # Anthropic's block index counts text and thinking blocks too; OpenAI's tool call
        # index counts tool calls only.
        self._tools: dict[int, _ToolBlock] = {}
        self._tool_count = 0

    def feed(self, event: dict[str, Any]) -> list[ChatCompletionChunk]:
        """The chunks one event yields (``error`` events are the caller's to raise)."""
        kind = event["type"]
        if kind == "message_start":
            message = event["message"]
            self._id = "chatcmpl-" + message["id"]
            self._model = message["model"]
            self._add_usage(message.get("usage"))
            return [self._chunk(Delta(role="assistant", content=""))]
        if kind == "content_block_start":
            return self._block_start(event["index"], event["content_block"])
        if kind == "content_block_delta":
            return self._block_delta(event["index"], event["delta"])
        if kind == "content_block_stop":
            block = self._tools.get(event["index"])
            # A tool without input gets no fragment, or an empty one; OpenAI wants "{}".
            return self._input(block, "{}") if block and not block.has_input else []
        if kind == "message_delta":
            self._stop_reason = event["delta"].get("stop_reason") or self._stop_reason
            self._add_usage(event.get("usage"))
            return []
        if kind == "message_stop":
            self.finished = True
            finish = finish_reason(self._stop_reason, self.json_mode)
            usage = usage_of(self._usage)
            if usage is None:
                return [self._chunk(Delta(), finish)]
            usage_chunk = ChatCompletionChunk(
                id=self._id, created=self._created, model=self._model, usage=usage
            )
            return [self._chunk(Delta(), finish), usage_chunk]
        return []  # ping, and event types Anthropic may add

    def _block_start(self, index: int, block: dict[str, Any]) -> list[ChatCompletionChunk]:
        if block["type"] != "tool_use":
            return []  # text arrives in deltas; thinking is not for the client
        if self.json_mode:
            self._tools[index] = _ToolBlock(position=None)
            return []
        position = self._tool_count
        self._tools[index] = _ToolBlock(position=position)
        self._tool_count += 1
        function = FunctionCallDelta(name=block["name"], arguments="")
        call = ToolCallDelta(index=position, id=block["id"], type="function", function=function)
        return [self._chunk(Delta(tool_calls=[call]))]

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[ChatCompletionChunk]:
        if delta["type"] == "text_delta" and delta["text"]:
            return [self._chunk(Delta(content=delta["text"]))]
        block = self._tools.get(index)
        if delta["type"] == "input_json_delta" and block and delta["partial_json"]:
            return self._input(block, delta["partial_json"])
        return []  # thinking, signature and citation deltas

    def _input(self, block: _ToolBlock, fragment: str) -> list[ChatCompletionChunk]:
        block.has_input = True
        if block.position is None:
            return [self._chunk(Delta(content=fragment))]
        call = ToolCallDelta(index=block.position, function=FunctionCallDelta(arguments=fragment))
        return [self._chunk(Delta(tool_calls=[call]))]

    def _add_usage(self, usage: dict[str, Any] | None) -> None:
        # message_delta repeats some counts (as null or cumulative): the latest number wins.
        self._usage.update({k: v for k, v in (usage or {}).items() if isinstance(v, int)})

    def _chunk(self, delta: Delta, finish: str | None = None) -> ChatCompletionChunk:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish)
        return ChatCompletionChunk(
            id=self._id, created=self._created, model=self._model, choices=[choice]
        )

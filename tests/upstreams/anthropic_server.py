"""A fake Anthropic Messages API (``POST /v1/messages``) to test the anthropic adapter over HTTP.

It rejects what api.anthropic.com rejects for current Claude models (same error shape
and types), answers deterministically, streams Anthropic's SSE events and records every
request it received.

Answers: the last user text echoed back; after tool results, ``"Tool results: a; b"``
(every tool_result of the last user turn, in order). Tools are called in stages: the
text of the last user turn that has text is split on " then ", and while the assistant
has made fewer tool_use turns since that turn (k) than there are stages, it calls, in one
turn, every tool whose name stage k contains (in the order of ``tools``); a stage naming
none is answered with text (the results, or the echo). A text without " then " is one
stage. On the first turn ``tool_choice`` ``tool`` calls that one, with no text before it
(as Claude does), and ``any`` the tools the text names, else the first; later turns
follow the stages (``tool`` only ever calls its tool). Under ``auto`` the calls come after
a short text block ("Let me call a and b."); ``disable_parallel_tool_use`` keeps the
first call only. A tool's input holds a placeholder for each required property, so a tool
without parameters gets ``{}``. Tool ids are ``toolu_<turn>_<index>_<name>``, ``turn``
being the number of assistant turns before the answer, so the ids of one conversation
never repeat. Tokens are counted as whitespace-separated words.

Tests queue faults on ``fake.script`` (``tests.upstreams.faults.Fault``: Anthropic's
error shape and types; mid-stream an ``error`` event, a dropped connection, an end before
``message_stop``, an unreadable event) and shape the next answers with :class:`Shape` (a
forced stop_reason, cache usage, a thinking block).
One deviation, on purpose: a wrong key is echoed in the 401 message, as some providers
do, so that tests can check the router redacts it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Request, Response

from .faults import Fault, FaultScript, padded, reset_mid_body, verbatim_answer

API_VERSION = "2023-06-01"
TEST_KEY = "sk-ant-test-0123456789abcdef"

_TOP_LEVEL_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
}
_IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_PLACEHOLDERS = {"string": "echo", "integer": 7, "number": 1.5, "boolean": True, "array": []}
_JSON_FRAGMENT = 5


@dataclass
class Shape:
    """How the next answer differs from the deterministic one (one shape per request)."""

    stop_reason: str | None = None
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    thinking: str | None = None


# Anthropic's error type for each status, and its message when the fault names none.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {"overloaded_error": "Overloaded", "rate_limit_error": "Rate limited"}


@dataclass
class Received:
    headers: dict[str, str]
    body: Any


class Rejected(Exception):
    def __init__(
        self, message: str, status: int = 400, kind: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.kind = message, status, kind


class FakeAnthropic:
    """The WSGI app. Thread-safe: the loopback server answers each request in a thread."""

    def __init__(self, api_key: str = TEST_KEY) -> None:
        self.api_key = api_key
        self.received: list[Received] = []
        self.aborted_streams = 0
        self.script = FaultScript()
        self._shapes: deque[Shape] = deque()
        self._lock = threading.Lock()
        self._counter = 0

    @property
    def last(self) -> Received:
        return self.received[-1]

    def shape_next(self, *shapes: Shape) -> None:
        """Shape the next answers with these, in order."""
        with self._lock:
            self._shapes.extend(shapes)

    def reset(self) -> None:
        self.script.clear()
        with self._lock:
            self.received.clear()
            self._shapes.clear()
            self.aborted_streams = 0
            self._counter = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self._handle(Request(environ))(environ, start_response)

    def _handle(self, request: Request) -> Response:
        try:
            body = json.loads(request.get_data() or b"null")
        except ValueError:
            body = None
        model = body.get("model") if isinstance(body, dict) else None
        fault = self.script.take(model)
        with self._lock:
            self.received.append(Received(dict(request.headers), body))
            shape = self._shapes.popleft() if self._shapes else Shape()
            self._counter += 1
            message_id = f"msg_fake{self._counter:06d}"
        fault.pause()
        if request.method != "POST" or request.path != "/v1/messages":
            return _error(Rejected(f"Not found: {request.path}", 404, "not_found_error"))
        try:
            _check_headers(request.headers, self.api_key)
            _check_body(body)
        except Rejected as exc:
            return _error(exc)
        if fault.status and fault.error_event_after is None:
            return _error(_rejection(fault), fault.retry_after_header())
        streamed = bool(body.get("stream"))
        verbatim = verbatim_answer(fault, streamed)
        if verbatim is not None:
            return verbatim
        message = _answer(body, message_id, shape)
        if fault.no_usage:
            del message["usage"]
        if streamed:
            events = iter(()) if fault.empty_stream else _events(message, fault)
            return Response(
                self._sse(events, fault),
                mimetype="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        answer = json.dumps(padded(message, fault))
        if fault.reset_mid_body:
            return reset_mid_body(answer, "application/json", request.environ)
        return Response(answer, mimetype="application/json")

    def _sse(self, events: Iterator[tuple[str, dict[str, Any]]], fault: Fault) -> Iterator[bytes]:
        finished = False
        try:
            for count, (name, data) in enumerate(events):
                if count == fault.error_event_after:
                    error = _rejection(fault)
                    body = {"type": error.kind, "message": error.message}
                    yield _event("error", {"type": "error", "error": body})
                    break
                if count == fault.drop_after:
                    # An exception after the headers makes the server cut the connection
                    # without the final empty chunk, as a network failure would.
                    raise ConnectionAbortedError("scripted drop")
                if count == fault.end_after:
                    break
                if count == fault.malformed_after:
                    yield b'event: content_block_delta\ndata: {"type": "content_block_del\n\n'
                yield _event(name, data)
                time.sleep(fault.chunk_pause)
            finished = True
        finally:
            if not finished:
                with self._lock:
                    self.aborted_streams += 1


def _rejection(fault: Fault) -> Rejected:
    """The error a fault with a status stands for, in Anthropic's types."""
    status = fault.status or 500
    kind = fault.error_type or ERROR_TYPES.get(status, "api_error")
    message = fault.message or ERROR_MESSAGES.get(kind, "Internal server error")
    return Rejected(message, status, kind)


# --------------------------------------------------------------------------- validation


def _check_headers(headers: Any, api_key: str) -> None:
    key = headers.get("x-api-key")
    if not key:
        raise Rejected("x-api-key header is required", 401, "authentication_error")
    if key != api_key:
        raise Rejected(f"invalid x-api-key: {key}", 401, "authentication_error")
    if not headers.get("anthropic-version"):
        raise Rejected("anthropic-version: header is required")


def _check_body(body: Any) -> None:
    if not isinstance(body, dict):
        raise Rejected("The request body is not valid JSON.")
    for name in body:
        if name not in _TOP_LEVEL_FIELDS:
            raise Rejected(f"{name}: Extra inputs are not permitted")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise Rejected(f"{name}: Field required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise Rejected("max_tokens: Input should be greater than or equal to 1")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not 0 <= value <= 1:
            raise Rejected(f"{name}: Input should be less than or equal to 1")
    if body.get("temperature") is not None and body.get("top_p") is not None:
        raise Rejected(
            "`temperature` and `top_p` cannot both be specified for this model. "
            "Please use only one."
        )
    system = body.get("system")
    text_blocks = isinstance(system, list) and all(b.get("type") == "text" for b in system)
    if system is not None and not isinstance(system, str) and not text_blocks:
        raise Rejected("system: Input should be a valid string or a list of text blocks")
    stops = body.get("stop_sequences", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise Rejected("stop_sequences: Input should be a valid list of strings")
    if not all(s.strip() for s in stops):
        raise Rejected("stop_sequences: each stop sequence must contain non-whitespace")
    metadata = body.get("metadata", {})
    if set(metadata) - {"user_id"}:
        raise Rejected("metadata: Extra inputs are not permitted")
    tool_names = _check_tools(body.get("tools"), body.get("tool_choice"))
    _check_messages(body["messages"], bool(tool_names))


def _check_tools(tools: Any, choice: Any) -> list[str]:
    names: list[str] = []
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or set(tool) - {"name", "description", "input_schema"}:
            raise Rejected(f"tools.{i}: Extra inputs are not permitted")
        if not _TOOL_NAME.match(str(tool.get("name", ""))):
            raise Rejected(f"tools.{i}.name: String should match pattern '{_TOOL_NAME.pattern}'")
        if not isinstance(tool.get("input_schema"), dict):
            raise Rejected(f"tools.{i}.input_schema: Field required")
        if tool["input_schema"].get("type") != "object":
            raise Rejected(f"tools.{i}.input_schema.type: Input should be 'object'")
        names.append(tool["name"])
    if choice is None:
        return names
    if not isinstance(choice, dict):
        raise Rejected("tool_choice: Input should be a valid dictionary or object")
    kind = choice.get("type")
    allowed = {"type"} if kind == "none" else {"type", "disable_parallel_tool_use"}
    if kind not in ("auto", "any", "tool", "none"):
        raise Rejected("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if kind == "tool":
        allowed.add("name")
        if choice.get("name") not in names:
            raise Rejected(f"tool_choice.name: no tool named {choice.get('name')!r} in tools")
    if set(choice) - allowed:
        raise Rejected(f"tool_choice.{kind}: Extra inputs are not permitted")
    return names


def _check_messages(messages: Any, tools_defined: bool) -> None:
    if not isinstance(messages, list) or not messages:
        raise Rejected("messages: at least one message is required")
    if messages[0].get("role") != "user":
        raise Rejected('messages: first message must use the "user" role')
    pending: set[str] = set()  # tool_use ids of the previous turn, awaiting their results
    seen: set[str] = set()  # every tool_use id so far
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise Rejected(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        blocks = _blocks(message.get("content"))
        if not blocks and i < len(messages) - 1:
            raise Rejected(
                f"messages.{i}: all messages must have non-empty content "
                "except for the optional final assistant message"
            )
        results: set[str] = set()
        for j, block in enumerate(blocks):
            where = f"messages.{i}.content.{j}"
            kind = _check_block(block, role, where, tools_defined)
            if kind == "tool_use":
                if block["id"] in seen:
                    raise Rejected(f"{where}: `tool_use` ids must be unique")
                seen.add(block["id"])
            elif kind == "tool_result":
                if j > len(results):
                    raise Rejected(
                        f"{where}: tool_result blocks must come before "
                        "any other content in a user message"
                    )
                if block["tool_use_id"] not in pending:
                    raise Rejected(
                        f"{where}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` block "
                        "must have a corresponding `tool_use` block in the previous message."
                    )
                results.add(block["tool_use_id"])
        if pending - results:
            raise Rejected(
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(sorted(pending - results))}. Each `tool_use` "
                "block must have a corresponding `tool_result` block in the next message."
            )
        pending = {b["id"] for b in blocks if b["type"] == "tool_use"}


def _check_block(block: Any, role: str, where: str, tools_defined: bool) -> str:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        if not isinstance(block.get("text"), str) or not block["text"]:
            raise Rejected(f"{where}: text content blocks must be non-empty")
    elif kind == "image" and role == "user":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            if source.get("media_type") not in _IMAGE_TYPES:
                raise Rejected(
                    f"{where}.source.base64.media_type: Input should be 'image/jpeg', "
                    "'image/png', 'image/gif' or 'image/webp'"
                )
            if not source.get("data"):
                raise Rejected(f"{where}.source.base64.data: Field required")
        elif source.get("type") != "url" or not str(source.get("url", "")).startswith("http"):
            raise Rejected(f"{where}.source: Input should be a base64 or url image source")
    elif kind in ("tool_use", "tool_result"):
        if not tools_defined:
            raise Rejected(
                "Requests which include `tool_use` or `tool_result` blocks must define tools."
            )
        if kind == "tool_use" and (role != "assistant" or not isinstance(block.get("input"), dict)):
            raise Rejected(f"{where}: tool_use blocks need role assistant and an object input")
        if kind == "tool_result" and (role != "user" or not block.get("tool_use_id")):
            raise Rejected(f"{where}: tool_result blocks need role user and a tool_use_id")
        id_field = "id" if kind == "tool_use" else "tool_use_id"
        call_id = block.get(id_field)
        # fullmatch: re's "$" would also accept an id ending in a newline
        if not isinstance(call_id, str) or not _TOOL_ID.fullmatch(call_id):
            raise Rejected(
                f"{where}.{kind}.{id_field}: String should match pattern '{_TOOL_ID.pattern}'"
            )
    else:
        raise Rejected(
            f"{where}: Input tag '{kind}' found using 'type' does not match any of "
            f"the expected tags for a {role} message"
        )
    return str(kind)


def _blocks(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return content
    raise Rejected("content: Input should be a valid string or a list of content blocks")


# --------------------------------------------------------------------------- answers


def _answer(body: dict[str, Any], message_id: str, shape: Shape) -> dict[str, Any]:
    """The complete Message the request gets (the stream is cut from it)."""
    messages = body["messages"]
    last = _blocks(messages[-1]["content"]) if messages[-1]["role"] == "user" else []
    results = [_result_text(b) for b in last if b["type"] == "tool_result"]
    said, turns = _prompt(messages)
    calls = _tools_to_call(body, said, turns)
    content: list[dict[str, Any]] = []
    if shape.thinking:
        content.append({"type": "thinking", "thinking": shape.thinking, "signature": "sig"})
    forced = (body.get("tool_choice") or {}).get("type") in ("any", "tool") and turns == 0
    if calls:
        text = "" if forced else "Let me call " + " and ".join(t["name"] for t in calls) + "."
    elif results:
        text = "Tool results: " + "; ".join(results)
    else:
        text = said
    text, stop_reason, stop_sequence = _cut(text, body)
    if stop_reason != "end_turn":
        calls = []
    if text:
        content.append({"type": "text", "text": text})
    assistant_turns = sum(1 for m in messages if m["role"] == "assistant")
    for i, tool in enumerate(calls):
        content.append(
            {
                "type": "tool_use",
                "id": f"toolu_{assistant_turns:02d}_{i:02d}_{tool['name']}",
                "name": tool["name"],
                "input": _placeholder_input(tool["input_schema"]),
            }
        )
    if calls:
        stop_reason = "tool_use"
    output = len(text.split()) + sum(
        len(json.dumps(b["input"])) // 4 + 1 for b in content if b["type"] == "tool_use"
    )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": shape.stop_reason or stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": _prompt_tokens(body),
            "cache_creation_input_tokens": shape.cache_creation_input_tokens,
            "cache_read_input_tokens": shape.cache_read_input_tokens,
            "output_tokens": output,
        },
    }


def _prompt(messages: list[dict[str, Any]]) -> tuple[str, int]:
    """The text of the last user turn with text, and the assistant's tool_use turns since."""
    turns = 0
    for message in reversed(messages):
        blocks = _blocks(message["content"])
        texts = [b["text"] for b in blocks if b["type"] == "text"]
        if message["role"] == "user" and texts:
            return " ".join(texts), turns
        if message["role"] == "assistant" and any(b["type"] == "tool_use" for b in blocks):
            turns += 1
    return "", turns


def _tools_to_call(body: dict[str, Any], said: str, turns: int) -> list[dict[str, Any]]:
    """The tools this turn calls: see the module docstring for the stages."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if choice["type"] == "tool":
        tools = [t for t in tools if t["name"] == choice["name"]]
    stages = said.split(" then ")
    named = [t for t in tools if t["name"] in stages[turns]] if turns < len(stages) else []
    if choice["type"] == "none":
        calls = []
    elif turns == 0 and choice["type"] == "tool":
        calls = tools
    elif turns == 0 and choice["type"] == "any":
        calls = named or tools[:1]
    else:
        calls = named
    return calls[:1] if choice.get("disable_parallel_tool_use") else calls


def _cut(text: str, body: dict[str, Any]) -> tuple[str, str, str | None]:
    """The text within ``stop_sequences`` and ``max_tokens``, the stop_reason and sequence."""
    found = [(text.find(s), s) for s in body.get("stop_sequences", []) if s in text]
    if found:
        at, sequence = min(found)
        return text[:at], "stop_sequence", sequence
    words = text.split()
    if len(words) > body["max_tokens"]:
        return " ".join(words[: body["max_tokens"]]), "max_tokens", None
    return text, "end_turn", None


def _placeholder_input(schema: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties", {})
    return {
        name: _PLACEHOLDERS.get(properties.get(name, {}).get("type", "string"), "echo")
        for name in schema.get("required", [])
    }


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content)
    return str(content)


def _prompt_tokens(body: dict[str, Any]) -> int:
    system = body.get("system") or ""
    words = len(json.dumps(system).split()) if isinstance(system, list) else len(system.split())
    for message in body["messages"]:
        for block in _blocks(message["content"]):
            words += 3 + len(str(block.get("text") or _result_text(block)).split())
    return words


# --------------------------------------------------------------------------- streaming


def _events(message: dict[str, Any], fault: Fault) -> Iterator[tuple[str, dict[str, Any]]]:
    """``message`` as Anthropic streams it: text by word, tool input in small fragments
    (without usage if the message has none; padded in message_start)."""
    usage = message.get("usage")
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    if usage:
        start["usage"] = {**usage, "output_tokens": 1}
    yield "message_start", padded({"type": "message_start", "message": start}, fault)
    yield "ping", {"type": "ping"}
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        empty = {
            "text": {"text": ""},
            "thinking": {"thinking": "", "signature": ""},
            "tool_use": {"input": {}},
        }
        opened = {**block, **empty[kind]}
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opened},
        )
        for delta in _deltas(block):
            yield (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    ending: dict[str, Any] = {"type": "message_delta", "delta": delta}
    if usage:
        ending["usage"] = {"output_tokens": usage["output_tokens"]}
    yield "message_delta", ending
    yield "message_stop", {"type": "message_stop"}


def _deltas(block: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if block["type"] == "text":
        for word in re.split(r"(?<=\s)(?=\S)", block["text"]):
            yield {"type": "text_delta", "text": word}
    elif block["type"] == "thinking":
        yield {"type": "thinking_delta", "thinking": block["thinking"]}
        yield {"type": "signature_delta", "signature": block["signature"]}
    else:
        raw = json.dumps(block["input"]) if block["input"] else ""
        # Anthropic sends a single empty fragment for a tool without input.
        for at in range(0, max(len(raw), 1), _JSON_FRAGMENT):
            yield {"type": "input_json_delta", "partial_json": raw[at : at + _JSON_FRAGMENT]}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _error(error: Rejected, headers: dict[str, str] | None = None) -> Response:
    body = {"type": "error", "error": {"type": error.kind, "message": error.message}}
    return Response(
        json.dumps(body), status=error.status, mimetype="application/json", headers=headers
    )

"""Google's Gemini API (generativelanguage v1beta): OpenAI chat requests as ``generateContent``
and ``streamGenerateContent``, answers translated back. Choices where Gemini differs:

* Dropped: ``user``, ``logit_bias``, ``logprobs``, ``top_logprobs``, ``parallel_tool_calls``,
  a message's ``name`` and other extra fields (Gemini rejects unknown JSON names).
* System and developer messages, wherever they stand, become ``systemInstruction``.
* Images: ``data:`` URIs go inline; other URLs as ``fileData`` for Gemini to fetch, with a
  MIME type guessed from the extension (``image/jpeg`` when unknown).
* Schemas (tool parameters, ``json_schema``) are reduced to Gemini's OpenAPI subset: other
  keywords dropped, local ``$ref`` inlined, ``oneOf`` read as ``anyOf``, a null type as
  ``nullable``; what it cannot express (recursive or remote ``$ref``, objects without
  properties, untyped values) is refused with a 400 naming the place.
* Replayed function calls carry Gemini's documented placeholder thought signature: the real
  one does not survive OpenAI's format, and Gemini 3 refuses calls without any.
* A blocked prompt (``promptFeedback.blockReason``, no candidates) answers with empty
  content and ``finish_reason: "content_filter"``, as OpenAI's own filter does; so do the
  filter finish reasons (image ones too) and ``LANGUAGE`` (cut for an unsupported language).
* A candidate ending with ``MALFORMED_FUNCTION_CALL``, ``UNEXPECTED_TOOL_CALL``,
  ``TOO_MANY_TOOL_CALLS`` or ``OTHER`` with neither text nor call is a failed generation: an
  ``UpstreamError`` to retry or fall back from, not an empty answer. With text, ``"stop"``.

Model families are told apart by the upstream model's name:

* JSON output beside function calling (tools, ``tool_choice`` not ``"none"``): models
  before ``gemini-3`` refuse ``responseMimeType`` with function declarations, so for them
  the JSON object (and its schema) is asked for in ``systemInstruction`` instead.
* ``presence_penalty`` and ``frequency_penalty`` go to ``gemini-2.0*`` only: later models
  refuse any penalty but zero.
* ``reasoning_effort`` becomes ``thinkingConfig``: on ``gemini-3*`` ``thinkingLevel`` "low"
  (minimal, low) or "high" (medium, high), the two levels every Gemini 3 model takes; on
  ``gemini-2.5*`` ``thinkingBudget`` 0 / 1024 / 8192 / 24576 (minimal to high, within every
  2.5 model's range; minimal is 128 on 2.5 Pro, which cannot stop thinking). Other models
  and other values: dropped.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from ..config import ProviderSettings
from ..errors import (
    FailureScope,
    UpstreamError,
    UpstreamUnsupportedError,
)
from ..schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    ImagePart,
    Message,
    NamedToolChoice,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
)
from .base import ChunkStream, ProviderAdapter
from .gemini_schema import gemini_schema
from .http import HTTPTransport, retry_after_seconds, upstream_message
from .registry import register

# Cut for what was said: by a filter, or (LANGUAGE) for a language Gemini does not support.
_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE")
_IMAGE_FILTERED = ("IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "IMAGE_OTHER")
_FINISHES = {"STOP": "stop", "MAX_TOKENS": "length"}
_FINISHES |= dict.fromkeys(_FILTERED + _IMAGE_FILTERED, "content_filter")
# How a failed generation ends: when it produced nothing, an error rather than an answer.
_FAILED = ("MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", "OTHER")
_THINKING_LEVELS = {"minimal": "low", "low": "low", "medium": "high", "high": "high"}
_THINKING_BUDGETS = {"minimal": 0, "low": 1024, "medium": 8192, "high": 24576}
_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_IMAGE_TYPES = {f".{ext}": f"image/{ext}" for ext in ("png", "jpeg", "webp", "gif", "heic", "heif")}
_IMAGE_TYPES |= {".jpg": "image/jpeg", ".pdf": "application/pdf"}
# Gemini's documented stand-in for a signature lost with history brought from elsewhere.
_PLACEHOLDER_SIGNATURE = "skip_thought_signature_validator"


class _GeminiTransport(HTTPTransport):
    """Gemini says in the error body what its status code does not: a bad key (400), a
    refusal for the account rather than the request (400), the retry delay (429)."""

    def error_for(self, response: requests.Response, body: bytes) -> UpstreamError:
        error = super().error_for(response, body)
        status = response.status_code
        try:
            problem = json.loads(body)["error"]
            details = [d for d in problem.get("details", []) if isinstance(d, dict)]
        except (ValueError, KeyError, TypeError, AttributeError):
            return error
        if any(detail.get("reason") == "API_KEY_INVALID" for detail in details):
            return self.credentials_refused(status, upstream_message(body))
        if problem.get("status") == "FAILED_PRECONDITION":
            # A 400 for the account, not the request ("User location is not supported…",
            # billing): another provider may well serve the same request, this one none.
            return UpstreamError(
                error.message,
                provider=self.provider,
                upstream_status=status,
                scope=FailureScope.PROVIDER,
            )
        if (status == 429 or status >= 500) and error.retry_after is None:
            # google.rpc.RetryInfo holds a protobuf Duration such as "37s"; Gemini sends it
            # where other providers send Retry-After, on 429 and on 503 alike.
            delay = next((d["retryDelay"] for d in details if "retryDelay" in d), None)
            seconds = retry_after_seconds(str(delay).removesuffix("s")) if delay else None
            if seconds is not None:
                # Built anew, so that a 429's Retry-After header says it too.
                return type(error)(
                    error.message,
                    provider=self.provider,
                    upstream_status=status,
                    retry_after=seconds,
                )
        return error


@register
class GeminiAdapter(ProviderAdapter):
    kind = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com/v1beta"

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self.transport = _GeminiTransport(settings, self.base_url)
        secret = settings.secret()
        # In a header rather than ?key=, so the key stays out of URLs and their logs.
        self.headers = {"x-goog-api-key": secret} if secret else {}
        self.headers.update(settings.headers)

    def _url(self, upstream_model: str, method: str) -> str:
        model = quote(upstream_model.removeprefix("models/"), safe="")
        return f"{self.base_url}/models/{model}:{method}"

    def chat(self, request: ChatRequest, upstream_model: str) -> ChatCompletion:
        body = build_request(request, upstream_model)
        url = self._url(upstream_model, "generateContent")
        answer = self.transport.post(url, body, self.headers)
        try:
            return _completion(json.loads(answer), upstream_model, self.name)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(
                f"{self.name} sent an answer that is not a GenerateContentResponse",
                provider=self.name,
            ) from exc

    def stream(self, request: ChatRequest, upstream_model: str) -> ChunkStream:
        body = build_request(request, upstream_model)
        url = self._url(upstream_model, "streamGenerateContent") + "?alt=sse"
        response = self.transport.open_stream(url, body, self.headers)
        events = self.transport.events(response)
        # The first event is read here so that an error event, an empty stream or a failed
        # generation raises from stream() itself, while the Router can still fall back.
        try:
            first = next(events, None)
            if first is None:
                raise UpstreamError(f"{self.name} sent an empty stream", provider=self.name)
            for candidate in first.get("candidates") or []:
                _check_produced(candidate, any(_parts(candidate.get("content"))), self.name)
        except BaseException:
            response.close()
            raise
        chunks = _stream_chunks(first, events, upstream_model, request.n or 1, self.name)
        return ChunkStream(chunks, response.close)

    def close(self) -> None:
        self.transport.close()


# --------------------------------------------------------------------------- request


def build_request(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """The ``generateContent`` body of ``request`` for ``upstream_model``; what cannot be
    translated raises 400."""
    model = upstream_model.removeprefix("models/")
    system, contents = _contents(request.messages)
    body: dict[str, Any] = {"contents": contents}
    if request.tools:
        declarations = [_declaration(i, tool) for i, tool in enumerate(request.tools)]
        body["tools"] = [{"functionDeclarations": declarations}]
        if request.tool_choice is not None:
            body["toolConfig"] = {"functionCallingConfig": _calling_config(request.tool_choice)}
    config = _generation_config(request, model)
    response_format = request.response_format
    if response_format is not None and response_format.type != "text":
        calling = bool(request.tools) and request.tool_choice != "none"
        if calling and not model.startswith("gemini-3"):
            # Gemini 2.x refuses JSON output beside function calling: asked for in words.
            system.append({"text": _json_instruction(response_format)})
        else:
            config |= _json_config(response_format)
    if system:
        body["systemInstruction"] = {"parts": system}
    if config:
        body["generationConfig"] = config
    return body


def _contents(messages: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The system parts and the turns of ``messages``."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    called: dict[str, str] = {}  # tool_call id -> name: Gemini matches results by name
    previous_role = ""
    for position, message in enumerate(messages):
        where = f"messages[{position}]"
        if message.role in ("system", "developer"):
            system.extend(_content_parts(message, where))
        elif message.role == "tool":
            part = {"functionResponse": _function_response(message, called, where)}
            if previous_role == "tool":  # the results of parallel calls share one turn
                contents[-1]["parts"].append(part)
            else:
                contents.append({"role": "user", "parts": [part]})
        else:
            parts = _content_parts(message, where)
            for number, call in enumerate(message.tool_calls or []):
                called[call.id] = call.function.name
                parts.append(_function_call(call, number == 0, where))
            if parts:
                role = "model" if message.role == "assistant" else "user"
                contents.append({"role": role, "parts": parts})
        previous_role = message.role
    return system, contents


def _content_parts(message: Message, where: str) -> list[dict[str, Any]]:
    # Empty text parts are left out (Gemini refuses them), and with them empty messages.
    if isinstance(message.content, str):
        return [{"text": message.content}] if message.content else []
    parts: list[dict[str, Any]] = []
    for part in message.content or []:
        if isinstance(part, TextPart) and part.text:
            parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            parts.append(_image(part.image_url.url, where))
        elif not isinstance(part, TextPart):
            raise _invalid(f"{where}.content", f"'{part.type}' parts cannot be sent to Gemini")
    return parts


def _image(url: str, where: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        if not header.endswith(";base64") or not data:
            raise _invalid(f"{where}.content", "an image data URI must be base64-encoded")
        mime_type = header.removeprefix("data:").split(";")[0] or "image/jpeg"
        return {"inlineData": {"mimeType": mime_type, "data": data}}
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    return {"fileData": {"mimeType": _IMAGE_TYPES.get(suffix, "image/jpeg"), "fileUri": url}}


def _function_call(call: ToolCall, first: bool, where: str) -> dict[str, Any]:
    args = _json_object(call.function.arguments or "{}")
    if args is None:
        raise _invalid(f"{where}.tool_calls", f"the arguments of '{call.id}' are not an object")
    part: dict[str, Any] = {"functionCall": {"name": call.function.name, "args": args}}
    if first:  # Gemini wants the signature on the first call of a turn only
        part["thoughtSignature"] = _PLACEHOLDER_SIGNATURE
    return part


def _function_response(message: Message, called: dict[str, str], where: str) -> dict[str, Any]:
    name = called.get(message.tool_call_id or "")
    if name is None:
        problem = f"'{message.tool_call_id}' answers no earlier assistant tool call"
        raise _invalid(f"{where}.tool_call_id", problem)
    text = message.text()
    result = _json_object(text)
    # Gemini's response is an object: any other result is wrapped, as the text it was.
    return {"name": name, "response": {"content": text} if result is None else result}


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _declaration(index: int, tool: Tool) -> dict[str, Any]:
    function = tool.function
    declaration: dict[str, Any] = {"name": function.name}
    if function.description:
        declaration["description"] = function.description
    # Gemini refuses an OBJECT without properties: a function without any declares none.
    if function.parameters and function.parameters.get("properties"):
        where = f"tools[{index}].function.parameters"
        declaration["parameters"] = gemini_schema(function.parameters, where)
    return declaration


def _calling_config(choice: str | NamedToolChoice) -> dict[str, Any]:
    if isinstance(choice, NamedToolChoice):
        return {"mode": "ANY", "allowedFunctionNames": [choice.function.name]}
    return {"mode": _CHOICE_MODES[choice]}


def _generation_config(request: ChatRequest, model: str) -> dict[str, Any]:
    penalties = model.startswith("gemini-2.0")  # later models refuse them
    config: dict[str, Any] = {
        "temperature": request.temperature,
        "topP": request.top_p,
        "maxOutputTokens": request.output_limit,
        "stopSequences": [request.stop] if isinstance(request.stop, str) else request.stop,
        "candidateCount": request.n,
        "seed": request.seed,
        "presencePenalty": request.presence_penalty if penalties else None,
        "frequencyPenalty": request.frequency_penalty if penalties else None,
        "thinkingConfig": _thinking_config(request, model),
    }
    return {key: value for key, value in config.items() if value not in (None, [])}


def _thinking_config(request: ChatRequest, model: str) -> dict[str, Any] | None:
    # Not a declared field of ChatRequest: it arrives, unchecked, among the extra ones.
    effort = (request.model_extra or {}).get("reasoning_effort")
    if not isinstance(effort, str) or effort not in _THINKING_BUDGETS:
        return None
    if model.startswith("gemini-3"):
        return {"thinkingLevel": _THINKING_LEVELS[effort]}
    if model.startswith("gemini-2.5-pro"):  # cannot stop thinking: 128 is its least
        return {"thinkingBudget": max(_THINKING_BUDGETS[effort], 128)}
    if model.startswith("gemini-2.5"):
        return {"thinkingBudget": _THINKING_BUDGETS[effort]}
    return None


def _json_config(response_format: ResponseFormat) -> dict[str, Any]:
    config: dict[str, Any] = {"responseMimeType": "application/json"}
    schema = response_format.json_schema and response_format.json_schema.schema_
    # An object schema without properties asks for any JSON object: plain JSON mode.
    if schema and (schema.get("properties") or schema.get("type") != "object"):
        config["responseSchema"] = gemini_schema(schema, "response_format.json_schema")
    return config


def _json_instruction(response_format: ResponseFormat) -> str:
    schema = response_format.json_schema and response_format.json_schema.schema_
    text = (
        "Unless you call a function, reply with a single JSON object and nothing else: "
        "no other text, no code fence."
    )
    if schema:
        text += " The object must match this JSON Schema: " + json.dumps(schema, ensure_ascii=False)
    return text


def _invalid(param: str, problem: str) -> UpstreamUnsupportedError:
    return UpstreamUnsupportedError(f"{param}: {problem}", param=param)


# --------------------------------------------------------------------------- response


def _completion(payload: dict[str, Any], upstream_model: str, provider: str) -> ChatCompletion:
    candidates = payload.get("candidates") or []
    if candidates:
        choices = [_choice(n, candidate, provider) for n, candidate in enumerate(candidates)]
    elif _blocked(payload):
        choices = [{"message": {"content": ""}, "finish_reason": "content_filter"}]
    else:
        raise ValueError("neither candidates nor a block reason")
    usage = payload.get("usageMetadata")
    return ChatCompletion.model_validate(
        {
            "id": _completion_id(payload),
            "created": int(time.time()),
            "model": payload.get("modelVersion") or upstream_model,
            "choices": choices,
            "usage": _usage(usage) if usage else None,
        }
    )


def _choice(position: int, candidate: dict[str, Any], provider: str) -> dict[str, Any]:
    text, calls = _parts(candidate.get("content"))
    _check_produced(candidate, bool(text or calls), provider)
    finish = _FINISHES.get(candidate.get("finishReason", ""), "stop")
    return {
        "index": candidate.get("index", position),  # proto JSON leaves an index of 0 out
        "message": {
            "content": text or (None if calls else ""),
            "tool_calls": [_tool_call(call) for call in calls] or None,
        },
        "finish_reason": _with_calls(finish, bool(calls)),
    }


def _parts(content: dict[str, Any] | None) -> tuple[str, list[dict[str, Any]]]:
    """The text and the function calls of a candidate; thought summaries are left out."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (content or {}).get("parts", []):
        if "text" in part and not part.get("thought"):
            texts.append(part["text"])
        elif "functionCall" in part:
            calls.append(part["functionCall"])
    return "".join(texts), calls


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    # Gemini's calls have no id, and clients need one to answer each call.
    arguments = json.dumps(call.get("args") or {}, ensure_ascii=False)
    return {
        "id": "call_" + secrets.token_hex(12),
        "type": "function",
        "function": {"name": call["name"], "arguments": arguments},
    }


def _check_produced(candidate: dict[str, Any], produced: bool, provider: str) -> None:
    """Raise for a candidate that failed without producing anything: the dispatcher can
    then retry or fall back, where an empty answer would pass for a success."""
    reason = candidate.get("finishReason")
    if reason in _FAILED and not produced:
        message = f"{provider}'s generation failed ({reason}) without producing anything"
        raise UpstreamError(message, provider=provider)


def _with_calls(finish: str, has_calls: bool) -> str:
    return "tool_calls" if has_calls and finish == "stop" else finish


def _blocked(payload: dict[str, Any]) -> bool:
    return bool((payload.get("promptFeedback") or {}).get("blockReason"))


def _usage(meta: dict[str, Any]) -> dict[str, Any]:
    prompt = meta.get("promptTokenCount", 0) + meta.get("toolUsePromptTokenCount", 0)
    thoughts = meta.get("thoughtsTokenCount", 0)
    completion = meta.get("candidatesTokenCount", 0) + thoughts  # thinking is billed as output
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": meta.get("totalTokenCount", prompt + completion),
    }
    if meta.get("cachedContentTokenCount"):
        usage["prompt_tokens_details"] = {"cached_tokens": meta["cachedContentTokenCount"]}
    if thoughts:
        usage["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return usage


def _completion_id(payload: dict[str, Any]) -> str:
    return "chatcmpl-" + (payload.get("responseId") or secrets.token_hex(12))


def _stream_chunks(
    first: dict[str, Any],
    rest: Iterator[dict[str, Any]],
    upstream_model: str,
    choices: int,
    provider: str,
) -> Iterator[ChatCompletionChunk]:
    """OpenAI chunks for Gemini's events: role, deltas, a finish per choice, then usage."""
    head = {
        "id": _completion_id(first),
        "created": int(time.time()),
        "model": first.get("modelVersion") or upstream_model,
    }
    calls: dict[int, int] = {}  # per choice, the calls so far: the next call's index
    produced: set[int] = set()  # the choices that sent text or a call
    finishes: dict[int, str] = {}
    usage: dict[str, Any] | None = None

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> ChatCompletionChunk:
        choice = {"index": index, "delta": delta, "finish_reason": finish}
        return ChatCompletionChunk.model_validate({**head, "choices": [choice]})

    for index in range(choices):
        yield chunk(index, {"role": "assistant", "content": ""})
    for payload in itertools.chain([first], rest):
        usage = payload.get("usageMetadata") or usage  # cumulative: the last one counts
        if _blocked(payload):
            finishes.update(dict.fromkeys(range(choices), "content_filter"))
        for position, candidate in enumerate(payload.get("candidates") or []):
            index = candidate.get("index", position)
            text, found = _parts(candidate.get("content"))
            if text or found:
                produced.add(index)
            if text:
                yield chunk(index, {"content": text})
            for call in found:
                number = calls.get(index, 0)
                calls[index] = number + 1
                yield chunk(index, {"tool_calls": [{"index": number, **_tool_call(call)}]})
            if candidate.get("finishReason"):
                _check_produced(candidate, index in produced, provider)
                finishes[index] = _FINISHES.get(candidate["finishReason"], "stop")
    if not finishes:  # Gemini's last event always carries one: the stream was cut short
        raise UpstreamError(f"{provider}'s stream ended before it finished", provider=provider)
    for index in sorted(finishes.keys() | set(range(choices))):
        yield chunk(index, {}, _with_calls(finishes.get(index, "stop"), index in calls))
    if usage:
        yield ChatCompletionChunk.model_validate({**head, "usage": _usage(usage)})

"""A fake Gemini API (generativelanguage v1beta) on loopback: Gemini's wire format and
validation errors, deterministic answers, recorded requests and scripted faults
(``tests.upstreams.faults``) in Gemini's error shape."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, request

from .faults import Fault, FaultScript, padded, reset_mid_body, verbatim_answer

API_KEY = "AIza-test-fake-gemini-0123456789"

# --------------------------------------------------------------------------- wire format
# Fields of the request messages by JSON name, as Google's JSON parser knows them. A spec is
# a message name, a scalar kind, an Enum, [spec] for a repeated field or {"*": spec} a map.
STRUCT, VALUE, BYTES, INT64 = "google.protobuf.Struct", "google.protobuf.Value", "bytes", "int64"


class Enum:
    """A proto enum; Google's parser also takes the names in lower case."""

    def __init__(self, name: str, *values: str) -> None:
        self.name = name
        self.values = frozenset(values)


TYPE = Enum("Type", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL")
MODE = Enum("FunctionCallingConfig.Mode", "AUTO", "ANY", "NONE", "VALIDATED")
LEVEL = Enum(
    "ThinkingConfig.ThinkingLevel", "THINKING_LEVEL_UNSPECIFIED", "MINIMAL", "LOW", "MEDIUM", "HIGH"
)
SCHEMA_FIELDS: dict[str, Any] = {
    "type": TYPE,
    "format": str,
    "title": str,
    "description": str,
    "nullable": bool,
    "enum": [str],
    "properties": {"*": "Schema"},
    "required": [str],
    "propertyOrdering": [str],
    "items": "Schema",
    "anyOf": ["Schema"],
    "example": VALUE,
    "default": VALUE,
    "pattern": str,
    "minimum": float,
    "maximum": float,
    **dict.fromkeys(["minItems", "maxItems", "minLength", "maxLength"], INT64),
    **dict.fromkeys(["minProperties", "maxProperties"], INT64),
}
MESSAGES: dict[str, dict[str, Any]] = {
    "GenerateContentRequest": {
        "model": str,
        "contents": ["Content"],
        "systemInstruction": "Content",
        "tools": ["Tool"],
        "toolConfig": "ToolConfig",
        "safetySettings": ["SafetySetting"],
        "generationConfig": "GenerationConfig",
        "cachedContent": str,
    },
    "Content": {"parts": ["Part"], "role": str},
    "Part": {
        "text": str,
        "inlineData": "Blob",
        "fileData": "FileData",
        "functionCall": "FunctionCall",
        "functionResponse": "FunctionResponse",
        "executableCode": STRUCT,
        "codeExecutionResult": STRUCT,
        "thought": bool,
        "thoughtSignature": BYTES,
        "videoMetadata": STRUCT,
    },
    "Blob": {"mimeType": str, "data": BYTES},
    "FileData": {"mimeType": str, "fileUri": str},
    "FunctionCall": {"id": str, "name": str, "args": STRUCT},
    "FunctionResponse": {"id": str, "name": str, "response": STRUCT, "willContinue": bool},
    "Tool": {
        "functionDeclarations": ["FunctionDeclaration"],
        "googleSearch": STRUCT,
        "codeExecution": STRUCT,
        "urlContext": STRUCT,
    },
    "FunctionDeclaration": {
        "name": str,
        "description": str,
        "behavior": str,
        "parameters": "Schema",
        "parametersJsonSchema": VALUE,
        "response": "Schema",
        "responseJsonSchema": VALUE,
    },
    "Schema": SCHEMA_FIELDS,
    "ToolConfig": {"functionCallingConfig": "FunctionCallingConfig"},
    "FunctionCallingConfig": {"mode": MODE, "allowedFunctionNames": [str]},
    "SafetySetting": {"category": str, "threshold": str},
    "GenerationConfig": {
        "stopSequences": [str],
        "responseMimeType": str,
        "responseSchema": "Schema",
        "responseJsonSchema": VALUE,
        "responseModalities": [str],
        "candidateCount": int,
        "maxOutputTokens": int,
        "temperature": float,
        "topP": float,
        "topK": int,
        "seed": int,
        "presencePenalty": float,
        "frequencyPenalty": float,
        "responseLogprobs": bool,
        "logprobs": int,
        "thinkingConfig": {"includeThoughts": bool, "thinkingBudget": int, "thinkingLevel": LEVEL},
    },
}
# The members of Part's oneof "data".
PART_DATA = (
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
)
SCALAR_NAMES = {str: "TYPE_STRING", bool: "TYPE_BOOL", int: "TYPE_INT32", float: "TYPE_FLOAT"}
STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
MESSAGES_BY_STATUS = {
    401: "Request had invalid authentication credentials. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential.",
    403: "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API key or other form of API consumer identity to call this API.",
    429: "You exceeded your current quota, please check your plan and billing details.",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}
FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
THINKING_MODELS = ("gemini-2.5", "gemini-3")
# thinkingBudget per model, most specific name first: least, most, and whether 0 turns
# thinking off; -1 (the model decides) is always taken.
BUDGETS = {
    "gemini-2.5-pro": (128, 32768, False),
    "gemini-2.5-flash-lite": (512, 24576, True),
    "gemini-2.5-flash": (1, 24576, True),
}
THOUGHT_TOKENS = 16
IMAGE_TOKENS = 258  # what Gemini counts for one image


def parse_errors(body: Any) -> list[str]:
    """What Google's JSON parser says about ``body``: unknown names, wrong types, …"""
    errors: list[str] = []
    if not isinstance(body, dict):
        return ["Invalid JSON payload received. Expected an object."]
    _parse_message(body, "GenerateContentRequest", "", errors)
    return errors


def _parse_message(value: dict[str, Any], spec: Any, path: str, errors: list[str]) -> None:
    fields = MESSAGES[spec] if isinstance(spec, str) else spec
    data_set = None
    for key, item in value.items():
        json_name = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)  # both spellings
        at = f" at '{path}'" if path else ""
        if json_name not in fields:
            errors.append(
                f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.'
            )
            continue
        field = fields[json_name]
        if isinstance(item, list) and not isinstance(field, list):
            errors.append(
                f'Invalid JSON payload received. Unknown name "{key}"{at}: '
                "Proto field is not repeating, cannot start list."
            )
            continue
        if spec == "Part" and json_name in PART_DATA:
            if data_set is not None:
                errors.append(
                    "Invalid JSON payload received. Oneof field 'data' is already set. "
                    f"Cannot set '{json_name}'"
                )
            data_set = json_name
        _parse_value(item, field, _join(path, _snake(json_name)), errors)


def _parse_value(value: Any, spec: Any, path: str, errors: list[str]) -> None:
    def invalid(type_name: str) -> None:
        errors.append(f"Invalid value at '{path}' ({type_name}), {json.dumps(value)}")

    if isinstance(spec, list):
        if not isinstance(value, list):
            return invalid(_type_name(spec[0]))
        for index, item in enumerate(value):
            _parse_value(item, spec[0], f"{path}[{index}]", errors)
    elif isinstance(spec, dict) and "*" in spec:
        if not isinstance(value, dict):
            return invalid("map")
        for index, item in enumerate(value.values()):
            _parse_value(item, spec["*"], f"{path}[{index}].value", errors)
    elif isinstance(spec, dict) or spec in MESSAGES:
        if not isinstance(value, dict):
            return invalid(_type_name(spec))
        _parse_message(value, spec, path, errors)
    elif isinstance(spec, Enum):
        if not isinstance(value, str) or value.upper() not in spec.values:
            invalid(spec.name)
    elif spec == STRUCT:
        if not isinstance(value, dict):
            invalid(f"type.googleapis.com/{STRUCT}")
    elif spec == BYTES:
        try:
            base64.b64decode(str(value).replace("-", "+").replace("_", "/"), validate=True)
        except binascii.Error:
            errors.append(
                f"Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed for \"{value}\""
            )
    elif spec == INT64:
        if isinstance(value, bool) or not (isinstance(value, int) or str(value).isdigit()):
            invalid("TYPE_INT64")
    elif spec in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            invalid(SCALAR_NAMES[spec])
    elif spec in (str, bool) and not isinstance(value, spec):
        invalid(SCALAR_NAMES[spec])


def _type_name(spec: Any) -> str:
    if isinstance(spec, str) and spec in MESSAGES:
        return f"type.googleapis.com/google.ai.generativelanguage.v1beta.{spec}"
    return SCALAR_NAMES[spec] if spec in (str, bool, int, float) else "message"


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# --------------------------------------------------------------------------- semantics


def request_problem(body: dict[str, Any], model: str) -> str | None:
    """Gemini's complaint about a well-formed request, or None when it would answer."""
    contents = body.get("contents") or []
    if not contents:
        return "* GenerateContentRequest.contents: contents is not specified\n"
    for content in contents:
        if content.get("role", "user") not in ("user", "model"):
            return "Please use a valid role: user, model."
    turn_problem = _turn_problem(contents, model)
    if turn_problem:
        return turn_problem
    problems: list[str] = []
    for i, content in enumerate(contents):
        if not content.get("parts"):
            problems.append(f"contents[{i}].parts: contents.parts must not be empty.")
        for j, part in enumerate(content.get("parts") or []):
            # An empty string is proto3's default, so "text": "" leaves the oneof unset.
            if not any(part.get(key) not in (None, "") for key in PART_DATA):
                problems.append(
                    f"contents[{i}].parts[{j}].data: "
                    "required oneof field 'data' must have one initialized field"
                )
    declared = []
    for t, tool in enumerate(body.get("tools") or []):
        for d, declaration in enumerate(tool.get("functionDeclarations") or []):
            where = f"tools[{t}].function_declarations[{d}]"
            declared.append(declaration.get("name", ""))
            if not FUNCTION_NAME.fullmatch(declaration.get("name", "")):
                problems.append(
                    f"{where}.name: Invalid function name. Must start with a letter or an "
                    "underscore. Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.), "
                    "colons (:) or dashes (-), with a maximum length of 64."
                )
            if "parameters" in declaration:
                problems += _schema_problems(declaration["parameters"], f"{where}.parameters")
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    allowed = calling.get("allowedFunctionNames") or []
    where = "tool_config.function_calling_config.allowed_function_names"
    if allowed and str(calling.get("mode", "")).upper() != "ANY":
        problems.append(f"{where}: may only be set when mode is ANY.")
    problems += [
        f"{where}[{i}]: function {n} is not declared."
        for i, n in enumerate(allowed)
        if n not in declared
    ]
    config = body.get("generationConfig") or {}
    if "responseSchema" in config:
        if config.get("responseMimeType") not in ("application/json", "text/x.enum"):
            problems.append(
                "generation_config.response_mime_type: must be application/json or "
                "text/x.enum when response_schema is set."
            )
        problems += _schema_problems(config["responseSchema"], "generation_config.response_schema")
    if not 1 <= config.get("candidateCount", 1) <= 8:
        problems.append("generation_config.candidate_count: must be in the range [1, 8].")
    if len(config.get("stopSequences") or []) > 5:
        problems.append("generation_config.stop_sequences: at most 5 stop sequences are allowed.")
    if problems:
        return "".join(f"* GenerateContentRequest.{problem}\n" for problem in problems)
    return _model_problem(body, model)


def _model_problem(body: dict[str, Any], model: str) -> str | None:
    """What ``model`` refuses that other Gemini models take."""
    config = body.get("generationConfig") or {}
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    declares = any(tool.get("functionDeclarations") for tool in body.get("tools") or [])
    if (
        declares
        and str(calling.get("mode", "AUTO")).upper() in ("AUTO", "ANY")
        and config.get("responseMimeType") == "application/json"
        and not model.startswith("gemini-3")
    ):
        return "Function calling with a response mime type: 'application/json' is unsupported"
    penalized = config.get("presencePenalty") or config.get("frequencyPenalty")
    if penalized and not model.startswith("gemini-2.0"):
        return f"Penalty is not enabled for models/{model}"
    return _thinking_problem(config.get("thinkingConfig") or {}, model)


def _thinking_problem(thinking: dict[str, Any], model: str) -> str | None:
    level = str(thinking.get("thinkingLevel", "")).upper()
    budget = thinking.get("thinkingBudget")
    if level and budget is not None:
        return "You can only set one of thinking budget and thinking level."
    if level and not model.startswith("gemini-3"):
        return "Thinking level is not supported for this model."
    if level and model.startswith("gemini-3-pro") and level not in ("LOW", "HIGH"):
        return f"Thinking level {level} is not supported for this model."
    if budget is None or model.startswith("gemini-3"):
        return None
    if not model.startswith(THINKING_MODELS):
        return f"Thinking is not enabled for models/{model}"
    ranges = (v for name, v in BUDGETS.items() if model.startswith(name))
    least, most, can_stop = next(ranges, (1, 32768, True))
    if budget == 0 and not can_stop:
        return "Budget 0 is invalid. This model only works in thinking mode."
    if budget not in (-1, 0) and not least <= budget <= most:
        return f"The thinking budget ({budget}) is invalid."
    return None


def _turn_problem(contents: list[dict[str, Any]], model: str) -> str | None:
    """The order Gemini requires between function calls and function responses."""
    for i, content in enumerate(contents):
        parts = content.get("parts") or []
        calls = [p["functionCall"] for p in parts if "functionCall" in p]
        results = [p["functionResponse"] for p in parts if "functionResponse" in p]
        before = contents[i - 1] if i else {}
        before_calls = [p["functionCall"] for p in before.get("parts", []) if "functionCall" in p]
        if calls and (not before or before.get("role", "user") != "user"):
            return (
                "Please ensure that function call turn comes immediately after a user turn "
                "or after a function response turn."
            )
        if calls and model.startswith("gemini-3"):
            first = next(n for n, p in enumerate(parts) if "functionCall" in p)
            if "thoughtSignature" not in parts[first]:
                return (
                    "Function call is missing a thought_signature in functionCall parts. This "
                    "is required for tools to work correctly, and missing thought_signature "
                    "may lead to degraded model performance. Additional data, function call "
                    f"`default_api:{calls[0].get('name')}` , position {first + 1}. Please refer "
                    "to https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
                )
        if results and (not before_calls or before.get("role") != "model"):
            return (
                "Please ensure that function response turn comes immediately after a function "
                "call turn."
            )
        if before_calls and len(results) != len(before_calls):
            return (
                "Please ensure that the number of function response parts is equal to the "
                "number of function call parts of the function call turn."
            )
        names = {call.get("name") for call in before_calls}
        if any(result.get("name") not in names for result in results):
            return (
                "Please ensure that the name of each function response part matches the name "
                "of a function call part of the function call turn."
            )
    return None


def _schema_problems(schema: dict[str, Any], path: str) -> list[str]:
    """What Gemini checks in a Schema beyond its field names; map keys name the entries."""
    problems: list[str] = []
    kind = str(schema.get("type", "")).upper()
    properties = schema.get("properties")
    if not kind and "anyOf" not in schema:
        problems.append(
            f"{path}.type: must be specified when not using one_of, any_of or all_of fields"
        )
    if kind == "OBJECT" and not properties:
        problems.append(f"{path}.properties: should be non-empty for OBJECT type")
    if properties and kind != "OBJECT":
        problems.append(f"{path}.properties: only allowed for OBJECT type")
    if kind == "ARRAY" and "items" not in schema:
        problems.append(f"{path}.items: missing field.")
    if "format" in schema and kind not in ("NUMBER", "INTEGER", "STRING"):
        problems.append(
            f"{path}.format: format is only supported for NUMBER, INTEGER and STRING type"
        )
    for index, name in enumerate(schema.get("required") or []):
        if name not in (properties or {}):
            problems.append(f"{path}.required[{index}]: property is not defined")
    for name, value in (properties or {}).items():
        problems += _schema_problems(value, f"{path}.properties[{name}]")
    if "items" in schema:
        problems += _schema_problems(schema["items"], f"{path}.items")
    for index, variant in enumerate(schema.get("anyOf") or []):
        problems += _schema_problems(variant, f"{path}.any_of[{index}]")
    return problems


# --------------------------------------------------------------------------- answers


def answer(
    body: dict[str, Any], model: str, response_id: str, ending: tuple[str, str] | None = None
) -> dict[str, Any]:
    """The deterministic GenerateContentResponse to a valid request; ``ending``, a text and
    a finish reason, replaces what the model would say."""
    config = body.get("generationConfig") or {}
    last = body["contents"][-1]["parts"]
    results = [part["functionResponse"] for part in last if "functionResponse" in part]
    said, turns = _prompt(body["contents"])
    calls = [] if ending else _calls(body, said, turns)
    if calls:
        text = ""
    elif results:
        text = "; ".join(f"{r['name']} returned {json.dumps(r['response'])}" for r in results)
    elif config.get("responseMimeType") == "application/json":
        schema = config.get("responseSchema")
        text = json.dumps(placeholder(schema) if schema else {"echo": said})
    else:
        text = said
    text, finish = ending or _limited(text, config)
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    for number, call in enumerate(calls):
        part: dict[str, Any] = {"functionCall": call}
        if number == 0 and model.startswith("gemini-3"):
            part["thoughtSignature"] = base64.b64encode(b"fake signature").decode()
        parts.append(part)
    count = config.get("candidateCount", 1)
    content = {"content": {"parts": parts, "role": "model"}} if parts else {}  # none if empty
    candidates = [{**content, "finishReason": finish, "index": index} for index in range(count)]
    candidates[0].pop("index")  # proto JSON leaves out fields at their default, 0 here
    completion = count * (_words(text) + sum(len(json.dumps(c["args"]).split()) + 1 for c in calls))
    usage = {"promptTokenCount": _prompt_tokens(body), "candidatesTokenCount": completion}
    if model.startswith(THINKING_MODELS):
        usage["thoughtsTokenCount"] = THOUGHT_TOKENS
    usage["totalTokenCount"] = sum(usage.values())
    version = model if re.search(r"-\d{3}$", model) else f"{model}-001"
    return {
        "candidates": candidates,
        "usageMetadata": usage,
        "modelVersion": version,
        "responseId": response_id,
    }


def stream_events(response: dict[str, Any]) -> list[dict[str, Any]]:
    """``response`` as Gemini streams it: text three words an event, calls in one event,
    the finish reason and the full usage on the last, the prompt count on every one."""
    candidates = response["candidates"]
    parts = candidates[0].get("content", {}).get("parts", [])
    text = "".join(part.get("text", "") for part in parts)
    words = re.findall(r"\S+\s*", text)
    pieces: list[list[dict[str, Any]]] = [
        [{"text": "".join(words[i : i + 3])}] for i in range(0, len(words), 3)
    ]
    calls = [part for part in parts if "functionCall" in part]
    if calls:
        pieces.append(calls)
    pieces = pieces or [[]]
    usage = response["usageMetadata"]
    prompt = usage["promptTokenCount"]
    head = {key: response[key] for key in ("modelVersion", "responseId")}
    events = []
    for number, piece in enumerate(pieces):
        last = number == len(pieces) - 1
        event_candidates = []
        for candidate in candidates:
            event_candidate = {key: value for key, value in candidate.items() if key != "content"}
            if piece:
                event_candidate["content"] = {"parts": piece, "role": "model"}
            if not last:
                event_candidate.pop("finishReason")
            event_candidates.append(event_candidate)
        partial = {"promptTokenCount": prompt, "totalTokenCount": prompt}
        events.append(
            {"candidates": event_candidates, "usageMetadata": usage if last else partial, **head}
        )
    return events


def placeholder(schema: dict[str, Any]) -> Any:
    """A value of ``schema``: first enum value or variant, "sample", 1, 1.5, true."""
    kind = str(schema.get("type", "")).upper()
    if schema.get("anyOf"):
        return placeholder(schema["anyOf"][0])
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "OBJECT":
        return {name: placeholder(value) for name, value in schema.get("properties", {}).items()}
    if kind == "ARRAY":
        return [placeholder(schema.get("items", {}))]
    return {"STRING": "sample", "INTEGER": 1, "NUMBER": 1.5, "BOOLEAN": True}.get(kind)


def _prompt(contents: list[dict[str, Any]]) -> tuple[str, int]:
    """The text of the last user turn with text, and the model's function call turns since."""
    turns = 0
    for content in reversed(contents):
        parts = content.get("parts") or []
        texts = [part["text"] for part in parts if "text" in part]
        if content.get("role", "user") == "user" and texts:
            return " ".join(texts), turns
        if content.get("role") == "model" and any("functionCall" in part for part in parts):
            turns += 1
    return "", turns


def _calls(body: dict[str, Any], said: str, turns: int) -> list[dict[str, Any]]:
    """This turn's calls: the functions stage ``turns`` of ``said`` names (see FakeGemini)."""
    declared = [
        d for tool in body.get("tools") or [] for d in tool.get("functionDeclarations") or []
    ]
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = str(calling.get("mode", "AUTO")).upper()
    if mode == "NONE" or not declared:
        return []
    if mode == "ANY":
        allowed = calling.get("allowedFunctionNames") or [d["name"] for d in declared]
        declared = [d for d in declared if d["name"] in allowed]
    stages = said.split(" then ")
    stage = stages[turns] if turns < len(stages) else ""
    named = sorted(
        (d for d in declared if d["name"] in stage), key=lambda d: stage.index(d["name"])
    )
    if mode == "ANY" and turns == 0:
        named = named or declared[:1]
    return [
        {"name": d["name"], "args": placeholder(d.get("parameters") or {}) or {}} for d in named
    ]


def _limited(text: str, config: dict[str, Any]) -> tuple[str, str]:
    stops = [text.index(stop) for stop in config.get("stopSequences") or [] if stop in text]
    if stops:
        text = text[: min(stops)]
    words = text.split(" ")
    limit = config.get("maxOutputTokens")
    if limit is not None and len(words) > limit:
        return " ".join(words[:limit]), "MAX_TOKENS"
    return text, "STOP"


def _prompt_tokens(body: dict[str, Any]) -> int:
    contents = [*body["contents"], body.get("systemInstruction") or {"parts": []}]
    parts = [part for content in contents for part in content["parts"]]
    media = sum(1 for part in parts if "inlineData" in part or "fileData" in part)
    return sum(_words(part.get("text", "")) for part in parts) + IMAGE_TOKENS * media


def _words(text: str) -> int:
    return len(text.split())


# --------------------------------------------------------------------------- server


@dataclass
class Received:
    """One request as the fake received it."""

    model: str
    method: str
    body: Any
    headers: dict[str, str]
    query: dict[str, str]


def fault_body(fault: Fault) -> dict[str, Any]:
    """The error a fault with a status stands for, in Gemini's shape; ``retry_after``
    becomes the google.rpc.RetryInfo delay Gemini sends instead of a header."""
    code = fault.status or 500
    details = []
    if fault.retry_after is not None:
        retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo"}
        details.append({**retry, "retryDelay": f"{fault.retry_after:g}s"})
    message = fault.message or MESSAGES_BY_STATUS.get(code, "Error")
    return error_body(code, message, details, fault.error_type)


class FakeGemini:
    """The fake's state and its WSGI ``app``; serve it with ``LoopbackServer(fake.app)``.

    Answers: the last user text echoed (cut by ``stopSequences`` and ``maxOutputTokens``,
    a word a token); calls of the declared functions the user text names, in the order
    named (under mode ANY only the allowed ones, and the first allowed if none is named on
    the first turn); after function results, ``"<name> returned <response>"`` for each
    response part of the last turn, joined by ``"; "``. Calls come in stages: the last user
    text is split on " then ", and while the model has made fewer function call turns since
    it (k) than there are stages, it calls, in one turn, every function stage k names; a
    stage naming none is answered with text. A text without " then " is one stage. With
    ``responseMimeType``
    ``application/json`` a JSON value (a placeholder of ``responseSchema``). Streams send
    the text three words an event, the calls in one event, the finish reason and the full
    usage on the last. Models ``gemini-2.5*`` and ``gemini-3*`` report thinking tokens;
    ``gemini-3*`` signs its calls and, as the real one, refuses replayed calls unsigned.

    Refused by model as Gemini does: JSON output beside function calling before
    ``gemini-3``, non-zero penalties after ``gemini-2.0``, ``thinkingLevel`` before
    ``gemini-3`` (Gemini 3 Pro: "low" and "high" only), a ``thinkingBudget`` outside the
    model's range.
    """

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.app = Flask(__name__)
        route = "/v1beta/models/<path:target>"
        self.app.add_url_rule(route, view_func=self._handle, methods=["POST"])
        self._ids = itertools.count(1)
        self.script = FaultScript()
        self.reset()

    def reset(self) -> None:
        self.script.clear()
        self.received: list[Received] = []
        self.replies: deque[list[dict[str, Any]]] = deque()
        self.endings: deque[tuple[str, str]] = deque()
        self.abandoned = threading.Event()  # set when a client leaves a stream early

    @property
    def last(self) -> Received:
        return self.received[-1]

    def reply_next(self, *responses: dict[str, Any]) -> None:
        """Answer the next valid request with these GenerateContentResponses: the one of a
        ``generateContent``, or the events of a stream."""
        self.replies.append(list(responses))

    def finish_next(self, reason: str, text: str = "") -> None:
        """End the next answer with ``finishReason`` ``reason`` and ``text`` instead of what
        it would say; without text the candidate has no content, as Gemini sends it."""
        self.endings.append((text, reason))

    def _handle(self, target: str) -> Response:
        model, _, method = target.rpartition(":")
        body = request.get_json(silent=True, force=True)
        received = Received(model, method, body, dict(request.headers), request.args.to_dict())
        self.received.append(received)
        fault = self.script.take(model)
        fault.pause()
        if method not in ("generateContent", "streamGenerateContent"):
            return error(404, f"Method {method} is not found.")
        key = request.headers.get("x-goog-api-key") or request.args.get("key")
        if not key:
            return error(403, MESSAGES_BY_STATUS[403])
        if key != self.api_key:
            reason = {"@type": "type.googleapis.com/google.rpc.ErrorInfo"}
            details = [{**reason, "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]
            return error(400, "API key not valid. Please pass a valid API key.", details)
        if not re.fullmatch(r"gemini-[\w.-]+", model):
            return error(
                404,
                f"models/{model} is not found for API version v1beta, or is not supported for "
                f"{method}. Call ListModels to see the list of available models and their "
                "supported methods.",
            )
        if body is None:
            return error(400, "Invalid JSON payload received. Unexpected token.")
        problem = "\n".join(parse_errors(body)) or request_problem(body, model)
        if problem:
            return error(400, problem)
        if fault.status and fault.error_event_after is None:
            return _json(fault_body(fault), fault.status)
        verbatim = verbatim_answer(fault, streamed=method != "generateContent")
        if verbatim is not None:
            return verbatim
        scripted = self.replies.popleft() if self.replies else None
        ending = self.endings.popleft() if self.endings else None
        reply = answer(body, model, f"fake-response-{next(self._ids)}", ending)
        if method == "generateContent":
            if scripted is not None:
                (reply,) = scripted
            if fault.no_usage:
                reply.pop("usageMetadata", None)
            text = json.dumps(padded(reply, fault), indent=2)
            if fault.reset_mid_body:
                return reset_mid_body(text, "application/json", request.environ)
            return Response(text, mimetype="application/json")
        events = [] if fault.empty_stream else scripted or stream_events(reply)
        if fault.no_usage:
            events = [{k: v for k, v in e.items() if k != "usageMetadata"} for e in events]
        if events:
            events[0] = padded(events[0], fault)
        if request.args.get("alt") != "sse":  # without alt=sse Gemini streams one JSON array
            return Response(json.dumps(events), mimetype="application/json")
        sse = self._sse(events, fault, request.environ.get("werkzeug.socket"))
        return Response(sse, mimetype="text/event-stream")

    def _sse(
        self, events: list[dict[str, Any]], fault: Fault, connection: socket.socket | None
    ) -> Iterator[bytes]:
        finished = False
        try:
            for number, event in enumerate(events):
                if number == fault.error_event_after:
                    yield _event(fault_body(fault))
                    break
                if number == fault.drop_after:
                    if connection is not None:
                        connection.shutdown(socket.SHUT_RDWR)
                    break
                if number == fault.end_after:
                    break
                if number == fault.malformed_after:
                    yield b'data: {"candidates": [{"content": \r\n\r\n'
                yield _event(event)
                time.sleep(fault.chunk_pause)
            finished = True
        finally:
            if not finished:
                self.abandoned.set()


def error_body(
    code: int, message: str, details: list[dict[str, Any]] | None = None, status: str | None = None
) -> dict[str, Any]:
    """Gemini's error shape: ``{"error": {"code", "message", "status"[, "details"]}}``."""
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": status or STATUSES.get(code, "UNKNOWN"),
    }
    if details:
        body["details"] = details
    return {"error": body}


def error(code: int, message: str, details: list[dict[str, Any]] | None = None) -> Response:
    return _json(error_body(code, message, details), code)


def _json(payload: Any, code: int = 200) -> Response:
    return Response(json.dumps(payload, indent=2), status=code, mimetype="application/json")


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\r\n\r\n"

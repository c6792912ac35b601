"""A fake OpenAI Chat Completions API that speaks the real wire format.

It checks what OpenAI checks (bearer key, known fields, types and ranges, no
``max_tokens`` for reasoning models, every assistant tool call answered by a tool message
with its id before the next message, no tool message answering anything else), answers
deterministically, streams word by word, and obeys a per-request script of faults for
tests (``tests.upstreams.faults``).

Answers: "You said: <last message text>"; after tool results, "The tool said: r1; r2"
(every tool message since the last assistant turn, in order). Tools are called in
stages: the last user message is split on " then ", and while the assistant has made
fewer tool-calling turns since that message (k) than there are stages, it calls, in one
turn, every tool whose name stage k contains (in the order of ``tools``); a stage naming
none is answered with text. A message without " then " is one stage: the tools it names
are called once, then the results are answered. On the first turn a named
``tool_choice`` calls that tool and ``required`` the first tool; on later turns they
follow the stages (a named choice only ever calls its tool); ``none`` never calls and
``parallel_tool_calls: false`` calls one tool at most. Arguments hold "42" for each
required parameter; ids are ``call_`` and 20 random hex digits.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request

from .faults import Fault, FaultScript, padded, reset_mid_body, verbatim_answer
from .loopback import LoopbackServer
from .tool_stages import tools_to_call

__all__ = ["FakeOpenAI", "Fault", "serve_fake_openai"]

KNOWN_FIELDS = {
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "n", "stop", "tools", "tool_choice", "parallel_tool_calls",
    "response_format", "seed", "user", "presence_penalty", "frequency_penalty", "logit_bias",
    "logprobs", "top_logprobs", "metadata", "store", "modalities", "audio", "prediction",
    "reasoning_effort", "service_tier", "web_search_options", "verbosity", "prompt_cache_key",
    "safety_identifier",
}  # fmt: skip
# Models that refuse the deprecated max_tokens (OpenAI's reasoning models).
MAX_COMPLETION_TOKENS_ONLY = ("o1", "o3", "o4", "gpt-5")


@dataclass
class FakeOpenAI:
    api_key: str = "sk-upstream-test-0123456789abcdef"
    extra_fields: set[str] = field(default_factory=set)
    script: FaultScript = field(default_factory=FaultScript)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    answered: int = 0
    #: how each stream ended on the server side: "completed" or "aborted" (client left)
    stream_endings: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Flask:
        app = Flask("fake-openai")
        app.add_url_rule("/v1/chat/completions", view_func=self._chat, methods=["POST"])
        return app

    def reset(self) -> None:
        self.script.clear()
        self.requests.clear()
        self.headers.clear()
        self.stream_endings.clear()
        self.answered = 0

    # ------------------------------------------------------------------ handler

    def _chat(self) -> Response:
        body = request.get_json(force=True, silent=True)
        model = body.get("model") if isinstance(body, dict) else None
        fault = self.script.take(model)
        with self._lock:
            self.answered += 1
        fault.pause()
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return _error(
                401,
                f"Incorrect API key provided: {given}. You can find your API key in your account.",
                "invalid_request_error",
                "invalid_api_key",
            )
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if fault.status and fault.error_event_after is None:
            kind = fault.error_type or _ERROR_TYPES.get(fault.status, "server_error")
            message = fault.message or f"scripted failure {fault.status}"
            return _error(fault.status, message, kind, kind, fault.retry_after_header())
        problem = self._invalid(body)
        if problem:
            return _error(400, problem, "invalid_request_error", None)
        streamed = bool(body.get("stream"))
        verbatim = verbatim_answer(fault, streamed)
        if verbatim is not None:
            return verbatim
        answer = _Answer.for_request(body)
        if streamed:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = (
                iter(["data: [DONE]\n\n"])
                if fault.empty_stream
                else answer.events(include_usage and not fault.no_usage, fault)
            )
            return Response(self._watched(events), mimetype="text/event-stream")
        completion = json.dumps(padded(answer.completion(not fault.no_usage), fault))
        if fault.reset_mid_body:
            return reset_mid_body(completion, "application/json", request.environ)
        return Response(completion, mimetype="application/json")

    def _watched(self, events: Iterator[str]) -> Iterator[str]:
        """``events``, recording whether the client stayed to the end."""
        completed = False
        try:
            yield from events
            completed = True
        finally:
            self.stream_endings.append("completed" if completed else "aborted")

    def _invalid(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "The request body must be a JSON object."
        unknown = sorted(set(body) - KNOWN_FIELDS - self.extra_fields)
        if unknown:
            return f"Unrecognized request argument supplied: {unknown[0]}"
        if not isinstance(body.get("model"), str):
            return "you must provide a model parameter"
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return "'messages' must be a non-empty array"
        temperature = body.get("temperature", 1)
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            return f"{temperature} is greater than the maximum of 2 - 'temperature'"
        if "stream_options" in body and not body.get("stream"):
            return "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        if "max_tokens" in body and body["model"].startswith(MAX_COMPLETION_TOKENS_ONLY):
            return (
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead."
            )
        return _tool_order_problem(body["messages"])


def _tool_order_problem(messages: list[Any]) -> str | None:
    """OpenAI's complaint about the order of tool calls and tool messages, if any."""
    pending: list[str] = []  # ids of the last assistant's calls still unanswered
    answerable = False  # whether the last message before the tool messages called tools
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not answerable:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'."
                )
            if call_id not in pending:
                return (
                    f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                    "'tool_calls' of previous message."
                )
            pending.remove(call_id)
            continue
        if pending:
            return _unanswered(pending)
        calls = message.get("tool_calls") if role == "assistant" else None
        pending = [call.get("id") for call in calls or []]
        answerable = bool(pending)
    return _unanswered(pending) if pending else None


def _unanswered(call_ids: list[str]) -> str:
    return (
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        + ", ".join(call_ids)
    )


@dataclass
class _Answer:
    model: str
    words: list[str]
    tool_calls: list[dict[str, Any]]
    prompt_tokens: int

    @classmethod
    def for_request(cls, body: dict[str, Any]) -> _Answer:
        messages = body["messages"]
        last = messages[-1]
        prompt_tokens = sum(len(_text(m).split()) + 4 for m in messages)
        calls = [
            {
                "id": f"call_{uuid.uuid4().hex[:20]}",
                "type": "function",
                "function": {"name": t["name"], "arguments": json.dumps(_arguments(t))},
            }
            for t in _tools_to_call(body)
        ]
        if last.get("role") == "tool":
            results = list(itertools.takewhile(lambda m: m.get("role") == "tool", messages[::-1]))
            text = "The tool said: " + "; ".join(_text(m) for m in reversed(results))
        else:
            text = "You said: " + _text(last)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        words = [] if calls else _split(text)
        if limit:
            words = words[:limit]
        return cls(body["model"], words, calls, prompt_tokens)

    def usage(self) -> dict[str, int]:
        completion = len(self.words) + sum(
            len(c["function"]["arguments"]) // 4 + 1 for c in self.tool_calls
        )
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"

    def completion(self, with_usage: bool) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if self.tool_calls else "".join(self.words),
            "refusal": None,
        }
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        body: dict[str, Any] = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
        if with_usage:
            body["usage"] = self.usage()
        return body

    def events(self, include_usage: bool, fault: Fault) -> Iterator[str]:
        ident, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            payload = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "system_fingerprint": "fp_fake",
                "choices": choices,
                **extra,
            }
            if include_usage:
                payload.setdefault("usage", None)
            return "data: " + json.dumps(payload) + "\n\n"

        def delta(d: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            return event([choice], **extra)

        padding = {"padding": "x" * fault.padding} if fault.padding else {}
        yield delta({"role": "assistant", "content": "", "refusal": None}, **padding)
        for index, call in enumerate(self.tool_calls):
            arguments = call["function"]["arguments"]
            yield delta(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
            for start in range(0, len(arguments), 5):
                yield delta(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "function": {"arguments": arguments[start : start + 5]},
                            }
                        ]
                    }
                )
        for sent, word in enumerate(self.words):
            if sent == fault.error_event_after:
                message = fault.message or "The server had an error while processing your request."
                error = {"message": message, "type": fault.error_type or "server_error"}
                event_data = json.dumps({"error": {**error, "param": None, "code": None}})
                yield f"data: {event_data}\n\n"
                return
            if sent == fault.drop_after:
                raise ConnectionAbortedError("scripted connection drop")
            if sent == fault.end_after:
                return
            if sent == fault.malformed_after:
                yield 'data: {"id": "chatcmpl-broken", "choices": [{"delta": \n\n'
            if fault.chunk_pause:
                time.sleep(fault.chunk_pause)
            yield delta({"content": word})
        yield delta({}, self.finish_reason)
        if include_usage:
            yield event([], usage=self.usage())
        yield "data: [DONE]\n\n"


def _tools_to_call(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tools this turn calls: see the module docstring for the stages."""
    return tools_to_call(body, _text, ("required",))


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content or ""


def _split(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]] if words else []


def _arguments(tool: dict[str, Any]) -> dict[str, Any]:
    schema = tool.get("parameters") or {}
    return {name: "42" for name in schema.get("required", [])}


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def _error(
    status: int, message: str, kind: str, code: str | None, headers: dict[str, str] | None = None
) -> Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)


def serve_fake_openai(**kwargs: Any) -> tuple[FakeOpenAI, LoopbackServer]:
    fake = FakeOpenAI(**kwargs)
    return fake, LoopbackServer(fake.app())

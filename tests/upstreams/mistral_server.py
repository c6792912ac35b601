"""A fake Mistral chat API (``POST /v1/chat/completions``) that is as strict as Mistral.

It refuses, in Mistral's error shapes, any field Mistral's schema lacks (422, so OpenAI's
``seed`` and ``stream_options`` fail, as do ``name`` on a user message and the
``developer`` role), tool-call ids that are not 9 letters and digits, and (400) tool
results answering no call of the assistant turn before them, calls left unanswered when
the next message comes, and a user message right after a tool result.

Answers are deterministic: "You said: <last user text>" (cut at a ``stop`` sequence, and
wrapped as ``{"echo": …}`` in JSON mode), "The tool said: r1; r2" after tool results
(every tool message since the last assistant turn, in order), or tool calls with ids
``call00001``, ``call00002``… (counted over the fake's life, so never reused). Tools are
called in stages: the last user message is split on " then ", and while the assistant
has made fewer tool-calling turns since that message (k) than there are stages, it
calls, in one turn, every tool whose name stage k contains (in the order of ``tools``); a
stage naming none is answered with text. A message without " then " is one stage. On the
first turn ``any``/``required`` call the first tool and a named ``tool_choice`` that
tool; later turns follow the stages (a named choice only ever calls its tool); ``none``
never calls and ``parallel_tool_calls: false`` calls one tool at most. Streams go word by
word and carry the usage in their last chunk, as Mistral's do. Tokens are words.

Faults queued on ``fake.script`` (``tests.upstreams.faults``) come in Mistral's error
shapes. Set on the fake (``reset`` clears them), what Mistral does less often: ``finish_reason``
ends every answer with that reason ("model_length", "error"); ``unindexed_tool_calls``
streams each tool call in a delta of its own, without ``index``.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request

from .faults import Fault, FaultScript, padded, reset_mid_body, verbatim_answer
from .tool_stages import tools_to_call

API_KEY = "mistral-test-key-0123456789abcdef"

# The request fields of Mistral's chat completion schema.
FIELDS = {
    "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop",
    "random_seed", "metadata", "response_format", "tools", "tool_choice",
    "presence_penalty", "frequency_penalty", "n", "prediction", "parallel_tool_calls",
    "prompt_mode", "reasoning_effort", "safe_prompt", "guardrails", "prompt_cache_key",
}  # fmt: skip
_MESSAGE_FIELDS = {
    "system": {"role", "content"},
    "user": {"role", "content"},
    "assistant": {"role", "content", "tool_calls", "prefix"},
    "tool": {"role", "content", "tool_call_id", "name"},
}
_TOOL_CHOICES = {"auto", "none", "any", "required"}
_TOOL_CALL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")


class Refused(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status, self.body = status, body


@dataclass
class FakeMistral:
    api_key: str = API_KEY
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    finish_reason: str | None = None
    unindexed_tool_calls: bool = False
    script: FaultScript = field(default_factory=FaultScript)
    _calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def last(self) -> dict[str, Any]:
        """The body of the last request that carried the right key."""
        return self.requests[-1]

    def app(self) -> Flask:
        app = Flask("fake-mistral")
        app.add_url_rule("/v1/chat/completions", view_func=self._chat, methods=["POST"])
        return app

    def reset(self) -> None:
        self.script.clear()
        with self._lock:
            self.requests.clear()
            self.headers.clear()
            self.finish_reason = None
            self.unindexed_tool_calls = False
            self._calls = 0

    def _chat(self) -> Response:
        body = request.get_json(force=True, silent=True)
        fault = self.script.take(body.get("model") if isinstance(body, dict) else None)
        fault.pause()
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _json(401, _UNAUTHORIZED)
        with self._lock:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
        try:
            _check(body)
        except Refused as exc:
            return _json(exc.status, exc.body)
        if fault.status and fault.error_event_after is None:
            return _json(fault.status, _fault_error(fault), fault.retry_after_header())
        streamed = bool(body.get("stream"))
        verbatim = verbatim_answer(fault, streamed)
        if verbatim is not None:
            return verbatim
        answer = self._answer(body)
        if streamed:
            events = iter(["data: [DONE]\n\n"]) if fault.empty_stream else answer.events(fault)
            return Response(events, mimetype="text/event-stream")
        completion = answer.completion()
        if fault.no_usage:
            del completion["usage"]
        if fault.reset_mid_body:
            return reset_mid_body(
                json.dumps(padded(completion, fault)), "application/json", request.environ
            )
        return _json(200, padded(completion, fault))

    def _answer(self, body: dict[str, Any]) -> _Answer:
        wanted = _tools_to_call(body)
        with self._lock:
            first = self._calls + 1
            self._calls += len(wanted)
        calls = [
            {
                "id": f"call{first + index:05d}",
                "type": "function",
                "function": {"name": tool["name"], "arguments": json.dumps(_arguments(tool))},
                "index": index,
            }
            for index, tool in enumerate(wanted)
        ]
        return _Answer(
            body["model"],
            "" if calls else _reply(body),
            calls,
            _prompt_tokens(body),
            reasoning=body["model"].startswith("magistral"),
            forced_finish=self.finish_reason,
            unindexed_calls=self.unindexed_tool_calls,
        )


@dataclass
class _Answer:
    model: str
    text: str
    calls: list[dict[str, Any]]
    prompt_tokens: int
    #: magistral models answer with a list of parts: thinking first, then the text
    reasoning: bool = False
    forced_finish: str | None = None
    unindexed_calls: bool = False
    id: str = "cmpl-fake"
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def finish_reason(self) -> str:
        return self.forced_finish or ("tool_calls" if self.calls else "stop")

    def usage(self) -> dict[str, int]:
        completion = len(self.text.split()) + sum(
            len(c["function"]["arguments"].split()) for c in self.calls
        )
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def completion(self) -> dict[str, Any]:
        content: Any = self.text
        if self.reasoning:
            content = [_THINKING, {"type": "text", "text": self.text}]
        message = {"role": "assistant", "content": content, "tool_calls": self.calls or None}
        return {
            **self._head("chat.completion"),
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": self.usage(),
        }

    def events(self, fault: Fault) -> Iterator[str]:
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if self.reasoning:
            deltas.append({"content": [_THINKING]})
        words = self.text.split(" ") if self.text else []
        deltas += [{"content": word if i == 0 else " " + word} for i, word in enumerate(words)]
        if self.unindexed_calls:
            unindexed = [{k: v for k, v in c.items() if k != "index"} for c in self.calls]
            deltas += [{"content": "", "tool_calls": [call]} for call in unindexed]
        elif self.calls:
            # Mistral sends each tool call whole, in one chunk.
            deltas.append({"content": "", "tool_calls": self.calls})
        padding = {"padding": "x" * fault.padding} if fault.padding else {}
        yield self._chunk(deltas[0], None, **padding)
        # Faults count the content deltas after the role's.
        for sent, delta in enumerate(deltas[1:]):
            if sent == fault.error_event_after:
                yield f"data: {json.dumps(_fault_error(fault))}\n\n"
                return
            if sent == fault.drop_after:
                raise ConnectionAbortedError("scripted connection drop")
            if sent == fault.end_after:
                return
            if sent == fault.malformed_after:
                yield 'data: {"id": "cmpl-fake", "choices": [{"delta": \n\n'
            time.sleep(fault.chunk_pause)
            yield self._chunk(delta, None)
        usage = {} if fault.no_usage else {"usage": self.usage()}
        yield self._chunk({"content": ""}, self.finish_reason, **usage)
        yield "data: [DONE]\n\n"

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        payload = {**self._head("chat.completion.chunk"), "choices": [choice], **extra}
        return f"data: {json.dumps(payload)}\n\n"

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


_THINKING = {"type": "thinking", "thinking": [{"type": "text", "text": "Let me think."}]}


# --------------------------------------------------------------------------- checks


def _check(body: Any) -> None:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise _invalid([{"type": "missing", "loc": ["body", "messages"], "msg": "Field required"}])
    problems = [_extra(["body", name], body[name]) for name in body if name not in FIELDS]
    for index, message in enumerate(body["messages"]):
        role = message.get("role")
        allowed = _MESSAGE_FIELDS.get(role)
        if allowed is None:
            problems.append(
                {
                    "type": "union_tag_invalid",
                    "loc": ["body", "messages", index],
                    "msg": f"Input tag '{role}' found using 'role' does not match any of the "
                    "expected tags: 'assistant', 'system', 'tool', 'user'",
                    "input": message,
                }
            )
            continue
        problems += [
            _extra(["body", "messages", index, role, key], message[key])
            for key in message
            if key not in allowed
        ]
    choice = body.get("tool_choice")
    if isinstance(choice, str) and choice not in _TOOL_CHOICES:
        problems.append(
            {
                "type": "enum",
                "loc": ["body", "tool_choice"],
                "msg": "Input should be 'auto', 'none', 'any' or 'required'",
                "input": choice,
            }
        )
    if problems:
        raise _invalid(problems)
    _check_tool_call_ids(body["messages"])


def _check_tool_call_ids(messages: list[dict[str, Any]]) -> None:
    pending: list[str] = []  # the calls of the last assistant turn still unanswered
    previous = ""
    for message in messages:
        role = message["role"]
        if role == "tool":
            call_id = _valid_id(message.get("tool_call_id"))
            if call_id not in pending:
                raise _out_of_order(f"Unexpected tool call id {call_id} in tool results")
            pending.remove(call_id)
        elif pending:
            raise _out_of_order("Not the same number of function calls and responses")
        elif role == "user" and previous == "tool":
            raise _out_of_order("Unexpected role 'user' after role 'tool'")
        else:
            pending = [_valid_id(call.get("id")) for call in message.get("tool_calls") or []]
        previous = role
    if pending:
        raise _out_of_order("Not the same number of function calls and responses")


def _out_of_order(message: str) -> Refused:
    return Refused(400, _error(message, "invalid_request_message_order"))


def _valid_id(tool_call_id: Any) -> str:
    if not isinstance(tool_call_id, str) or not _TOOL_CALL_ID.match(tool_call_id):
        raise Refused(
            400,
            _error(
                f"Tool call id was {tool_call_id} but must be a-z, A-Z, 0-9, with a length of 9.",
                "invalid_request_error",
            ),
        )
    return tool_call_id


def _extra(loc: list[Any], value: Any) -> dict[str, Any]:
    return {
        "type": "extra_forbidden",
        "loc": loc,
        "msg": "Extra inputs are not permitted",
        "input": value,
    }


def _invalid(problems: list[dict[str, Any]]) -> Refused:
    body = _error({"detail": problems}, "invalid_request_error")
    return Refused(422, body)


def _error(message: Any, kind: str) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": kind, "param": None, "code": None}


# --------------------------------------------------------------------------- answers


def _tools_to_call(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tools this turn calls: see the module docstring for the stages."""
    return tools_to_call(body, _text, ("any", "required"))


def _reply(body: dict[str, Any]) -> str:
    messages = body["messages"]
    if messages[-1]["role"] == "tool":
        results = list(itertools.takewhile(lambda m: m["role"] == "tool", messages[::-1]))
        text = "The tool said: " + "; ".join(_text(m) for m in reversed(results))
    else:
        text = "You said: " + _text(messages[-1])
    stops = body.get("stop") or []
    for stop in [stops] if isinstance(stops, str) else stops:
        text = text.split(stop)[0]
    if body.get("max_tokens"):
        text = " ".join(text.split(" ")[: body["max_tokens"]])
    if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
        text = json.dumps({"echo": text})
    return text


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content or ""


def _prompt_tokens(body: dict[str, Any]) -> int:
    return sum(len(_text(m).split()) for m in body["messages"])


def _arguments(tool: dict[str, Any]) -> dict[str, Any]:
    schema = tool.get("parameters") or {}
    return {name: "42" for name in schema.get("required", [])}


def _fault_error(fault: Fault) -> dict[str, Any]:
    """The error a fault stands for, in the shape Mistral gives that status."""
    status = fault.status or 500
    if status == 401:
        return _UNAUTHORIZED
    kind = fault.error_type or _ERROR_TYPES.get(status, "internal_server_error")
    return _error(fault.message or f"scripted failure {status}", kind)


_UNAUTHORIZED = {"message": "Unauthorized", "request_id": "0" * 32}
_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "invalid_model",
    429: "rate_limited",
    503: "service_unavailable",
}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)

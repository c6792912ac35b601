"""One exchange with built-in tools: the model is called, the built-in tools it asks for
are run by the router, and the model is called again with their results, until it answers,
calls a client's tool, or has been called ``max_tool_rounds`` times.

The exchange is one admission (one allowance unit or throttle slot) and one ledger row
per upstream round (``request_id`` + ``round``): each round is settled as it ends. A round
after which the model is called again is settled in the same transaction that opens the
next round's row, which keeps what the settled round did not use of its reservation; when
the tools have answered, that hold grows (or shrinks) to what the next call may cost, or
the exchange stops with a 402 when the balance cannot cover it. So the exchange's
reservation grows as it goes, and no other request of the key can take it between rounds.
What the client receives:

- ``choices[0].message.content``: the text of every round, in order, separated by a blank
  line (so a stream can send each round's text as it comes);
- ``tool_calls``: only calls to the client's own tools (a turn mixing both ran the
  built-in ones first), ``finish_reason`` ``tool_calls``; past ``max_tool_rounds`` the last
  round's built-in calls are not run and ``finish_reason`` is ``length``;
- ``usage``: the sum of the rounds;
- ``llmrouter.builtin_messages``: the built-in exchange (each assistant turn with its
  built-in calls, then their tool results), to be put before the returned message by a
  client that keeps the whole conversation; a client that ignores it still sends a valid
  conversation next time (every call it sees is its own).

Streaming is ``tool_stream.py``; this module has the state both share, and the
non-streamed loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .billing import reservation_nanos, usage_or_estimate
from .config import ToolSettings
from .dispatch import Dispatcher
from .naming import Target
from .phases import Admitted, RequestPhases
from .providers.base import ChunkStream
from .providers.directory import ProviderDirectory
from .schemas import ChatCompletion, ChatRequest, FunctionCall, Message, Tool, ToolCall, Usage
from .tool_runner import ToolOutcome, ToolRunner
from .tools import RegisteredTool

#: between the texts of two rounds in the answer
ROUND_SEPARATOR = "\n\n"


def with_builtin_tools(request: ChatRequest, tools: Iterable[RegisteredTool]) -> ChatRequest:
    """``request`` as its first round is sent: the client's tools and the built-in ones."""
    definitions = [Tool.model_validate(tool.definition()) for tool in tools]
    return request.model_copy(update={"tools": [*(request.tools or []), *definitions]})


@dataclass(frozen=True)
class ExchangeServices:
    """What an exchange runs on: the Router's phases, dispatcher and tool runner."""

    phases: RequestPhases
    dispatcher: Dispatcher
    runner: ToolRunner
    settings: ToolSettings
    lifetime_ms: int


class ToolExchange:
    """The state of one exchange: its conversation so far, its current round's ticket, and
    what the rounds added up to."""

    def __init__(
        self,
        services: ExchangeServices,
        request: ChatRequest,
        tools: list[RegisteredTool],
        admitted: Admitted,
        directory: ProviderDirectory,
        deadline: float,
    ) -> None:
        self._services = services
        self._tools = {tool.name: tool for tool in tools}
        self._first = with_builtin_tools(request, tools)
        self.ticket = admitted.ticket
        self.targets = admitted.targets
        self.directory = directory
        self.deadline = deadline
        self.round = 1
        #: the turns the router added to the conversation (sent upstream from round 2 on)
        self._added: list[Message] = []
        #: the same turns as the client receives them (``llmrouter.builtin_messages``)
        self.builtin_messages: list[dict[str, Any]] = []
        self._texts: list[str] = []
        self._ids = {c.id for m in request.messages for c in m.tool_calls or []}
        self.usage = Usage()
        self.cost_nanos = 0
        self.served: Target = admitted.targets[0]
        #: the calls of the round that ended last, with their outcomes, and its number
        self.last_answered: list[tuple[ToolCall, ToolOutcome]] = []
        self.answered_round = 0

    def is_builtin(self, name: str) -> bool:
        """Whether a call to ``name`` is the router's to run."""
        return name in self._tools

    @property
    def max_rounds(self) -> int:
        return self._services.settings.max_tool_rounds

    @property
    def text(self) -> str:
        """Every round's text so far, joined."""
        return ROUND_SEPARATOR.join(self._texts)

    @property
    def has_text(self) -> bool:
        return bool(self._texts)

    def round_request(self) -> ChatRequest:
        """The request of the current round."""
        if self.round == 1:
            return self._first
        update: dict[str, Any] = {"messages": [*self._first.messages, *self._added]}
        if self._first.tool_choice not in (None, "auto", "none"):
            # A required or named tool was called in round 1; asked again, the model would
            # have to call one again each round, never answering.
            update["tool_choice"] = "auto"
        return self._first.model_copy(update=update)

    def dispatch_chat(self, request: ChatRequest) -> tuple[ChatCompletion, Target]:
        """Call the model for the current round; a round no provider served is accounted
        for."""
        return self._dispatch(  # type: ignore[no-any-return]
            lambda: self._services.dispatcher.chat(
                request, self.targets, self.directory, deadline=self.deadline
            )
        )

    def dispatch_stream(self, request: ChatRequest) -> tuple[ChunkStream, Target]:
        """Open the current round's stream; a round no provider served is accounted for."""
        return self._dispatch(  # type: ignore[no-any-return]
            lambda: self._services.dispatcher.stream(
                request, self.targets, self.directory, deadline=self.deadline
            )
        )

    def _dispatch(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except BaseException as exc:
            self._services.phases.dispatch_failed(self.ticket, self.targets[0], exc)
            raise

    def settle(
        self,
        served: Target,
        status: str,
        usage: Usage,
        estimated: bool,
        error: str | None = None,
    ) -> None:
        """Settle the current round (once; ``failed``: nothing billed, its hold handed back)."""
        self.served = served
        cost = self._services.phases.settle(self.ticket, served, status, usage, estimated, error)
        if status != "failed":
            self.usage = _sum(self.usage, usage)
            self.cost_nanos += cost

    def said(self, text: str | None) -> None:
        """The current round's text (part of the answer the client receives)."""
        if text:
            self._texts.append(text)

    def split(self, calls: list[ToolCall] | None) -> tuple[list[ToolCall], list[ToolCall]]:
        """A turn's calls: the built-in ones (with ids unique in the conversation) and the
        client's."""
        builtin, client = [], []
        for call in calls or []:
            if call.function.name in self._tools:
                if not call.id or call.id in self._ids:
                    call = call.model_copy(update={"id": "call_" + uuid.uuid4().hex[:24]})
                self._ids.add(call.id)
                builtin.append(call)
            else:
                client.append(call)
        return builtin, client

    def end_turn(
        self,
        served: Target,
        usage: Usage,
        estimated: bool,
        *,
        text: str | None,
        calls: list[ToolCall] | None,
        finish: str | None,
    ) -> tuple[str | None, list[ToolCall]]:
        """The current round ended with the model's turn (``text`` and ``calls``): settle
        it and run its built-in calls. Returns the ``finish_reason`` the client gets and
        the client's own calls; or ``(None, [])`` when the model is to be called again,
        its round opened already.

        A round the model is called again after is settled in one step with the opening
        of the next, which holds what this one did not use of its reservation; once the
        tools have answered, that hold is made what the next call may cost (a 402 when
        the balance cannot cover it). So no other request of the key can take the
        exchange's money between its rounds."""
        self.said(text)
        builtin, client = self.split(calls)
        self.last_answered = []
        self.answered_round = self.round
        if builtin and not client and self.round < self.max_rounds:
            self._carry(served, usage, estimated)
            self.answer(text, builtin)
            self._grow()
            return None, []
        self.settle(served, "ok", usage, estimated)
        if builtin and client:  # the exchange ends here; the built-in calls still run
            self.answer(text, builtin)
        if client:
            return "tool_calls", client
        if builtin:  # its last round: no call is left to read their results
            return "length", []
        return finish, []

    def release_round(self) -> None:
        """Hand back the current round, opened but never dispatched (the client left)."""
        self._services.phases.release(self.ticket)

    def _carry(self, served: Target, usage: Usage, estimated: bool) -> None:
        self.served = served
        self.ticket, cost = self._services.phases.carry_round(
            self.ticket,
            served,
            usage,
            estimated,
            self.targets[0],
            lifetime_ms=self._services.lifetime_ms,
        )
        self.usage = _sum(self.usage, usage)
        self.cost_nanos += cost
        self.round += 1

    def _grow(self) -> None:
        request = self.round_request()
        reserve = max(reservation_nanos(request, t.model) for t in self.targets)
        self.ticket = self._services.phases.grow_round(self.ticket, reserve)

    def answer(self, text: str | None, calls: list[ToolCall]) -> None:
        """Run the turn's built-in calls and add the turn and their results to the
        conversation."""
        outcomes = self._services.runner.run(
            [(self._tools[c.function.name], c.function.arguments) for c in calls],
            default_timeout=self._services.settings.timeout_seconds,
            deadline=self.deadline,
        )
        calls = [
            ToolCall(id=c.id, function=FunctionCall(name=c.function.name, arguments=_args(c)))
            for c in calls
        ]
        results = [
            Message(role="tool", tool_call_id=c.id, content=o.content)
            for c, o in zip(calls, outcomes, strict=True)
        ]
        self._added += [Message(role="assistant", content=text or None, tool_calls=calls)]
        self._added += results
        turn = Message(role="assistant", content=None, tool_calls=calls)
        self.builtin_messages += [
            m.model_dump(exclude_none=True, exclude={"name"}) for m in (turn, *results)
        ]
        self.last_answered = list(zip(calls, outcomes, strict=True))

    def extension(self) -> dict[str, Any] | None:
        """The response's ``llmrouter`` object, when built-in tools ran."""
        if not self.builtin_messages:
            return None
        return {"rounds": self.round, "builtin_messages": self.builtin_messages}

    def could_be_builtin(self, name: str) -> bool:
        """Whether a call name seen so far (a stream may send it in pieces) may still
        grow into another built-in tool's name."""
        return any(other != name and other.startswith(name) for other in self._tools)


def complete_exchange(exchange: ToolExchange) -> ChatCompletion:
    """The non-streamed loop: round after round until the answer the client gets."""
    ident = None
    while True:
        request = exchange.round_request()
        completion, served = exchange.dispatch_chat(request)
        ident = ident or completion.id
        usage, estimated = usage_or_estimate(request, completion)
        if not completion.choices:  # nothing to act on: passed on as it came
            exchange.settle(served, "ok", usage, estimated)
            completion.usage = exchange.usage
            return completion
        choice = completion.choices[0]
        message = choice.message
        finish, client = exchange.end_turn(
            served,
            usage,
            estimated,
            text=message.content,
            calls=message.tool_calls,
            finish=choice.finish_reason,
        )
        if finish is None:
            continue
        message.content = exchange.text or (None if client else "")
        message.tool_calls = client or None
        choice.finish_reason = finish
        completion.id = ident
        completion.model = served.public_id
        completion.usage = exchange.usage
        extension = exchange.extension()
        if extension is not None:
            completion.llmrouter = extension  # type: ignore[attr-defined]
        return completion


def _args(call: ToolCall) -> str:
    """A call's arguments as sent back upstream: some providers refuse an empty string."""
    return call.function.arguments.strip() or "{}"


def _sum(total: Usage, more: Usage) -> Usage:
    """Two usages added up, their token details too (counts only)."""
    return Usage(
        prompt_tokens=total.prompt_tokens + more.prompt_tokens,
        completion_tokens=total.completion_tokens + more.completion_tokens,
        total_tokens=total.total_tokens + more.total_tokens,
        prompt_tokens_details=_sum_details(total.prompt_tokens_details, more.prompt_tokens_details),
        completion_tokens_details=_sum_details(
            total.completion_tokens_details, more.completion_tokens_details
        ),
    )


def _sum_details(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    if not a or not b:
        return a or b
    summed = dict(a)
    for name, value in b.items():
        if isinstance(value, int) and isinstance(summed.get(name, 0), int):
            summed[name] = summed.get(name, 0) + value
        else:
            summed.setdefault(name, value)
    return summed

"""The streamed loop of a built-in tool exchange (see ``tool_exchange.py``): one OpenAI
stream however many rounds the exchange takes.

The client receives one ``id``; a role only in the first chunk; each round's text deltas
as they come (a blank line between two rounds' texts); deltas of calls to its own tools
(numbered from 0 across the exchange) and never a delta of a built-in call; one final chunk
with the exchange's ``finish_reason`` (and, when built-in tools ran, the ``llmrouter``
object of the non-streamed answer); and, when asked for, one usage chunk: the sum of the
rounds. Each round is settled when its upstream stream ends; closing the stream early
settles the round in flight as ``partial``. With ``"llmrouter": {"tool_progress": true}``
a chunk with an empty delta and an ``llmrouter.tool_round`` object follows each round of
built-in calls (their ids, names and whether each returned).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from .billing import estimate_usage
from .metering import MeteredStream, StreamEnd
from .naming import Target
from .providers.base import ChunkStream
from .schemas import (
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    FunctionCall,
    ToolCall,
    ToolCallDelta,
)
from .tool_exchange import ROUND_SEPARATOR, ToolExchange


class ExchangeStream:
    """The client's chunks of an exchange, from its first round's open stream. Closing it
    (at any point, before the first chunk too) settles the round in flight."""

    def __init__(
        self, exchange: ToolExchange, first: tuple[ChunkStream, Target], *, progress: bool
    ) -> None:
        self._exchange = exchange
        self._progress = progress
        upstream, served = first
        self._round: MeteredStream | None = self._metered(upstream, served)
        self._ok: StreamEnd | None = None
        self._between = False
        self._chunks = self._generate(served)

    def __iter__(self) -> ExchangeStream:
        return self

    def __next__(self) -> ChatCompletionChunk:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()
        if self._round is not None:
            self._round.close()
            self._round = None
        if self._between:  # closed at a progress chunk: the next round never became a call
            self._between = False
            self._exchange.release_round()

    def _metered(self, upstream: ChunkStream, served: Target) -> MeteredStream:
        exchange = self._exchange
        request = exchange.round_request()

        def on_end(end: StreamEnd) -> None:
            if end.status == "ok":
                self._ok = end  # settled with what the turn says (see end_turn)
            else:
                exchange.settle(served, end.status, end.usage, end.usage_estimated, end.error)

        return MeteredStream(
            upstream,
            model=served.public_id,
            include_usage=False,
            estimate_usage=lambda delivered: estimate_usage(request, delivered),
            on_end=on_end,
            deadline=exchange.deadline,
        )

    def _generate(self, served: Target) -> Generator[ChatCompletionChunk, None, None]:
        exchange = self._exchange
        ident, created = "", 0
        role_sent = False
        while self._round is not None:
            turn = _Turn(exchange, separate=exchange.has_text)
            for chunk in self._round:
                if not ident:
                    ident, created = chunk.id, chunk.created
                relayed = turn.relay(chunk, role=not role_sent)
                if relayed is not None:
                    role_sent = True
                    relayed.id, relayed.created = ident, created
                    yield relayed
            self._round, end, self._ok = None, self._ok, None
            assert end is not None  # a round that did not end ok raised out of the loop
            held = turn.release_held(ident, created)
            if held is not None:
                yield held
            finish, _ = exchange.end_turn(
                served,
                end.usage,
                end.usage_estimated,
                text=turn.text,
                calls=turn.calls(),
                finish=turn.finish,
            )
            self._between = finish is None  # the next round's row is open, not yet sent
            if self._progress and exchange.last_answered:
                yield _progress_chunk(exchange, ident, created, served.public_id)
            if finish is not None:
                yield from _ending(exchange, ident, created, served.public_id, finish)
                return
            self._between = False
            upstream, served = exchange.dispatch_stream(exchange.round_request())
            self._round = self._metered(upstream, served)


@dataclass
class _Call:
    """One tool call of a turn, as its deltas arrive."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    #: None until its name says whose it is; then True for a built-in call
    builtin: bool | None = None
    #: its index in the client's stream (a client call)
    client_index: int = 0
    #: deltas held until the name came
    held: list[ToolCallDelta] = field(default_factory=list)


class _Turn:
    """One round's stream: what the client is sent of it, and what it said and called."""

    def __init__(self, exchange: ToolExchange, *, separate: bool) -> None:
        self._exchange = exchange
        self._separate = separate
        self._parts: list[str] = []
        self._calls: dict[int, _Call] = {}
        self._client_calls = 0
        self.finish: str | None = None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def calls(self) -> list[ToolCall]:
        """The turn's complete calls, in the order the model made them."""
        return [
            ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments="".join(c.arguments)))
            for _, c in sorted(self._calls.items())
            if c.builtin is not None
        ]

    def relay(self, chunk: ChatCompletionChunk, *, role: bool) -> ChatCompletionChunk | None:
        """``chunk`` as the client gets it (None: nothing in it is the client's)."""
        choices = []
        for choice in chunk.choices:
            if choice.index != 0:  # an exchange asks for one choice
                continue
            if choice.finish_reason:
                self.finish = choice.finish_reason
                choice.finish_reason = None
            delta = choice.delta
            if not role:
                delta.role = None
            if delta.content:
                self._parts.append(delta.content)
                if self._separate and len(self._parts) == 1:
                    delta.content = ROUND_SEPARATOR + delta.content
            relayed = [d for call in delta.tool_calls or [] for d in self._relay_call(call)]
            delta.tool_calls = relayed or None
            if delta.role or delta.content or relayed or delta.refusal or delta.model_extra:
                choices.append(choice)
        if not choices:
            return None
        chunk.choices = choices
        return chunk

    def _relay_call(self, delta: ToolCallDelta) -> list[ToolCallDelta]:
        call = self._calls.setdefault(delta.index, _Call())
        if delta.id:
            call.id = delta.id
        if delta.function is not None:
            call.name += delta.function.name or ""
            if delta.function.arguments:
                call.arguments.append(delta.function.arguments)
        if call.builtin is None:
            call.held.append(delta)
            if not call.name or (not call.arguments and self._exchange.could_be_builtin(call.name)):
                return []  # whose call it is is not known yet: its name may go on
            return self._decide(call)
        if call.builtin:
            return []
        return [delta.model_copy(update={"index": call.client_index})]

    def _decide(self, call: _Call) -> list[ToolCallDelta]:
        """Say whose ``call`` is, and give the deltas held for it, if the client's."""
        call.builtin = self._exchange.is_builtin(call.name)
        held, call.held = call.held, []
        if call.builtin:
            return []
        call.client_index = self._client_calls
        self._client_calls += 1
        return [d.model_copy(update={"index": call.client_index}) for d in held]

    def release_held(self, ident: str, created: int) -> ChatCompletionChunk | None:
        """At the turn's end, the calls still undecided (a name that might have grown into a
        built-in tool's) are decided; a chunk with what was held of the client's, if any."""
        deltas = [
            delta
            for _, call in sorted(self._calls.items())
            if call.builtin is None and call.name
            for delta in self._decide(call)
        ]
        if not deltas:
            return None
        choice = ChunkChoice(index=0, delta=Delta(tool_calls=deltas))
        return ChatCompletionChunk(id=ident, created=created, model="", choices=[choice])


def _progress_chunk(
    exchange: ToolExchange, ident: str, created: int, model: str
) -> ChatCompletionChunk:
    chunk = ChatCompletionChunk(
        id=ident, created=created, model=model, choices=[ChunkChoice(index=0, delta=Delta())]
    )
    chunk.llmrouter = {  # type: ignore[attr-defined]
        "tool_round": {
            "round": exchange.answered_round,
            "tool_calls": [
                {"id": call.id, "name": call.function.name, "ok": outcome.ok}
                for call, outcome in exchange.last_answered
            ],
        }
    }
    return chunk


def _ending(
    exchange: ToolExchange, ident: str, created: int, model: str, finish: str
) -> Iterator[ChatCompletionChunk]:
    """The exchange's finish chunk, then its usage (the metered stream passes that on only
    to a client that asked for it)."""
    final = ChatCompletionChunk(
        id=ident,
        created=created,
        model=model,
        choices=[ChunkChoice(index=0, delta=Delta(), finish_reason=finish)],
    )
    extension = exchange.extension()
    if extension is not None:
        final.llmrouter = extension  # type: ignore[attr-defined]
    yield final
    yield ChatCompletionChunk(id=ident, created=created, model=model, usage=exchange.usage)

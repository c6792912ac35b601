"""Chat with a provider connection in sessions (seed 003's ``POST /llm-providers/{id}/chat``),
and a connection's sessions listed, read and deleted: ``router.connections.sessions``.

What it does, and the choices made:

- **Every message is in a session.** With a ``sessionId`` the session's stored history is
  sent before the new user turn, and the exchange is appended. Without one (seed 003's
  "one-off message") a new session is created and its id returned: a one-off message is
  stored too, so that it can be continued or deleted like any other.
- **Nothing is stored when the call fails.** The user's turn and the reply are written
  together after the call succeeded, in one transaction (a new session with them); a
  refused or failed call leaves no session and no turn behind.
- **The normal pipeline.** The call is ``router.complete`` with the model
  ``<connection name>#<model>`` (the connection's default ``model``, else its first listed
  model, else a 400 naming ``model``) for the calling key: billed to it in the ledger,
  counted against its quota (a 429 or 402 of the pipeline is the answer, with its
  headers), with the connection's ``configuration`` as request defaults. Config-file
  providers (``config-<name>``) chat the same way; a disabled connection is a 409.
- **Histories longer than the context are cut oldest-first, whole exchanges at a time.**
  When the model has a ``context_length``, the oldest exchanges (a user turn and its
  reply) are left out of the request until the estimated prompt tokens plus the answer's
  allowance fit it; the new turn is always sent, and if it does not fit alone the call is
  a 400 naming ``message``. Prompt tokens are estimated as the billing's reservation
  estimates them (``billing.estimate_prompt_tokens``: one token per UTF-8 byte, an upper
  bound, plus 4 per message). The answer's allowance is the connection's ``maxTokens``,
  else the model's ``max_output_length``, else a quarter of the context (at most 4,096).
  The stored session keeps every turn; the response says how many were left out
  (``historyLeftOut``). An exchange whose reply was empty is never sent again (providers
  refuse an empty assistant turn).
- **A session belongs to its connection.** Any admin key may read, continue or delete it
  (the key that started it is shown as ``keyId``); a session id of another connection is
  a 404 ``session_not_found``, as is an unknown one.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..billing import (
    DEFAULT_OUTPUT_ALLOWANCE,
    MESSAGE_TOKEN_ALLOWANCE,
    nanos_to_usd,
    usage_or_estimate,
)
from ..errors import (
    ConflictError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
)
from ..naming import Target
from ..schemas import (
    ChatCompletion,
    Usage,
    parse_body,
    parse_chat_request,
)
from ..store import ChatMessageRecord, ConnectionRecord, KeyRecord, SessionRecord
from .fields import CONFIG_ID_PREFIX

if TYPE_CHECKING:
    from ..router import Router

#: the longest message a chat turn may carry, in characters
MAX_MESSAGE_CHARS = 100_000
#: a session's title: its first message, on one line, cut to this many characters
TITLE_CHARS = 80
#: the answer's allowance when neither the connection nor the model bounds it
ANSWER_SHARE_OF_CONTEXT = 4
#: the longest id ``chat_sessions.connection_id`` holds
OWNER_ID_CHARS = 40
_SESSION_ID = re.compile(r"sess-[0-9a-f]{32}")


class ChatInput(BaseModel):
    """``POST /llm-providers/{id}/chat``: ``{"message", "sessionId"?}``."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    message: Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE_CHARS)]
    session_id: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None, alias="sessionId"
    )


def parse_chat_input(body: Any) -> ChatInput:
    """The chat body, or a 400 naming the field (unknown fields are refused)."""
    chat = parse_body(ChatInput, body)  # a lone surrogate can be neither sent nor stored
    if not chat.message.strip():
        raise InvalidRequestError("Invalid 'message': it is only whitespace.", param="message")
    if "\x00" in chat.message:  # PostgreSQL's text cannot hold NUL
        raise InvalidRequestError(
            "Invalid 'message': it contains a NUL character.", param="message"
        )
    return chat


@dataclass(frozen=True)
class ChatReply:
    """One exchange of a session: the reply, what it took, and the quota headers."""

    session_id: str
    content: str
    #: the ``Provider#Model`` that served it
    model: str
    usage: Usage
    #: the provider reported no usage: the counts are the ledger's estimate
    usage_estimated: bool
    #: the call's cost at the served model's prices (what its ledger row records)
    cost_nanos: int | None
    #: stored turns left out of the request to fit the model's context
    history_left_out: int
    #: the pipeline's ``X-RateLimit-*`` and provider headers
    headers: Mapping[str, str]

    def view(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "message": {"role": "assistant", "content": self.content},
            "model": self.model,
            "usage": {
                "promptTokens": self.usage.prompt_tokens,
                "completionTokens": self.usage.completion_tokens,
                "totalTokens": self.usage.total_tokens,
                "estimated": self.usage_estimated,
            },
            "cost": None if self.cost_nanos is None else nanos_to_usd(self.cost_nanos),
            "historyLeftOut": self.history_left_out,
        }


def session_view(record: SessionRecord, *, with_messages: bool = False) -> dict[str, Any]:
    """A session as responses show it (its messages only when asked, oldest first)."""
    view: dict[str, Any] = {
        "id": record.id,
        "connectionId": record.connection_id,
        "keyId": record.key_id,
        "title": record.title,
        "messageCount": record.message_count,
        "createdAt": _iso(record.created_at),
        "updatedAt": _iso(record.updated_at),
    }
    if with_messages:
        view["messages"] = [
            {"role": m.role, "content": m.content, "createdAt": _iso(m.created_at)}
            for m in record.messages
        ]
    return view


def session_owner(record: ConnectionRecord) -> str:
    """The id a connection's sessions are stored under: the connection's id, or for a
    config provider whose ``config-<name>`` is longer than the column, ``config-`` and a
    digest of its name."""
    if record.source != "config" or len(record.id) <= OWNER_ID_CHARS:
        return record.id  # a stored connection's id is made to fit the column
    digest = hashlib.sha256(record.name.encode()).hexdigest()
    return CONFIG_ID_PREFIX + digest[: OWNER_ID_CHARS - len(CONFIG_ID_PREFIX)]


class ChatSessions:
    """Chat and the chat sessions of one Router's connections
    (``router.connections.sessions``)."""

    def __init__(self, router: Router) -> None:
        self._router = router

    # ---------------------------------------------------------------- chat

    def chat(
        self,
        connection_id: str,
        message: str,
        session_id: str | None = None,
        *,
        caller: KeyRecord,
    ) -> ChatReply:
        """Send ``message`` to the connection, after the history of ``session_id`` (a new
        session when None), billed to ``caller``; the exchange is stored only when the
        call succeeds. See the module docstring for the rules."""
        fields: dict[str, Any] = {"message": message}
        if session_id is not None:
            fields["sessionId"] = session_id
        turn = parse_chat_input(fields)
        record = self._connection(connection_id)
        if record.status == "disabled":
            raise ConflictError(
                f"The connection '{record.name}' is disabled: set its status to 'active' "
                "to chat with it.",
                param="status",
                code="connection_disabled",
            )
        owner = session_owner(record)
        history: tuple[ChatMessageRecord, ...] = ()
        if turn.session_id is not None:
            history = self._session(owner, turn.session_id).messages
        target = self._target(record)
        messages, left_out = fit_history(
            history,
            turn.message,
            context=target.model.context_length,
            answer=self._answer_allowance(target),
            model=target.public_id,
        )
        request = parse_chat_request({"model": target.public_id, "messages": messages})
        result = self._router.complete(request, caller=caller)
        completion = result.body
        assert isinstance(completion, ChatCompletion)  # the request is not streamed
        content = _reply_text(completion)
        usage, estimated = usage_or_estimate(request, completion)
        now = self._router.now_ms()
        exchange = (
            ChatMessageRecord("user", turn.message, now),
            ChatMessageRecord("assistant", content, now, result.request_id),
        )
        store = self._router.store
        if turn.session_id is None:
            stored = store.create_session(
                session_id="sess-" + uuid.uuid4().hex,
                connection_id=owner,
                key_id=caller.id,
                title=_title(turn.message),
                now=now,
                messages=exchange,
            )
        else:
            stored = store.append_to_session(owner, turn.session_id, exchange, now=now)
        return ChatReply(
            session_id=stored.id,
            content=content,
            model=completion.model,
            usage=usage,
            usage_estimated=estimated,
            cost_nanos=result.cost_nanos,
            history_left_out=left_out,
            headers=result.headers(),
        )

    # ---------------------------------------------------------------- sessions

    def list(self, connection_id: str) -> list[SessionRecord]:
        """The connection's sessions, the most recently used first, with message counts."""
        return self._router.store.list_sessions(session_owner(self._connection(connection_id)))

    def get(self, connection_id: str, session_id: str) -> SessionRecord:
        """One session of the connection with its messages, oldest first."""
        return self._session(session_owner(self._connection(connection_id)), session_id)

    def delete(self, connection_id: str, session_id: str) -> SessionRecord:
        """Delete one session of the connection and its messages; returns it as it was."""
        owner = session_owner(self._connection(connection_id))
        return self._router.store.delete_session(owner, _checked_session_id(session_id))

    # ---------------------------------------------------------------- helpers

    def _connection(self, connection_id: str) -> ConnectionRecord:
        if not isinstance(connection_id, str):
            raise NotFoundError("no provider connection with that id", param="id")
        return self._router.connections.get(connection_id)

    def _session(self, owner: str, session_id: str) -> SessionRecord:
        return self._router.store.get_session(owner, _checked_session_id(session_id))

    def _target(self, record: ConnectionRecord) -> Target:
        model = record.model or next(
            (str(m["id"]) for m in record.models if isinstance(m.get("id"), str)), None
        )
        if model is None:
            raise InvalidRequestError(
                f"The connection '{record.name}' has no model to chat with: set its 'model'.",
                param="model",
            )
        name = f"{record.name}#{model}"
        try:
            return self._router.directory.catalog.resolve(name)
        except ModelNotFoundError:  # made by another process a moment ago
            self._router.refresh_directory()
            return self._router.directory.catalog.resolve(name)

    def _answer_allowance(self, target: Target) -> int:
        configured = self._router.directory.request_defaults(target.provider).get("max_tokens")
        if isinstance(configured, int) and configured > 0:
            return configured
        if target.model.max_output_length:
            return target.model.max_output_length
        context = target.model.context_length or 0
        return min(DEFAULT_OUTPUT_ALLOWANCE, context // ANSWER_SHARE_OF_CONTEXT)


def fit_history(
    history: tuple[ChatMessageRecord, ...],
    message: str,
    *,
    context: int | None,
    answer: int,
    model: str,
) -> tuple[list[dict[str, str]], int]:
    """The messages to send (the history's newest exchanges that fit, then the new turn)
    and how many stored turns were left out. ``context`` None: nothing is cut."""
    exchanges: list[list[ChatMessageRecord]] = []
    for turn in history:
        if turn.role == "user" or not exchanges:
            exchanges.append([])
        exchanges[-1].append(turn)
    sendable = [e for e in exchanges if all(t.content for t in e)]
    budget = None if context is None else context - answer
    needed = _tokens(message)
    if budget is not None and needed > budget:
        raise InvalidRequestError(
            f"The message is too long for '{model}': about {needed} prompt tokens, and "
            f"{answer} for the answer, exceed its context of {context} tokens.",
            param="message",
            code="context_length_exceeded",
        )
    kept: list[list[ChatMessageRecord]] = []
    for exchange in reversed(sendable):
        cost = sum(_tokens(t.content) for t in exchange)
        if budget is not None and needed + cost > budget:
            break  # this one and every older one are left out
        kept.append(exchange)
        needed += cost
    kept.reverse()
    messages = [{"role": t.role, "content": t.content} for e in kept for t in e]
    left_out = len(history) - len(messages)
    messages.append({"role": "user", "content": message})
    return messages, left_out


def _tokens(content: str) -> int:
    """A text message's tokens as ``billing.estimate_prompt_tokens`` counts them."""
    return MESSAGE_TOKEN_ALLOWANCE + len(content.encode())


def _reply_text(completion: ChatCompletion) -> str:
    message = completion.choices[0].message if completion.choices else None
    text = (message.content or message.refusal or "") if message else ""
    return text.replace("\x00", "\ufffd")  # storable on every database


def _title(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


def _checked_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
        raise NotFoundError(
            "no chat session with that id on this connection",
            param="sessionId",
            code="session_not_found",
        )
    return session_id


def _iso(millis: int) -> str:
    moment = datetime.fromtimestamp(millis / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

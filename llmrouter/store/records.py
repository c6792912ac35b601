"""Plain records the store returns and takes: keys, admissions, settlements, usage rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class AdmissionKind(IntEnum):
    """The outcome of one admission statement (stored in ``api_keys.last_admission``)."""

    ALLOWANCE = 1  # within the day's fair-use allowance: free to the key
    CREDITS = 2  # past it (or a premium model): paid from the prepaid balance
    THROTTLE_SLOT = 3  # past it, no credits: the one request of this throttle window
    REJECTED_THROTTLED = 4  # past it, no credits, the throttle slot is taken
    REJECTED_NO_CREDITS = 5  # premium model and the balance cannot cover the reservation
    REJECTED_PER_MINUTE = 6  # the key's requests_per_minute is used up
    #: the key's restrictions changed since the caller read them: nothing was taken; the
    #: caller reads the key again and decides again
    STALE_RESTRICTIONS = 7

    @property
    def admitted(self) -> bool:
        return self <= AdmissionKind.THROTTLE_SLOT

    @property
    def label(self) -> str:
        return {1: "allowance", 2: "credits", 3: "throttle"}.get(self.value, "rejected")


@dataclass(frozen=True)
class KeyRecord:
    """An API key as the store holds it; never its secret."""

    id: str
    name: str
    hint: str
    is_admin: bool
    created_at: int
    revoked_at: int | None
    balance_nanos: int
    spent_nanos: int
    daily_requests: int | None
    throttle_seconds: int | None
    requests_per_minute: int | None
    #: the ``Provider#Model`` names and the provider names the key may call (None: that
    #: list does not restrict; see ``allows``)
    allowed_models: tuple[str, ...] | None = None
    allowed_providers: tuple[str, ...] | None = None
    #: the router's built-in tools the key may have offered (None: every one the config
    #: enables; an empty tuple: none)
    allowed_tools: tuple[str, ...] | None = None
    #: bumped by every change of the restrictions; the admission checks it
    restrictions_version: int = 0
    #: the hash of the secret this record was found by (None when found by id), so the
    #: admission can refuse a secret rotated away meanwhile; never rendered or compared
    secret_hash: str | None = field(default=None, repr=False, compare=False)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def restricted(self) -> bool:
        return self.allowed_models is not None or self.allowed_providers is not None

    def allows(self, provider: str, model: str) -> bool:
        """Whether the key may call ``model`` (a ``Provider#Model`` public id) of
        ``provider``: always when unrestricted, else when either list names it. Names
        compare case-insensitively, as the router resolves them."""
        if not self.restricted:
            return True
        return model.casefold() in _folded(self.allowed_models) or provider.casefold() in (
            _folded(self.allowed_providers)
        )


def _folded(names: tuple[str, ...] | None) -> set[str]:
    return {name.casefold() for name in names or ()}


@dataclass(frozen=True)
class QuotaDefaults:
    """The ``[quota]`` values used where a key has no override."""

    daily_requests: int
    throttle_seconds: int
    requests_per_minute: int | None


@dataclass(frozen=True)
class Ticket:
    """An admitted request in flight, as its ``pending`` ledger row records it: what the
    admission took, so that exactly one settlement, release or sweep can account for it,
    in whichever process."""

    request_id: str
    key_id: str
    kind: AdmissionKind
    at: int
    day: int
    reserved_nanos: int
    #: the key's ``next_slot_at`` as this admission set it (a throttle slot's release)
    slot_at: int
    #: past this (Unix ms) the sweeper may close the row as abandoned
    deadline_at: int
    #: the upstream round of a built-in tool exchange this row is (1: the exchange's
    #: admission, which holds its allowance unit or throttle slot; a later round holds
    #: only its own reservation)
    round: int = 1


@dataclass(frozen=True)
class Admission:
    """What the admission statement decided, and the key's quota state right after it;
    ``ticket`` is set when the request was admitted."""

    key_id: str
    kind: AdmissionKind
    at: int
    day: int
    reserved_nanos: int
    daily_limit: int
    day_count: int
    next_slot_at: int
    minute_count: int
    requests_per_minute: int | None
    balance_nanos: int
    ticket: Ticket | None = None


@dataclass(frozen=True)
class Settlement:
    """One finished call, as it completes its ticket's ledger row."""

    ticket: Ticket
    provider: str
    model: str
    upstream_model: str
    status: str  # ok | partial | failed
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool
    cost_nanos: int
    finished_at: int
    error: str | None = None

    @property
    def request_id(self) -> str:
        return self.ticket.request_id

    @property
    def charged_nanos(self) -> int:
        """What the key pays: only credit-paid calls, never more than was reserved."""
        if self.ticket.kind is not AdmissionKind.CREDITS or self.status == "failed":
            return 0
        return max(0, min(self.cost_nanos, self.ticket.reserved_nanos))


@dataclass(frozen=True)
class SweptCall:
    """A ``pending`` row the sweeper closed as ``abandoned``."""

    request_id: str
    key_id: str
    admission: str
    started_at: int
    released_nanos: int
    #: the exchange's upstream round the row was (see ``Ticket.round``)
    round: int = 1


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger row of an exchange, as ``Store.ledger_rows`` reads it: one per upstream
    round; money in nano-dollars."""

    round: int
    status: str  # pending | ok | partial | failed | abandoned
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_nanos: int
    charged_nanos: int
    reserved_nanos: int
    admission: str  # allowance | credits | throttle
    error: str | None


@dataclass(frozen=True)
class UsageRow:
    key_id: str
    day: int
    provider: str
    model: str
    requests: int
    failed: int
    abandoned: int
    prompt_tokens: int
    completion_tokens: int
    cost_nanos: int
    charged_nanos: int


@dataclass(frozen=True)
class ProviderTotal:
    provider: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_nanos: int


@dataclass(frozen=True)
class ConnectionRecord:
    """A provider connection made over HTTP, as the store holds it (its API key only
    encrypted: ``api_key_encrypted`` is never rendered)."""

    id: str
    name: str
    provider: str
    model: str | None
    base_url: str | None
    api_key_hint: str | None
    #: request defaults, OpenAI field names (``max_tokens``, ``temperature``, …)
    configuration: dict[str, object]
    #: as ``[[providers.models]]`` lists them
    models: list[dict[str, object]]
    status: str
    status_reason: str | None
    #: what the connection has cost so far (its name's provider totals since it was made)
    total_cost_nanos: int
    #: Unix milliseconds (None for a config-file provider)
    created_at: int | None
    updated_at: int | None
    #: ``store`` (made over HTTP) or ``config`` (the config file's, read-only)
    source: str = "store"
    api_key_encrypted: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class ChatMessageRecord:
    """One turn of a chat session: ``user`` or ``assistant``."""

    role: str
    content: str
    #: Unix milliseconds
    created_at: int
    #: the ledger row of the call that produced an assistant turn (None when not known)
    request_id: str | None = None


@dataclass(frozen=True)
class SessionRecord:
    """A chat session of a connection (``POST /llm-providers/{id}/chat``); ``messages``
    is filled only when one session is read, oldest first."""

    id: str
    #: the connection's id (a config provider's: see ``connections.chat.session_owner``)
    connection_id: str
    #: the key that started the session
    key_id: str
    title: str
    created_at: int
    updated_at: int
    message_count: int
    messages: tuple[ChatMessageRecord, ...] = ()


@dataclass(frozen=True)
class VideoTaskRecord:
    """A video task as the store holds it (times: Unix milliseconds)."""

    id: str
    key_id: str
    #: its admission ticket's ledger row
    request_id: str
    provider: str
    model: str
    upstream_model: str
    upstream_id: str | None
    status: str
    progress: int | None
    video_url: str | None
    video_expires_at: int | None
    error: str | None
    prompt: str
    duration: int
    resolution: str
    ratio: str
    images: tuple[dict[str, str], ...]
    reserved_nanos: int
    cost_nanos: int | None
    charged_nanos: int | None
    idempotency_key: str | None
    body_hash: str | None
    created_at: int
    updated_at: int
    polled_at: int
    expires_at: int

"""The Router: authenticate, resolve, admit, dispatch, settle. Nothing else lives here."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypeVar, overload

from sqlalchemy.engine import Engine

from .billing import estimate_usage, reservation_nanos, usage_or_estimate, usd_to_nanos
from .config import CONNECTION_DEFAULTS, Settings, load_settings, source_label
from .connections import Connections
from .dispatch import Dispatcher
from .errors import (
    AuthenticationError,
    ConfigError,
    InvalidRequestError,
    LLMRouterError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
)
from .keys import KeyAuthenticator, KeyChanges, changes_of, parse_fields
from .metering import MeteredStream, StreamEnd
from .naming import ModelCatalog, Target
from .phases import Admitted, RequestPhases
from .providers.base import ChunkStream
from .providers.directory import ProviderDirectory
from .providers.live_directory import LiveDirectory
from .quota import QuotaPolicy, RateLimitInfo
from .redaction import Redactor
from .schemas import (
    ChatCompletion,
    ChatRequest,
    ModelCard,
    ModelList,
    parse_chat_request,
)
from .secrets import SecretBox
from .settlement_queue import SettlementQueue
from .store import (
    KeyRecord,
    ProviderTotal,
    Store,
    SweptCall,
    UsageRow,
)
from .tool_exchange import ExchangeServices, ToolExchange, complete_exchange, with_builtin_tools
from .tool_runner import ToolRunner
from .tool_selection import offered_tools
from .tool_stream import ExchangeStream
from .tools import RegisteredTool, ToolRegistry
from .video import VideoTasks

log = logging.getLogger("llmrouter")
#: how long past its last possible attempt a call's pending row waits before the sweeper
#: may close it: time for its settlement to be written (and retried) after the call ended
SETTLE_GRACE_SECONDS = 60.0
_Func = TypeVar("_Func", bound=Callable[..., Any])


@dataclass
class ChatResult:
    """A chat call's body with what the HTTP layer puts into headers."""

    body: ChatCompletion | MeteredStream
    rate_limit: RateLimitInfo
    provider: str
    #: the call's ledger row
    request_id: str = ""
    #: what the call cost at the served model's prices (None for a stream: known at its end)
    cost_nanos: int | None = None

    def headers(self) -> dict[str, str]:
        return {**self.rate_limit.headers(), "X-LLMRouter-Provider": self.provider}


class Router:
    """An embeddable LLM router. Thread-safe: share one per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.quota = QuotaPolicy(settings.quota)
        self.dispatcher = Dispatcher(sleep=sleep)
        if store is not None and engine is not None:
            raise ValueError("give a Router store= or engine=, not both")
        # engine=: the host's own (e.g. Flask-SQLAlchemy's db.engine); database_url unused
        self.store = store or Store(
            settings.database_url,
            engine=engine,
            timeout=settings.database_timeout_seconds,
            table_prefix=settings.table_prefix,
        )
        secret_key = settings.secret_key.get_secret_value() if settings.secret_key else None
        if secret_key is None and self.store.count_stored_secrets():
            raise ConfigError(
                "the database holds provider connections whose API keys are stored "
                "encrypted under the router's secret_key: set secret_key (or "
                "secret_key_env)",
                key="secret_key",
            )
        #: provider connections managed at run time (seed 003)
        self.connections = Connections(self, SecretBox(secret_key) if secret_key else None)
        #: async video tasks (seed 001)
        self.video = VideoTasks(self, secret_key)
        # Read once per request (``self.directory``), replaced in one step when it changes.
        self._live = LiveDirectory(
            settings.providers,
            settings.aliases,
            self.store,
            self.connections.settings_of,
            # an in-memory database has no other process to hear from
            refresh_seconds=0.0 if self.store.in_memory else settings.directory_refresh_seconds,
            on_replaced=self.dispatcher.breakers.forget,
        )
        self.keys = KeyAuthenticator(self.store, ttl_seconds=settings.key_cache_seconds)
        #: the host's Python functions offered to models as tools (``tools.py``)
        self.tools = ToolRegistry()
        self._clock = clock
        self._settlements = SettlementQueue()
        #: admit -> ticket -> dispatch -> settle or release (``phases.py``)
        self.phases = RequestPhases(
            self.store, self.quota, self.keys, self.now_ms, self._settlements
        )
        # No call can last longer: an attempt may start just before max_call_seconds and
        # then run for its provider's connect and read timeouts.
        longest_attempt = max(
            p.connect_timeout + p.read_timeout for p in (*settings.providers, CONNECTION_DEFAULTS)
        )
        self._ticket_lifetime = settings.max_call_seconds + longest_attempt + SETTLE_GRACE_SECONDS
        self._tool_runner = ToolRunner(self._redact)
        self._exchange_services = ExchangeServices(
            self.phases,
            self.dispatcher,
            self._tool_runner,
            settings.tools,
            int(self._ticket_lifetime * 1000),
        )
        self.store.ensure_providers([p.name for p in settings.providers])

    @classmethod
    def from_config(
        cls, source: str | os.PathLike[str] | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Router:
        """A Router from a TOML path, a dict, or (``None``) the embedded default."""
        settings = load_settings(source)
        try:
            return cls(settings, **kwargs)
        except ConfigError as exc:
            raise exc.at(source_label(source)) from None

    @overload
    def tool(self, func: _Func, /) -> _Func: ...

    @overload
    def tool(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> Callable[[_Func], _Func]: ...

    def tool(
        self,
        func: _Func | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> _Func | Callable[[_Func], _Func]:
        """Register a function as a tool: ``@router.tool`` or ``@router.tool(name=...,
        description=..., timeout=...)``; the function is returned unchanged."""

        def register(f: _Func) -> _Func:
            self.tools.register(f, name=name, description=description, timeout=timeout)
            return f

        return register if func is None else register(func)

    def add_tool(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> RegisteredTool:
        """Register ``func`` as a tool (see ``ToolRegistry.register``)."""
        return self.tools.register(func, name=name, description=description, timeout=timeout)

    def close(self) -> None:
        """Release connections; settlements still waiting for the database get a few
        seconds, then are left to the sweeper."""
        self._settlements.close()
        self._live.close()
        self.store.close()

    @property
    def directory(self) -> ProviderDirectory:
        """The current snapshot of the providers, their adapters and models."""
        return self._live.current()

    @property
    def catalog(self) -> ModelCatalog:
        """The current snapshot's model catalog."""
        return self.directory.catalog

    def refresh_directory(self) -> None:
        """Read the store's connections now (a change made here is routable at once)."""
        self._live.refresh()

    def _resolve(self, name: str) -> tuple[ProviderDirectory, Target]:
        """The snapshot of this request and the target of ``name`` in it; a name it does
        not know is looked for once more in the store (made by another process just now)."""
        directory = self.directory
        try:
            return directory, directory.catalog.resolve(name)
        except ModelNotFoundError:
            newer = self._live.refresh_on_miss(directory)
            if newer is None:
                raise
            return newer, newer.catalog.resolve(name)

    # ------------------------------------------------------------------ chat

    # The overloads tell a type checker what ``stream`` selects: a ``ChatCompletion`` by
    # default, a ``MeteredStream`` for ``stream=True``, either for a ``bool`` known at run time.
    @overload
    def chat(
        self,
        *,
        model: str,
        messages: list[Any],
        api_key: str | None,
        stream: Literal[False] = False,
        **params: Any,
    ) -> ChatCompletion: ...

    @overload
    def chat(
        self,
        *,
        model: str,
        messages: list[Any],
        api_key: str | None,
        stream: Literal[True],
        **params: Any,
    ) -> MeteredStream: ...

    @overload
    def chat(
        self,
        *,
        model: str,
        messages: list[Any],
        api_key: str | None,
        stream: bool,
        **params: Any,
    ) -> ChatCompletion | MeteredStream: ...

    def chat(
        self,
        *,
        model: str,
        messages: list[Any],
        api_key: str | None,
        stream: bool = False,
        **params: Any,
    ) -> ChatCompletion | MeteredStream:
        """OpenAI's chat completion, in process. ``stream=True`` returns an iterator of
        ``ChatCompletionChunk`` that can be closed early."""
        body = {"model": model, "messages": messages, "stream": stream, **params}
        return self.complete(body, api_key=api_key).body

    def complete(
        self,
        body: Mapping[str, Any] | ChatRequest,
        *,
        api_key: str | None = None,
        caller: KeyRecord | None = None,
    ) -> ChatResult:
        """The whole pipeline for one request body; the HTTP layer's entry point. The
        caller is the key whose secret is ``api_key``, or ``caller`` when the host has
        authenticated it already (see ``key_for_identity``)."""
        key = caller if caller is not None else self.keys.authenticate(api_key)
        request = body if isinstance(body, ChatRequest) else parse_chat_request(body)
        # this request's snapshot, whatever changes meanwhile
        directory, target = self._resolve(request.model)
        if target.model.is_video:
            raise InvalidRequestError(
                f"The model '{target.public_id}' is a video model: create a video task "
                "(POST /v1/contents/generations/tasks) instead.",
                param="model",
                code="video_model",
            )
        request = _with_defaults(request, directory.request_defaults(target.provider))
        targets = [target, *directory.catalog.fallbacks(target)]
        key, targets = self.phases.allowed_targets(key, targets)
        tools = offered_tools(self.tools, self.settings.tools, target.model, key, request)
        sent = with_builtin_tools(request, tools) if tools else request
        reserve = max(reservation_nanos(sent, t.model) for t in targets)
        admitted = self.phases.admit(
            key,
            targets,
            reserve,
            request_id="chatcmpl-" + uuid.uuid4().hex,
            lifetime_ms=int(self._ticket_lifetime * 1000),
        )
        deadline = time.monotonic() + self.settings.max_call_seconds
        if tools:
            return self._tool_exchange(request, tools, admitted, directory, deadline)
        ticket, rate_limit, targets = admitted.ticket, admitted.rate_limit, admitted.targets
        try:
            if request.stream:
                upstream, served = self.dispatcher.stream(
                    request, targets, directory, deadline=deadline
                )
            else:
                completion, served = self.dispatcher.chat(
                    request, targets, directory, deadline=deadline
                )
        except BaseException as exc:
            self.phases.dispatch_failed(ticket, targets[0], exc)
            _with_rate_limit(exc, rate_limit)
            raise
        if request.stream:

            def on_end(end: StreamEnd) -> None:
                self.phases.settle(
                    ticket, served, end.status, end.usage, end.usage_estimated, end.error
                )

            return ChatResult(
                self._client_stream(request, upstream, served, deadline, on_end),
                rate_limit,
                served.provider,
                ticket.request_id,
            )
        usage, estimated = usage_or_estimate(request, completion)
        cost = self.phases.settle(ticket, served, "ok", usage, estimated)
        completion.model = served.public_id
        return ChatResult(completion, rate_limit, served.provider, ticket.request_id, cost)

    def _tool_exchange(
        self,
        request: ChatRequest,
        tools: list[RegisteredTool],
        admitted: Admitted,
        directory: ProviderDirectory,
        deadline: float,
    ) -> ChatResult:
        """A request offered built-in tools: the loop of ``tool_exchange.py``."""
        exchange = ToolExchange(
            self._exchange_services, request, tools, admitted, directory, deadline
        )
        request_id = admitted.ticket.request_id
        try:
            if not request.stream:
                completion = complete_exchange(exchange)
                return ChatResult(
                    completion,
                    admitted.rate_limit,
                    exchange.served.provider,
                    request_id,
                    exchange.cost_nanos,
                )
            first = exchange.dispatch_stream(exchange.round_request())
        except BaseException as exc:
            _with_rate_limit(exc, admitted.rate_limit)
            raise
        options = request.llmrouter
        chunks = ExchangeStream(exchange, first, progress=bool(options and options.tool_progress))
        stream = self._client_stream(
            request, ChunkStream(chunks, chunks.close), first[1], deadline, lambda end: None
        )
        return ChatResult(stream, admitted.rate_limit, first[1].provider, request_id)

    def _client_stream(
        self,
        request: ChatRequest,
        upstream: ChunkStream,
        served: Target,
        deadline: float,
        on_end: Callable[[StreamEnd], None],
    ) -> MeteredStream:
        stream = MeteredStream(
            upstream,
            model=served.public_id,
            include_usage=bool(request.stream_options and request.stream_options.include_usage),
            estimate_usage=lambda delivered: estimate_usage(request, delivered),
            on_end=on_end,
            deadline=deadline,
            on_dropped=lambda dropped: self._settlements.submit(dropped.close, "a dropped stream"),
        )
        self._settlements.track(stream)
        return stream

    def sweep(self, *, older_than: float | None = None) -> list[SweptCall]:
        """Close the calls left ``pending`` past their deadline (``max_call_seconds``, plus
        the longest attempt any provider allows, plus ``SETTLE_GRACE_SECONDS``, after
        admission) as ``abandoned``: their reservations are
        released, their allowance units stay used. ``older_than`` (seconds) instead takes
        every pending call admitted that long ago or more, e.g. ``0`` after a crash when
        no process is serving."""
        now = self.now_ms()
        before = None if older_than is None else now - int(older_than * 1000) + 1
        return self.store.sweep(now=now, started_before=before)

    def _redact(self, text: str) -> str:
        """``text`` without any secret this router holds (a tool's error, before a model
        reads it): provider keys and header values, the secret key, the database password."""
        own = [self.settings.secret_key.get_secret_value() if self.settings.secret_key else ""]
        own.append(self.store.engine.url.password or "")
        for redactor in (
            Redactor(own),
            *(Redactor.for_provider(p) for p in self.directory.providers),
        ):
            text = redactor.redact(text)
        return text

    def now_ms(self) -> int:
        """The router's clock (Unix milliseconds): every time the store records."""
        return int(self._clock() * 1000)

    # ------------------------------------------------------------------ models

    def models(self) -> ModelList:
        return ModelList(data=self.directory.catalog.cards())

    def model(self, model_id: str) -> ModelCard:
        directory, _ = self._resolve(model_id)
        return directory.catalog.card(model_id)

    # ------------------------------------------------------------------ keys and money

    def create_key(
        self,
        name: str,
        *,
        admin: bool = False,
        credits: Decimal | str | int = 0,
        daily_requests: int | None = None,
        throttle_seconds: int | None = None,
        requests_per_minute: int | None = None,
        allowed_models: Sequence[str] | None = None,
        allowed_providers: Sequence[str] | None = None,
        allowed_tools: Sequence[str] | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new API key and its secret (shown once; only its hash is stored).

        ``allowed_models`` (``Provider#Model`` names) and ``allowed_providers`` restrict
        what the key may call; None (the default) leaves it unrestricted. A name no
        provider has is accepted (it may be added later). ``allowed_tools``: the built-in
        tools the key may be offered (None: every one the config enables; empty: none).
        Bad values: 400 naming them."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequestError("a key needs a non-empty name", param="name")
        fields = parse_fields(
            KeyChanges,
            {
                "name": name,
                "daily_requests": daily_requests,
                "throttle_seconds": throttle_seconds,
                "requests_per_minute": requests_per_minute,
                "allowed_models": _as_list(allowed_models),
                "allowed_providers": _as_list(allowed_providers),
                "allowed_tools": _as_list(allowed_tools),
            },
        )
        checked = changes_of(fields)
        record, secret = self.store.create_key(
            checked["name"],
            is_admin=bool(admin),
            credits_nanos=_positive_nanos(credits, "credits", allow_zero=True),
            now=self.now_ms(),
            daily_requests=checked["daily_requests"],
            throttle_seconds=checked["throttle_seconds"],
            requests_per_minute=checked["requests_per_minute"],
            allowed_models=checked["allowed_models"],
            allowed_providers=checked["allowed_providers"],
            allowed_tools=checked["allowed_tools"],
        )
        self.keys.forget_all()
        return record, secret

    def get_key(self, key_id: str) -> KeyRecord:
        """One key (``NotFoundError`` for an unknown id)."""
        return self.store.get_key(_key_id(key_id))

    def update_key(self, key_id: str, /, **changes: Any) -> KeyRecord:
        """Change a key's ``name``, limits (``daily_requests``, ``throttle_seconds``,
        ``requests_per_minute``; None: back to the ``[quota]`` default) or restrictions
        (``allowed_models``, ``allowed_providers``, ``allowed_tools``; None: lifted). Only
        the fields given change. Every process sees new limits and restrictions at the
        key's next admission."""
        key_id = _key_id(key_id)
        for name in ("allowed_models", "allowed_providers", "allowed_tools"):
            if name in changes:
                changes[name] = _as_list(changes[name])
        fields = parse_fields(KeyChanges, changes)
        record = self.store.update_key(key_id, changes_of(fields))
        self.keys.forget_all()
        return record

    def rotate_key(self, key_id: str) -> tuple[KeyRecord, str]:
        """A new secret for the key (shown once). The old secret is refused at once by
        every process's next chat admission; other calls (usage) may accept it for up to
        ``key_cache_seconds`` in a process that had it cached."""
        record, secret = self.store.rotate_key(_key_id(key_id))
        self.keys.forget_all()
        return record, secret

    def authenticate(self, api_key: str | None, *, fresh: bool = False) -> KeyRecord:
        """The active key whose secret is ``api_key`` (``AuthenticationError`` otherwise);
        ``fresh`` reads the database rather than the ``key_cache_seconds`` cache."""
        return self.keys.authenticate(api_key, fresh=fresh)

    def key_for_identity(self, key_id: str) -> KeyRecord:
        """The active key a host's own login maps to (``AuthenticationError`` when it is
        unknown or revoked): the caller of a request that carries no secret."""
        try:
            record = self.store.get_key(_key_id(key_id))
        except (NotFoundError, InvalidRequestError):
            raise AuthenticationError("The signed-in user has no API key here.") from None
        if not record.active:
            raise AuthenticationError("This API key has been revoked.")
        return record

    def usage_visible_to(
        self,
        caller: KeyRecord,
        *,
        key_id: str | None = None,
        since_day: int | None = None,
        until_day: int | None = None,
    ) -> list[UsageRow]:
        """The usage ``caller`` may see: an admin any key's (all when ``key_id`` is None),
        anyone else only their own (``PermissionDeniedError`` for another key's)."""
        if key_id and key_id != caller.id and not caller.is_admin:
            raise PermissionDeniedError(
                "Only an admin key can see other keys' usage.", param="key_id"
            )
        return self.usage(
            key_id=key_id or (None if caller.is_admin else caller.id),
            since_day=since_day,
            until_day=until_day,
        )

    def healthy(self) -> bool:
        """Whether the database answers (within ``database_timeout_seconds``)."""
        try:
            self.store.ping()
        except Exception:
            return False
        return True

    def list_keys(self) -> list[KeyRecord]:
        return self.store.list_keys()

    def revoke_key(self, key_id: str) -> KeyRecord:
        record = self.store.revoke_key(_key_id(key_id), now=self.now_ms())
        self.keys.forget_all()
        return record

    def top_up(self, key_id: str, amount: Decimal | str | int) -> KeyRecord:
        """Add ``amount`` USD to a key's prepaid balance."""
        return self.store.top_up(
            _key_id(key_id), _positive_nanos(amount, "amount"), now=self.now_ms()
        )

    def usage(
        self,
        *,
        key_id: str | None = None,
        since_day: int | None = None,
        until_day: int | None = None,
    ) -> list[UsageRow]:
        return self.store.usage(
            key_id=None if key_id is None else _key_id(key_id),
            since_day=since_day,
            until_day=until_day,
        )

    def upgrade_database(self) -> str:
        """Bring the database to this version's schema revision; returns it (what
        ``llmrouter db upgrade`` does, for a router that could start)."""
        return self.store.upgrade_database()

    def database_revision(self) -> tuple[str | None, str]:
        """The database's schema revision and the one this version of llmrouter needs."""
        return self.store.database_revision()

    def provider_totals(self) -> list[ProviderTotal]:
        return self.store.provider_totals()


def _with_rate_limit(exc: BaseException, rate_limit: RateLimitInfo) -> None:
    """An error answering an admitted request carries the key's rate-limit headers."""
    if isinstance(exc, LLMRouterError):
        exc.headers = {**rate_limit.headers(), **exc.headers}


def _with_defaults(request: ChatRequest, defaults: Mapping[str, object]) -> ChatRequest:
    """``request`` with its provider's defaults for the fields it does not set."""
    missing = {name: value for name, value in defaults.items() if getattr(request, name) is None}
    if getattr(request, "max_completion_tokens", None) is not None:
        missing.pop("max_tokens", None)  # the request bounds its answer already
    return request.model_copy(update=missing) if missing else request


def _key_id(key_id: str) -> str:
    """``key_id`` if it can be one (``key_`` and hex; some stores refuse NUL or surrogates
    in a query, which must be a 400 naming it, not a database error)."""
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise InvalidRequestError(f"key_id {key_id!r:.80} is not an API key id", param="key_id")
    return key_id


_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


def _as_list(names: Any) -> Any:
    """A sequence of names as the list the checks take (a lone string stays a string, so
    it is refused as one rather than split into letters)."""
    if isinstance(names, Sequence) and not isinstance(names, str):
        return list(names)
    return names


def _positive_nanos(amount: Decimal | str | int, field: str, *, allow_zero: bool = False) -> int:
    nanos = usd_to_nanos(amount, field=field)
    if nanos < 0 or (nanos == 0 and not allow_zero):
        raise InvalidRequestError(f"{field} must be a positive amount of USD", param=field)
    return nanos

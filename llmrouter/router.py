"""The Router: authenticate, resolve, admit, dispatch, settle. Nothing else lives here."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from .billing import Prices, estimate_usage, reservation_nanos, usage_or_estimate, usd_to_nanos
from .config import KeyQuota, Settings, load_settings, source_label
from .dispatch import Dispatcher
from .errors import (
    AuthenticationError,
    ConfigError,
    InvalidRequestError,
    LLMRouterError,
    NotFoundError,
    StoreUnavailableError,
    UpstreamError,
)
from .keys import KeyAuthenticator
from .metering import MeteredStream, StreamEnd
from .naming import ModelCatalog, Target
from .providers.base import ChunkStream, ProviderAdapter
from .providers.registry import build_adapter
from .quota import QuotaPolicy, RateLimitInfo
from .schemas import (
    ChatCompletion,
    ChatRequest,
    ModelCard,
    ModelList,
    Usage,
    describe_validation_error,
    parse_chat_request,
)
from .store import (
    Admission,
    AdmissionKind,
    KeyRecord,
    ProviderTotal,
    Settlement,
    Store,
    UsageRow,
)

log = logging.getLogger("llmrouter")
#: tries to write one call's settlement before it is logged as unsettled
SETTLE_ATTEMPTS = 3


@dataclass
class ChatResult:
    """A chat call's body with what the HTTP layer puts into headers."""

    body: ChatCompletion | MeteredStream
    rate_limit: RateLimitInfo
    provider: str

    def headers(self) -> dict[str, str]:
        return {**self.rate_limit.headers(), "X-LLMRouter-Provider": self.provider}


class Router:
    """An embeddable LLM router. Thread-safe: share one per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.catalog = ModelCatalog(settings)
        self.quota = QuotaPolicy(settings.quota)
        self.adapters = _build_adapters(settings)
        self.dispatcher = Dispatcher(self.adapters, sleep=sleep)
        self._sleep = sleep
        self.store = store or Store(settings.database_url)
        self.keys = KeyAuthenticator(self.store, ttl_seconds=settings.key_cache_seconds)
        self._clock = clock
        self.store.ensure_providers(list(self.adapters))

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

    def close(self) -> None:
        for adapter in self.adapters.values():
            adapter.close()
        self.store.close()

    # ------------------------------------------------------------------ chat

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

    def complete(self, body: Mapping[str, Any] | ChatRequest, *, api_key: str | None) -> ChatResult:
        """The whole pipeline for one request body; the HTTP layer's entry point."""
        key = self.keys.authenticate(api_key)
        request = body if isinstance(body, ChatRequest) else parse_chat_request(body)
        target = self.catalog.resolve(request.model)
        targets = [target, *self.catalog.fallbacks(target)]
        reserve = max(reservation_nanos(request, t.model) for t in targets)
        admission = self._admit(key, target, reserve)
        rate_limit = self.quota.check(admission, needed_nanos=reserve)
        if admission.kind is not AdmissionKind.CREDITS:
            # Only a paid call may be served by a premium model, a fallback included (the
            # primary is never premium here: premium is paid for or refused at admission).
            targets = [t for t in targets if not t.model.premium]
        request_id = "chatcmpl-" + uuid.uuid4().hex
        try:
            if request.stream:
                upstream, served = self.dispatcher.stream(request, targets)
            else:
                completion, served = self.dispatcher.chat(request, targets)
        except BaseException as exc:
            self._dispatch_failed(request_id, targets[0], admission, exc)
            if isinstance(exc, LLMRouterError):
                exc.headers = {**rate_limit.headers(), **exc.headers}
            raise
        if request.stream:
            return ChatResult(
                self._metered(request, request_id, upstream, served, admission),
                rate_limit,
                served.provider,
            )
        usage, estimated = usage_or_estimate(request, completion)
        self._settle(request_id, served, admission, "ok", usage, estimated)
        completion.model = served.public_id
        return ChatResult(completion, rate_limit, served.provider)

    def _admit(self, key: KeyRecord, target: Target, reserve: int) -> Admission:
        try:
            return self.store.admit(
                key.id,
                now=self._now_ms(),
                defaults=self.quota.defaults,
                reserve_nanos=reserve,
                premium=target.model.premium,
            )
        except NotFoundError:
            # Revoked by another process while this one still had the key cached.
            self.keys.forget_all()
            raise AuthenticationError("This API key has been revoked.") from None

    def _metered(
        self,
        request: ChatRequest,
        request_id: str,
        upstream: ChunkStream,
        served: Target,
        admission: Admission,
    ) -> MeteredStream:
        def on_end(end: StreamEnd) -> None:
            self._settle(
                request_id, served, admission, end.status, end.usage, end.usage_estimated, end.error
            )

        return MeteredStream(
            upstream,
            model=served.public_id,
            include_usage=bool(request.stream_options and request.stream_options.include_usage),
            estimate_usage=lambda delivered: estimate_usage(request, delivered),
            on_end=on_end,
        )

    def _dispatch_failed(
        self, request_id: str, target: Target, admission: Admission, exc: BaseException
    ) -> None:
        """Account for a request no provider served: a failed call in the ledger, or, when
        no provider could even take the request, no call at all."""
        if isinstance(exc, InvalidRequestError) or (
            isinstance(exc, UpstreamError) and not exc.is_call
        ):
            self.store.release(admission)
            return
        message = exc.message if isinstance(exc, LLMRouterError) else type(exc).__name__
        self._settle(request_id, target, admission, "failed", Usage(), False, message)

    def _settle(
        self,
        request_id: str,
        served: Target,
        admission: Admission,
        status: str,
        usage: Usage,
        estimated: bool,
        error: str | None = None,
    ) -> None:
        if status == "failed":  # nothing was delivered: nothing is billed
            usage, estimated = Usage(), False
        cost = Prices.of(served.model).cost_nanos(usage.prompt_tokens, usage.completion_tokens)
        settlement = Settlement(
            request_id=request_id,
            admission=admission,
            provider=served.provider,
            model=served.public_id,
            upstream_model=served.upstream_model,
            status=status,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            usage_estimated=estimated,
            cost_nanos=cost,
            finished_at=self._now_ms(),
            error=error,
        )
        # Settling is idempotent per request id, so a database hiccup is simply retried;
        # a call that still cannot be written is logged whole, for reconciliation.
        for attempt in range(SETTLE_ATTEMPTS):
            try:
                self.store.settle(settlement)
                return
            except StoreUnavailableError:
                if attempt == SETTLE_ATTEMPTS - 1:
                    log.error("unsettled call: %r", settlement)
                    raise
                self._sleep(0.05 * 2**attempt)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # ------------------------------------------------------------------ models

    def models(self) -> ModelList:
        return ModelList(data=self.catalog.cards())

    def model(self, model_id: str) -> ModelCard:
        return self.catalog.card(model_id)

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
    ) -> tuple[KeyRecord, str]:
        """A new API key and its secret (shown once; only its hash is stored)."""
        if not name.strip():
            raise InvalidRequestError("a key needs a non-empty name", param="name")
        try:
            quota = KeyQuota(
                daily_requests=daily_requests,
                throttle_seconds=throttle_seconds,
                requests_per_minute=requests_per_minute,
            )
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            raise InvalidRequestError(message, param=param) from None
        record, secret = self.store.create_key(
            name,
            is_admin=admin,
            credits_nanos=_positive_nanos(credits, "credits", allow_zero=True),
            now=self._now_ms(),
            daily_requests=quota.daily_requests,
            throttle_seconds=quota.throttle_seconds,
            requests_per_minute=quota.requests_per_minute,
        )
        self.keys.forget_all()
        return record, secret

    def list_keys(self) -> list[KeyRecord]:
        return self.store.list_keys()

    def revoke_key(self, key_id: str) -> KeyRecord:
        record = self.store.revoke_key(key_id, now=self._now_ms())
        self.keys.forget_all()
        return record

    def top_up(self, key_id: str, amount: Decimal | str | int) -> KeyRecord:
        """Add ``amount`` USD to a key's prepaid balance."""
        return self.store.top_up(key_id, _positive_nanos(amount, "amount"), now=self._now_ms())

    def usage(
        self,
        *,
        key_id: str | None = None,
        since_day: int | None = None,
        until_day: int | None = None,
    ) -> list[UsageRow]:
        return self.store.usage(key_id=key_id, since_day=since_day, until_day=until_day)

    def provider_totals(self) -> list[ProviderTotal]:
        return self.store.provider_totals()


def _build_adapters(settings: Settings) -> dict[str, ProviderAdapter]:
    adapters = {}
    for index, provider in enumerate(settings.providers):
        try:
            adapters[provider.name] = build_adapter(provider)
        except ConfigError as exc:
            raise exc.at("", f"providers[{index}]({provider.name})") from None
    return adapters


def _positive_nanos(amount: Decimal | str | int, field: str, *, allow_zero: bool = False) -> int:
    nanos = usd_to_nanos(amount, field=field)
    if nanos < 0 or (nanos == 0 and not allow_zero):
        raise InvalidRequestError(f"{field} must be a positive amount of USD", param=field)
    return nanos

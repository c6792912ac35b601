"""A provider connection's fields (seed 003): what a client may send, how it is checked,
what becomes of it in the router (``ProviderSettings``), and how it is shown.

Input is strict and names the first bad field (``400`` with ``field`` set); unknown fields
are refused. A connection's kind is seed 003's ``provider``: ``openai``, ``anthropic``,
``custom`` (any OpenAI-compatible server, ``baseUrl`` required), and every other kind the
router has (``gemini``, ``mistral``, ``openai-compatible``, and the offline ``echo``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
)

from ..billing import nanos_to_usd
from ..config import (
    INT32_MAX,
    PROVIDER_NAME_PATTERN,
    ModelSettings,
    ProviderSettings,
    RequestDefaults,
)
from ..errors import InvalidRequestError
from ..naming import MAX_MODEL_NAME, table_priced
from ..schemas import parse_body
from ..secrets import mask
from ..store import ConnectionRecord

#: seed 003's provider names -> the adapter kind that speaks to them
KINDS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "custom": "openai-compatible",
    "openai-compatible": "openai-compatible",
    "gemini": "gemini",
    "mistral": "mistral",
    "echo": "echo",
}
#: kinds whose upstream needs a key (a custom server may not: a local vLLM, say)
NEEDS_API_KEY = frozenset({"openai", "anthropic", "gemini", "mistral"})
NEEDS_BASE_URL = frozenset({"custom", "openai-compatible"})
STATUSES = ("active", "error", "disabled")
MAX_MODELS = 200
#: the most a listed model may cost per token (USD): far above any real price, and low
#: enough that no call's cost overflows the 64-bit columns it is added to
MAX_PRICE = Decimal(1)
#: the most decimals a price may have (a price finer than 1e-30 USD a token is a typo)
MAX_PRICE_DECIMALS = 30
CONFIG_ID_PREFIX = "config-"


def _printable(value: str) -> str:
    if any(unicodedata.category(c).startswith("C") for c in value):
        raise ValueError("no control characters are allowed")
    return value


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a base URL is an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("a base URL carries no credentials: give the key as apiKey")
    if parts.query or parts.fragment:
        raise ValueError("a base URL has no query or fragment")
    return value.rstrip("/")


_Name = Annotated[
    str,
    StringConstraints(max_length=100, pattern=PROVIDER_NAME_PATTERN),
    AfterValidator(_printable),  # nor invisible ones (a right-to-left override, say)
]
_ModelId = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_printable)
]
_ApiKey = Annotated[
    str, StringConstraints(min_length=1, max_length=4000), AfterValidator(_printable)
]
_BaseUrl = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_base_url)]


class ConnectionModel(ModelSettings):
    """A model a connection lists: ``[[providers.models]]``'s fields, without fallbacks
    (a fallback would tie one connection's routing to another's existence), and with
    bounds a config file is trusted to keep: prices and lengths a bill can hold."""

    context_length: int | None = Field(default=None, ge=1, le=INT32_MAX)
    max_output_length: int | None = Field(default=None, ge=1, le=INT32_MAX)

    @field_validator("id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        return _printable(value)

    @field_validator("prompt_price", "completion_price")
    @classmethod
    def _bounded_price(cls, value: Decimal) -> Decimal:
        # ``value`` is finite and not negative (ModelSettings checked); it is bounded here
        # before any arithmetic: "1e400" would overflow the ledger at the first call.
        _, digits, exponent = value.as_tuple()
        assert isinstance(exponent, int)
        if value > MAX_PRICE or len(digits) > MAX_PRICE_DECIMALS or -exponent > MAX_PRICE_DECIMALS:
            raise ValueError(
                f"a price is at most {MAX_PRICE} USD per token, with at most "
                f"{MAX_PRICE_DECIMALS} decimals"
            )
        return value

    @field_validator("fallbacks")
    @classmethod
    def _no_fallbacks(cls, value: list[str]) -> list[str]:
        if value:
            raise ValueError("a connection's models have no fallbacks")
        return value


class ConnectionChanges(BaseModel):
    """``PATCH /llm-providers/{id}``: the fields given change, the others stay; ``null``
    clears ``model``, ``baseUrl`` or ``apiKey``."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    name: _Name | None = None
    provider: str | None = None
    api_key: _ApiKey | None = Field(default=None, alias="apiKey")
    model: _ModelId | None = None
    base_url: _BaseUrl | None = Field(default=None, alias="baseUrl")
    configuration: RequestDefaults | None = None
    models: list[ConnectionModel] | None = Field(default=None, max_length=MAX_MODELS)
    #: ``disabled`` stops routing; ``active`` starts it again (``error`` is set by a test)
    status: str | None = None

    @field_validator("provider")
    @classmethod
    def _known_kind(cls, value: str | None) -> str | None:
        if value is not None and value not in KINDS:
            raise ValueError(f"unknown provider '{value}'; known: {', '.join(KINDS)}")
        return value

    @field_validator("status")
    @classmethod
    def _settable_status(cls, value: str | None) -> str | None:
        if value is not None and value not in ("active", "disabled"):
            raise ValueError("status is 'active' or 'disabled'")
        return value


class NewConnection(ConnectionChanges):
    """``POST /llm-providers``: ``name`` and ``provider`` are required."""

    name: _Name
    provider: str


def parse(model: type[ConnectionChanges], body: Any) -> ConnectionChanges:
    return parse_body(model, body)  # no lone surrogate, in any field, reaches the database


def settings_of(
    *,
    name: str,
    provider: str,
    api_key: str | None,
    base_url: str | None,
    model: str | None,
    configuration: Mapping[str, Any],
    models: list[dict[str, Any]],
) -> ProviderSettings:
    """The router's settings of a connection: its kind's adapter, its models, and any
    other model priced from the price table (``unlisted_pricing = "table"``)."""
    kind = KINDS[provider]
    # the offline echo kind costs nothing; every other kind is priced by the table
    pricing: Literal["fixed", "table"] = "fixed" if kind == "echo" else "table"
    listed = [ModelSettings.model_validate(m) for m in models]
    if model and all(m.id != model for m in listed):
        # the default model is listed, at the price table's price
        listed.append(
            ModelSettings(id=model) if pricing == "fixed" else table_priced(kind, model, base_url)
        )
    return ProviderSettings(
        name=name,
        kind=kind,
        base_url=base_url,
        api_key=SecretStr(api_key) if api_key else None,
        allow_unlisted_models=True,
        unlisted_pricing=pricing,
        request_defaults=RequestDefaults.model_validate(configuration),
        models=listed,
    )


def check_complete(
    provider: str, *, api_key: str | None, base_url: str | None, had_key: bool = False
) -> None:
    """The fields a kind needs, given (after a change: ``had_key`` when one is stored)."""
    if provider in NEEDS_API_KEY and not (api_key or had_key):
        raise InvalidRequestError(
            f"A '{provider}' connection needs an apiKey.", param="apiKey", code="missing_field"
        )
    if provider in NEEDS_BASE_URL and not base_url:
        raise InvalidRequestError(
            f"A '{provider}' connection needs a baseUrl (the OpenAI-compatible server).",
            param="baseUrl",
            code="missing_field",
        )


def check_routable(name: str, model: str | None, models: list[dict[str, Any]]) -> None:
    """Every model a connection names can be asked for: ``name#model`` is no longer than a
    request's ``model`` may be (a connection that cannot route is never stored)."""
    named = [("model", model)] if model else []
    named += [(f"models[{i}].id", m["id"]) for i, m in enumerate(models)]
    for field, model_id in named:
        if len(name) + 1 + len(model_id) > MAX_MODEL_NAME:
            raise InvalidRequestError(
                f"Invalid '{field}': '{name}#{model_id}' is longer than {MAX_MODEL_NAME} "
                "characters, the longest model name a request may send: shorten the "
                "connection's name or the model id.",
                param=field,
            )


def view(record: ConnectionRecord) -> dict[str, Any]:
    """A connection as responses show it: seed 003's fields, the apiKey only masked."""
    return {
        "id": record.id,
        "name": record.name,
        "provider": record.provider,
        "model": record.model,
        "baseUrl": record.base_url,
        "apiKey": record.api_key_hint,
        "configuration": RequestDefaults.model_validate(record.configuration).model_dump(
            by_alias=True, exclude_none=True
        ),
        "models": record.models,
        "status": record.status,
        "statusReason": record.status_reason,
        "totalCost": nanos_to_usd(record.total_cost_nanos),
        "source": record.source,
        "createdAt": _iso(record.created_at),
        "updatedAt": _iso(record.updated_at),
    }


def config_record(settings: ProviderSettings, total_cost_nanos: int) -> ConnectionRecord:
    """A config-file provider, shown beside the connections (read-only)."""
    secret = settings.secret()
    return ConnectionRecord(
        id=CONFIG_ID_PREFIX + settings.name,
        name=settings.name,
        provider=settings.kind,
        model=settings.models[0].id if settings.models else None,
        base_url=settings.base_url,
        api_key_hint=mask(secret) if secret else None,
        configuration=settings.request_defaults.fields(),
        models=[m.model_dump(mode="json") for m in settings.models],
        status="active",
        status_reason=None,
        total_cost_nanos=total_cost_nanos,
        created_at=None,
        updated_at=None,
        source="config",
    )


def _iso(millis: int | None) -> str | None:
    if millis is None:
        return None
    moment = datetime.fromtimestamp(millis / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

"""Typed settings of a Router, read from one TOML file or a dict.

Every problem is reported as one ``ConfigError`` naming the file and the dotted key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from .errors import ConfigError
from .tools import TOOL_NAME

DEFAULT_SAMPLING_PARAMETERS = [
    "temperature",
    "top_p",
    "stop",
    "seed",
    "max_tokens",
    "presence_penalty",
    "frequency_penalty",
]


#: quota numbers live in 32-bit INTEGER columns
INT32_MAX = 2**31 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _decimal_price(value: Any) -> Decimal:
    # A TOML float has already lost exactness (0.0000006 is not representable), so prices
    # must be written as strings; integers are exact and accepted.
    if isinstance(value, float):
        raise ValueError('write prices as decimal strings, e.g. "0.0000006"')
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal number") from None
    if not price.is_finite() or price < 0:
        raise ValueError("a price is a finite, non-negative number of USD per token")
    return price


PROVIDER_NAME_PATTERN = r"^[^#\s\x00-\x1f\x7f](?:[^#\x00-\x1f\x7f]*[^#\s\x00-\x1f\x7f])?$"


class ModelSettings(_Strict):
    """One model a provider offers (``[[providers.models]]``)."""

    id: str = Field(min_length=1, max_length=200)
    name: str | None = None
    description: str = ""
    created: int = 0
    prompt_price: Decimal = Decimal(0)
    completion_price: Decimal = Decimal(0)
    context_length: int | None = Field(default=None, ge=1)
    max_output_length: int | None = Field(default=None, ge=1)
    input_modalities: list[str] = ["text"]
    output_modalities: list[str] = ["text"]
    supported_sampling_parameters: list[str] = DEFAULT_SAMPLING_PARAMETERS
    supported_features: list[str] = ["streaming"]
    premium: bool = False
    fallbacks: list[str] = []
    #: whether the router's built-in tools (``[tools]``) are offered to this model
    tools: bool = True
    # ---- video models (``output_modalities = ["video"]``, on an ``ark`` or ``openrouter``
    # provider): what a task may ask for, and its price — per token (``completion_price``,
    # as Ark bills) or per second by resolution (``price_per_second``)
    resolutions: list[str] = []
    ratios: list[str] = []
    min_duration: int = Field(default=1, ge=1, le=3600)
    max_duration: int = Field(default=12, ge=1, le=3600)
    default_duration: int | None = Field(default=None, ge=1, le=3600)
    fps: int = Field(default=24, ge=1, le=240)
    price_per_second: dict[str, Decimal] = {}

    @field_validator("price_per_second", mode="before")
    @classmethod
    def _second_prices(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _decimal_price(v) for k, v in value.items()}
        return value

    @property
    def is_video(self) -> bool:
        return "video" in self.output_modalities

    _price = field_validator("prompt_price", "completion_price", mode="before")(
        classmethod(lambda cls, v: _decimal_price(v))
    )


class RequestDefaults(_Strict):
    """Sampling fields a provider applies to requests that do not set them. Written with
    OpenAI's names (``max_tokens``) or seed 003's (``maxTokens``)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, alias_generator=to_camel, populate_by_name=True
    )

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = Field(default=None, max_length=4)

    def fields(self) -> dict[str, Any]:
        """The fields set, by OpenAI's names."""
        return self.model_dump(exclude_none=True)


class ProviderSettings(_Strict):
    """One upstream connection (``[[providers]]``)."""

    #: no '#', no control characters, no space at either end (inner spaces are allowed:
    #: seed 003 names connections like "OpenAI Production")
    name: str = Field(min_length=1, max_length=100, pattern=PROVIDER_NAME_PATTERN)
    kind: str
    aliases: list[str] = []
    base_url: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    headers: dict[str, str] = {}
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=120.0, gt=0)
    # Read by the dispatcher in one place (``Dispatcher.policy``).
    max_retries: int = Field(default=2, ge=0, le=10)
    retry_backoff: float = Field(default=0.5, ge=0)
    #: circuit breakers (``breakers.py``): a deployment, or the whole provider, opens after
    #: this many failed requests in a row (each counted once, after its retries) ...
    cooldown_after: int = Field(default=3, ge=1)
    #: ... and is skipped this long before one probe request; 0 turns the breakers off
    cooldown_seconds: float = Field(default=30.0, ge=0)
    allow_unlisted_models: bool = False
    #: how a model the provider does not list is priced: ``fixed`` at the two prices below,
    #: or ``table`` from the price table (``llmrouter.price_table``), refused if unknown there
    unlisted_pricing: Literal["fixed", "table"] = "fixed"
    unlisted_prompt_price: Decimal = Decimal(0)
    unlisted_completion_price: Decimal = Decimal(0)
    #: request fields applied to a request served by this provider when it does not set
    #: them (OpenAI's names: ``temperature``, ``max_tokens``, …)
    request_defaults: RequestDefaults = Field(default_factory=lambda: RequestDefaults())
    stream_usage: bool = True
    drop_fields: list[str] = []
    max_answer_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    models: list[ModelSettings] = []

    _price = field_validator("unlisted_prompt_price", "unlisted_completion_price", mode="before")(
        classmethod(lambda cls, v: _decimal_price(v))
    )

    def secret(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None


class QuotaSettings(_Strict):
    """Fair-use defaults (``[quota]``); each key may override them."""

    daily_requests: int = Field(default=200, ge=0, le=INT32_MAX)
    throttle_seconds: int = Field(default=600, ge=1, le=INT32_MAX)
    requests_per_minute: int | None = Field(default=None, ge=1, le=INT32_MAX)


class KeyQuota(_Strict):
    """One key's overrides of ``[quota]``; ``None`` keeps the default."""

    daily_requests: int | None = Field(default=None, ge=0, le=INT32_MAX)
    throttle_seconds: int | None = Field(default=None, ge=1, le=INT32_MAX)
    requests_per_minute: int | None = Field(default=None, ge=1, le=INT32_MAX)


class ToolSettings(_Strict):
    """``[tools]``: the router's built-in tools (Python functions registered with
    ``@router.tool``) and the loop that runs them."""

    #: the registered tools offered to models (None: every one registered; a name that is
    #: not registered is not offered)
    enabled: list[str] | None = None
    #: an exchange calls the model at most this many times; past it the last answer is
    #: returned with ``finish_reason`` ``length``
    max_tool_rounds: int = Field(default=8, ge=1, le=100)
    #: how long one tool call may run when its registration gives no ``timeout``
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("enabled")
    @classmethod
    def _tool_names(cls, value: list[str] | None) -> list[str] | None:
        # a name no tool could be registered under is a typo, not a tool not yet written
        for name in value or []:
            if not TOOL_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a tool name: 1 to 64 letters, digits, '_' or '-'"
                )
        return value


class Settings(_Strict):
    """The whole configuration of one Router."""

    database_url: str = "sqlite:///llmrouter.db"
    secret_key: SecretStr | None = None
    secret_key_env: str | None = None
    service_name: str = "llmrouter"
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    key_cache_seconds: float = Field(default=10.0, ge=0)
    #: no call lasts longer: retries stop and a stream is cut (billed partial) past it
    max_call_seconds: float = Field(default=1800.0, gt=0, le=7 * 86400)
    #: connect, statement and lock-wait timeout of every database operation
    database_timeout_seconds: float = Field(default=5.0, gt=0, le=3600)
    #: the store's table names start with it (its Alembic version table too)
    table_prefix: str = Field(default="llmrouter_", pattern=r"^[a-z][a-z0-9_]{0,29}$")
    #: how often a process looks for provider connections changed by another (0: only when
    #: a name misses; an in-memory database never does, having no other process)
    directory_refresh_seconds: float = Field(default=1.0, ge=0, le=3600)
    #: a video task is polled upstream at most this often, whatever the clients do
    video_poll_seconds: float = Field(default=1.5, gt=0, le=600)
    #: a video task not ended this long after its creation is ended as expired
    video_task_expiry_seconds: float = Field(default=86400.0, ge=60, le=30 * 86400)
    #: how often ``llmrouter serve`` sweeps abandoned calls (0: never; see ``Router.sweep``)
    sweep_every_seconds: float = Field(default=60.0, ge=0)
    quota: QuotaSettings = QuotaSettings()
    tools: ToolSettings = ToolSettings()
    aliases: dict[str, str] = {}
    providers: list[ProviderSettings] = Field(default_factory=list)


#: the settings a provider connection has beyond its fields (timeouts, retries, breakers)
CONNECTION_DEFAULTS = ProviderSettings(name="connection", kind="openai-compatible")

EMBEDDED_DEFAULT: dict[str, Any] = {
    "database_url": "sqlite:///llmrouter.db",
    "providers": [
        {
            "name": "echo",
            "kind": "echo",
            "allow_unlisted_models": True,
            "models": [
                {
                    "id": "echo",
                    "name": "Echo",
                    "description": "Offline and deterministic: answers with the last user message.",
                    "context_length": 131072,
                    "max_output_length": 4096,
                    "supported_features": ["streaming", "tools"],
                }
            ],
        }
    ],
}


def source_label(source: str | os.PathLike[str] | Mapping[str, Any] | None) -> str:
    """How errors name a config source: its path, ``<dict>`` or ``<embedded default>``."""
    if source is None:
        return "<embedded default>"
    return "<dict>" if isinstance(source, Mapping) else str(source)


def load_settings(source: str | os.PathLike[str] | Mapping[str, Any] | None) -> Settings:
    """Read settings from a TOML path, a dict, or (``None``) the embedded default."""
    label = source_label(source)
    if source is None:
        return _validate(EMBEDDED_DEFAULT, label)
    if isinstance(source, Mapping):
        return _validate(dict(source), label)
    path = Path(source)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("no such file", source=label) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML ({exc})", source=label) from None
    return _validate(data, label)


def _validate(data: dict[str, Any], label: str) -> Settings:
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = _dotted(first["loc"], data)
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(message, source=label, key=key) from None
    _resolve_env_secrets(settings, label)
    _check_references(settings, label)
    return settings


def _dotted(loc: tuple[Any, ...], data: Any) -> str:
    """``("providers", 0, "kind")`` -> ``providers[0](openai).kind`` (entries named if they can)."""
    key = ""
    node = data
    for item in loc:
        try:
            node = node[item]
        except (KeyError, IndexError, TypeError):
            node = None
        if isinstance(item, int):
            name = node.get("name") if isinstance(node, dict) else None
            key += f"[{item}]" + (f"({name})" if name else "")
        else:
            key += ("." if key else "") + str(item)
    return key


def _resolve_env_secrets(settings: Settings, label: str) -> None:
    if settings.secret_key_env:
        value = os.environ.get(settings.secret_key_env)
        if not value:
            raise ConfigError(
                f"environment variable {settings.secret_key_env} is not set",
                source=label,
                key="secret_key_env",
            )
        settings.secret_key = SecretStr(value)
    for index, provider in enumerate(settings.providers):
        if provider.api_key_env:
            value = os.environ.get(provider.api_key_env)
            if not value:
                raise ConfigError(
                    f"environment variable {provider.api_key_env} is not set",
                    source=label,
                    key=f"providers[{index}]({provider.name}).api_key_env",
                )
            provider.api_key = SecretStr(value)


def _check_references(settings: Settings, label: str) -> None:
    seen: dict[str, str] = {}
    for index, provider in enumerate(settings.providers):
        for name in [provider.name, *provider.aliases]:
            folded = name.lower()
            if folded in seen:
                raise ConfigError(
                    f"provider name '{name}' is already used by '{seen[folded]}'",
                    source=label,
                    key=f"providers[{index}]({provider.name}).name",
                )
            seen[folded] = provider.name
        ids = [m.id for m in provider.models]
        duplicate = next((i for i in ids if ids.count(i) > 1), None)
        if duplicate:
            raise ConfigError(
                f"model '{duplicate}' is listed twice",
                source=label,
                key=f"providers[{index}]({provider.name}).models",
            )

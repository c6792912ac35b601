"""API keys: authentication with a short TTL cache in front of the store, and the checks of
a key's fields (limits, restrictions) shared by ``Router``, the CLI and the HTTP routes."""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from cachetools import TTLCache
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

from .billing import nanos_to_usd
from .config import INT32_MAX
from .errors import AuthenticationError, InvalidRequestError
from .naming import MAX_MODEL_NAME
from .schemas import parse_body
from .store import KeyRecord, Store, hash_secret
from .tools import TOOL_NAME

#: at most this many entries in each of ``allowed_models`` / ``allowed_providers`` /
#: ``allowed_tools``
MAX_RESTRICTIONS = 100
MAX_PROVIDER_NAME = 100
#: the lists of names a key may hold (JSON lists in the store)
NAME_LISTS = ("allowed_models", "allowed_providers", "allowed_tools")


def _printable(name: str) -> str:
    # NUL reaches PostgreSQL as an error, escapes reach a terminal's `keys list`.
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise ValueError("a name has no control characters")
    return name


_Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_printable),
]
_ModelName = Annotated[str, StringConstraints(min_length=3, max_length=MAX_MODEL_NAME)]
_ProviderName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROVIDER_NAME)]


class KeyChanges(BaseModel):
    """What may change on a key (``PATCH /v1/keys/{id}``, ``Router.update_key``). A field
    left out stays; ``null`` puts a limit back to the ``[quota]`` default and lifts a
    restriction. Types are strict: ``"5"`` is not a number, ``true`` not a limit."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: _Name | None = None
    daily_requests: int | None = Field(default=None, ge=0, le=INT32_MAX)
    throttle_seconds: int | None = Field(default=None, ge=1, le=INT32_MAX)
    requests_per_minute: int | None = Field(default=None, ge=1, le=INT32_MAX)
    #: ``Provider#Model`` names; a name no provider has (yet) is accepted, since a model
    #: or a provider connection may be added later, and simply matches nothing until then
    allowed_models: list[_ModelName] | None = Field(default=None, max_length=MAX_RESTRICTIONS)
    allowed_providers: list[_ProviderName] | None = Field(default=None, max_length=MAX_RESTRICTIONS)
    #: the router's built-in tools the key may be offered (``[]``: none; ``null``: every
    #: one the config enables); a name no tool has (yet) is accepted, as for models
    allowed_tools: list[str] | None = Field(default=None, max_length=MAX_RESTRICTIONS)


class NewKey(KeyChanges):
    """``POST /v1/keys``: a name, and every other field optional."""

    name: _Name
    admin: bool = False
    #: USD as a decimal string ("5.00"): money never travels as a float
    credits: str = "0"


class TopUp(BaseModel):
    """``POST /v1/keys/{id}/topup``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    amount: str


Fields = TypeVar("Fields", bound=BaseModel)


def parse_fields(model: type[Fields], fields: Mapping[str, Any]) -> Fields:
    """``fields`` checked by ``model``; 400 naming the first bad field otherwise."""
    parsed = parse_body(model, fields)
    for name in NAME_LISTS:
        names = getattr(parsed, name, None)
        if names is not None:
            tools = name == "allowed_tools"
            setattr(parsed, name, _checked_tools(names) if tools else _checked_names(name, names))
    return parsed


def changes_of(parsed: KeyChanges) -> dict[str, Any]:
    """The columns a parsed change sets (only the fields it was given)."""
    changes = {name: getattr(parsed, name) for name in parsed.model_fields_set}
    if "name" in changes and changes["name"] is None:
        raise InvalidRequestError("Invalid 'name': a key needs a non-empty name.", param="name")
    for name in NAME_LISTS:
        if changes.get(name) is not None:
            changes[name] = tuple(changes[name])
    return {name: value for name, value in changes.items() if name in KeyChanges.model_fields}


def _checked_names(field: str, names: list[str]) -> list[str]:
    """The names without repeats (as the router compares them: case-insensitively); a model
    must be named ``Provider#Model``, since an alias or a bare id may come to mean another
    model, and a restriction must not drift with it."""
    unique: dict[str, str] = {}
    for index, name in enumerate(names):
        where = f"{field}[{index}]"
        if any(unicodedata.category(c).startswith("C") for c in name) or name != name.strip():
            raise InvalidRequestError(
                f"Invalid '{where}': names have no control characters or surrounding spaces.",
                param=where,
            )
        provider, sep, model = name.partition("#")
        if field == "allowed_models" and not (sep and provider and model):
            raise InvalidRequestError(
                f"Invalid '{where}': {name!r:.80} is not a Provider#Model name (aliases and "
                "bare model ids are refused: what they name may change).",
                param=where,
            )
        if field == "allowed_providers" and sep:
            raise InvalidRequestError(
                f"Invalid '{where}': a provider name has no '#' (list models in allowed_models).",
                param=where,
            )
        unique.setdefault(name.casefold(), name)
    return list(unique.values())


def _checked_tools(names: list[str]) -> list[str]:
    """Tool names as ``@router.tool`` takes them, without repeats (compared exactly, as a
    model calls a tool)."""
    for index, name in enumerate(names):
        if not TOOL_NAME.fullmatch(name):
            where = f"allowed_tools[{index}]"
            raise InvalidRequestError(
                f"Invalid '{where}': {name!r:.80} is not a tool name (1 to 64 letters, digits, "
                "'_' or '-').",
                param=where,
            )
    return list(dict.fromkeys(names))


def key_view(record: KeyRecord) -> dict[str, Any]:
    """A key as the API and ``keys … --json`` show it: never its secret nor its hash.
    Amounts are USD decimal strings; times are Unix seconds; a limit of None is the
    ``[quota]`` default; a restriction of None does not restrict."""
    return {
        "object": "api_key",
        "id": record.id,
        "name": record.name,
        "hint": record.hint,
        "admin": record.is_admin,
        "revoked": record.revoked_at is not None,
        "created_at": record.created_at // 1000,
        "revoked_at": None if record.revoked_at is None else record.revoked_at // 1000,
        "balance": nanos_to_usd(record.balance_nanos),
        "spent": nanos_to_usd(record.spent_nanos),
        "daily_requests": record.daily_requests,
        "throttle_seconds": record.throttle_seconds,
        "requests_per_minute": record.requests_per_minute,
        "allowed_models": _listed(record.allowed_models),
        "allowed_providers": _listed(record.allowed_providers),
        "allowed_tools": _listed(record.allowed_tools),
    }


def _listed(names: tuple[str, ...] | None) -> list[str] | None:
    return None if names is None else list(names)


class KeyAuthenticator:
    """Turns a bearer secret into its key record. Unknown secrets are cached too, so a
    flood of bad keys does not reach the database; ``forget`` drops a secret at once.

    A cached record may be up to ``ttl_seconds`` old: what must hold at once in every
    process (a revocation, a rotation, a change of restrictions) is checked again by the
    admission statement, which refuses a request decided on an older record."""

    def __init__(self, store: Store, *, ttl_seconds: float, maxsize: int = 10_000) -> None:
        self._store = store
        self._cache: TTLCache[str, KeyRecord | None] | None = (
            TTLCache(maxsize=maxsize, ttl=ttl_seconds) if ttl_seconds > 0 else None
        )
        self._lock = threading.Lock()

    def authenticate(self, secret: str | None, *, fresh: bool = False) -> KeyRecord:
        """The active key of ``secret``; ``fresh`` reads the store, not the cache."""
        if not secret:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        digest = hash_secret(secret)
        if fresh:
            self.forget(digest)
        return _active(self._lookup(digest), "Incorrect API key provided.")

    def refresh(self, record: KeyRecord) -> KeyRecord:
        """``record`` read again from the store: by the secret it was found by, else by id.
        ``AuthenticationError`` when that secret or key is no longer active."""
        if record.secret_hash is None:
            return _active(self._store.get_key(record.id), "This API key has been revoked.")
        self.forget(record.secret_hash)
        found = self._lookup(record.secret_hash)
        return _active(found, "This API key's secret was rotated or revoked.")

    def _lookup(self, digest: str) -> KeyRecord | None:
        if self._cache is None:
            return self._store.find_key(digest)
        with self._lock:
            if digest in self._cache:
                return self._cache[digest]
        record = self._store.find_key(digest)
        with self._lock:
            self._cache[digest] = record
        return record

    def forget(self, digest: str) -> None:
        """Drop the cached answer for one secret's hash."""
        if self._cache is not None:
            with self._lock:
                self._cache.pop(digest, None)

    def forget_all(self) -> None:
        """Drop every cached answer (after a key is created, revoked or changed here)."""
        if self._cache is not None:
            with self._lock:
                self._cache.clear()


def _active(record: KeyRecord | None, unknown: str) -> KeyRecord:
    if record is None:
        raise AuthenticationError(unknown)
    if not record.active:
        raise AuthenticationError("This API key has been revoked.")
    return record

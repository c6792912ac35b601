"""API keys in the store: created with a secret shown once, found by its hash, changed,
rotated to a new secret, revoked, topped up. A part of ``Store``; its transactions are the
store's."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import BigInteger, Connection, bindparam, insert, select, update
from sqlalchemy.sql.elements import ColumnElement

from ..billing import MAX_BALANCE_NANOS, nanos_to_usd
from ..errors import InvalidRequestError, NotFoundError
from .records import KeyRecord
from .tables import Tables

SECRET_PREFIX = "sk-llmr-"
#: the key columns ``update_key`` may change (the limits: None means "the default")
CHANGEABLE = frozenset(
    {
        "name",
        "daily_requests",
        "throttle_seconds",
        "requests_per_minute",
        "allowed_models",
        "allowed_providers",
        "allowed_tools",
    }
)
_RESTRICTIONS = frozenset({"allowed_models", "allowed_providers", "allowed_tools"})


def hash_secret(secret: str) -> str:
    """Keys are 192 random bits, so a plain SHA-256 is enough (no slow KDF needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStatements:
    """The key statements on one prefix's tables (bind names: ``k_`` and the column)."""

    def __init__(self, tables: Tables) -> None:
        api_keys, top_ups = tables.api_keys, tables.top_ups
        self.table = api_keys
        _k = api_keys.c
        self.insert = insert(api_keys)
        self.by_hash = select(api_keys).where(_k.secret_hash == bindparam("k_hash"))
        self.by_id = select(api_keys).where(_k.id == bindparam("k_id"))
        self.all = select(api_keys).order_by(_k.created_at, _k.id)
        self.revoke = (
            update(api_keys)
            .where(_k.id == bindparam("k_id"), _k.revoked_at.is_(None))
            .values(revoked_at=bindparam("k_now"))
        )
        amount = bindparam("k_amount", type_=BigInteger)
        self.top_up = (
            update(api_keys)
            .where(_k.id == bindparam("k_id"), _k.balance_nanos <= MAX_BALANCE_NANOS - amount)
            .values(
                balance_nanos=_k.balance_nanos + amount,
                topped_up_nanos=_k.topped_up_nanos + amount,
            )
        )
        self.top_up_record = insert(top_ups)
        self.rotate = (
            update(api_keys)
            .where(_k.id == bindparam("k_id"), _k.revoked_at.is_(None))
            .values(secret_hash=bindparam("k_hash"), secret_hint=bindparam("k_hint"))
        )


class KeyStore:
    """The key operations of ``Store``, which provides ``transaction`` and the statements."""

    transaction: Callable[..., AbstractContextManager[Connection]]
    _keys: KeyStatements

    def create_key(
        self,
        name: str,
        *,
        is_admin: bool = False,
        credits_nanos: int = 0,
        now: int,
        daily_requests: int | None = None,
        throttle_seconds: int | None = None,
        requests_per_minute: int | None = None,
        allowed_models: tuple[str, ...] | None = None,
        allowed_providers: tuple[str, ...] | None = None,
        allowed_tools: tuple[str, ...] | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key and its secret. The secret is returned once and never stored."""
        secret = _new_secret()
        key_id = "key_" + secrets.token_hex(8)
        with self.transaction() as conn:
            conn.execute(
                self._keys.insert,
                {
                    "id": key_id,
                    "name": name,
                    "secret_hash": hash_secret(secret),
                    "secret_hint": _hint(secret),
                    "allowed_models": _names_column(allowed_models),
                    "allowed_providers": _names_column(allowed_providers),
                    "allowed_tools": _names_column(allowed_tools),
                    "restrictions_version": 0,
                    "is_admin": is_admin,
                    "created_at": now,
                    "revoked_at": None,
                    "daily_requests": daily_requests,
                    "throttle_seconds": throttle_seconds,
                    "requests_per_minute": requests_per_minute,
                    "balance_nanos": 0,
                    "spent_nanos": 0,
                    "topped_up_nanos": 0,
                    "quota_day": 0,
                    "day_count": 0,
                    "next_slot_at": 0,
                    "minute": 0,
                    "minute_count": 0,
                    "last_admission": 0,
                },
            )
            if credits_nanos:
                self._top_up(conn, key_id, credits_nanos, now)
        return self.get_key(key_id), secret

    def find_key(self, secret_hash: str) -> KeyRecord | None:
        """The key whose secret hashes to ``secret_hash`` (see ``hash_secret``)."""
        with self.transaction(read_only=True) as conn:
            row = conn.execute(self._keys.by_hash, {"k_hash": secret_hash}).first()
        return _key_record(row, found_by_hash=True) if row else None

    def get_key(self, key_id: str) -> KeyRecord:
        with self.transaction(read_only=True) as conn:
            row = conn.execute(self._keys.by_id, {"k_id": key_id}).first()
        if row is None:
            raise NotFoundError(f"no API key with id '{key_id}'", param="key_id")
        return _key_record(row)

    def list_keys(self) -> list[KeyRecord]:
        with self.transaction(read_only=True) as conn:
            rows = conn.execute(self._keys.all).all()
        return [_key_record(r) for r in rows]

    def revoke_key(self, key_id: str, *, now: int) -> KeyRecord:
        with self.transaction() as conn:
            conn.execute(self._keys.revoke, {"k_id": key_id, "k_now": now})
        return self.get_key(key_id)

    def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord:
        """Change the columns named in ``changes`` (``CHANGEABLE``; values checked by the
        caller). A change of the restrictions bumps their version, so admissions decided
        on the old ones, in any process, are made again."""
        unknown = set(changes) - CHANGEABLE
        if unknown:
            raise ValueError(f"not changeable: {sorted(unknown)}")
        _k = self._keys.table.c
        values: dict[Any, Any] = {
            name: _names_column(value) if name in _RESTRICTIONS else value
            for name, value in changes.items()
        }
        if _RESTRICTIONS & set(changes):
            bumped: ColumnElement[int] = _k.restrictions_version + 1
            values["restrictions_version"] = bumped
        if values:
            with self.transaction() as conn:
                conn.execute(update(self._keys.table).where(_k.id == key_id).values(values))
        return self.get_key(key_id)

    def rotate_key(self, key_id: str) -> tuple[KeyRecord, str]:
        """A new secret for an active key; the old one matches nothing from now on (the
        admission statement checks the hash). Returns the record and the new secret."""
        secret = _new_secret()
        with self.transaction() as conn:
            changed = conn.execute(
                self._keys.rotate,
                {"k_id": key_id, "k_hash": hash_secret(secret), "k_hint": _hint(secret)},
            ).rowcount
        if not changed:
            record = self.get_key(key_id)  # NotFoundError for an unknown key
            raise InvalidRequestError(
                f"the API key '{record.id}' is revoked: it cannot be rotated",
                param="key_id",
                code="key_revoked",
            )
        return self.get_key(key_id), secret

    def top_up(self, key_id: str, amount_nanos: int, *, now: int) -> KeyRecord:
        with self.transaction() as conn:
            self._top_up(conn, key_id, amount_nanos, now)
        return self.get_key(key_id)

    def _top_up(self, conn: Connection, key_id: str, amount_nanos: int, now: int) -> None:
        changed = conn.execute(
            self._keys.top_up, {"k_id": key_id, "k_amount": amount_nanos}
        ).rowcount
        if not changed:
            # On this transaction's connection: another transaction would wait for this one
            # (an in-memory SQLite database is one connection, taken until this ends).
            if conn.execute(self._keys.by_id, {"k_id": key_id}).first() is None:
                raise NotFoundError(f"no API key with id '{key_id}'", param="key_id")
            raise InvalidRequestError(
                f"a balance is at most ${nanos_to_usd(MAX_BALANCE_NANOS)}", param="amount"
            )
        conn.execute(
            self._keys.top_up_record,
            {"key_id": key_id, "amount_nanos": amount_nanos, "created_at": now},
        )


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(24)


def _hint(secret: str) -> str:
    return secret[: len(SECRET_PREFIX) + 4] + "…"


def _names_column(names: tuple[str, ...] | list[str] | None) -> str | None:
    return None if names is None else json.dumps(list(names), ensure_ascii=False)


def _names(column: str | None) -> tuple[str, ...] | None:
    return None if column is None else tuple(json.loads(column))


def _key_record(row: Any, *, found_by_hash: bool = False) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        hint=row.secret_hint,
        is_admin=bool(row.is_admin),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        balance_nanos=row.balance_nanos,
        spent_nanos=row.spent_nanos,
        daily_requests=row.daily_requests,
        throttle_seconds=row.throttle_seconds,
        requests_per_minute=row.requests_per_minute,
        allowed_models=_names(row.allowed_models),
        allowed_providers=_names(row.allowed_providers),
        allowed_tools=_names(row.allowed_tools),
        restrictions_version=row.restrictions_version,
        secret_hash=row.secret_hash if found_by_hash else None,
    )

"""API keys in the store: created with a secret shown once, found by its hash, revoked,
topped up. A part of ``Store``; its transactions are the store's."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, insert, select, update

from ..billing import MAX_BALANCE_NANOS, nanos_to_usd
from ..errors import InvalidRequestError, NotFoundError
from .records import KeyRecord
from .tables import api_keys, top_ups

SECRET_PREFIX = "sk-llmr-"
_k = api_keys.c


def hash_secret(secret: str) -> str:
    """Keys are 192 random bits, so a plain SHA-256 is enough (no slow KDF needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """The key operations of ``Store``, which provides ``transaction``."""

    transaction: Callable[..., AbstractContextManager[Connection]]

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
    ) -> tuple[KeyRecord, str]:
        """A new key and its secret. The secret is returned once and never stored."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(24)
        key_id = "key_" + secrets.token_hex(8)
        with self.transaction() as conn:
            conn.execute(
                insert(api_keys).values(
                    id=key_id,
                    name=name,
                    secret_hash=hash_secret(secret),
                    secret_hint=secret[: len(SECRET_PREFIX) + 4] + "…",
                    is_admin=is_admin,
                    created_at=now,
                    daily_requests=daily_requests,
                    throttle_seconds=throttle_seconds,
                    requests_per_minute=requests_per_minute,
                    balance_nanos=0,
                    spent_nanos=0,
                    topped_up_nanos=0,
                    quota_day=0,
                    day_count=0,
                    next_slot_at=0,
                    minute=0,
                    minute_count=0,
                    last_admission=0,
                )
            )
            if credits_nanos:
                self._top_up(conn, key_id, credits_nanos, now)
        return self.get_key(key_id), secret

    def find_key(self, secret_hash: str) -> KeyRecord | None:
        """The key whose secret hashes to ``secret_hash`` (see ``hash_secret``)."""
        with self.transaction(read_only=True) as conn:
            row = conn.execute(select(api_keys).where(_k.secret_hash == secret_hash)).first()
        return _key_record(row) if row else None

    def get_key(self, key_id: str) -> KeyRecord:
        with self.transaction(read_only=True) as conn:
            row = conn.execute(select(api_keys).where(_k.id == key_id)).first()
        if row is None:
            raise NotFoundError(f"no API key with id '{key_id}'", param="key_id")
        return _key_record(row)

    def list_keys(self) -> list[KeyRecord]:
        with self.transaction(read_only=True) as conn:
            rows = conn.execute(select(api_keys).order_by(_k.created_at, _k.id)).all()
        return [_key_record(r) for r in rows]

    def revoke_key(self, key_id: str, *, now: int) -> KeyRecord:
        with self.transaction() as conn:
            conn.execute(
                update(api_keys)
                .where(_k.id == key_id, _k.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return self.get_key(key_id)

    def top_up(self, key_id: str, amount_nanos: int, *, now: int) -> KeyRecord:
        with self.transaction() as conn:
            self._top_up(conn, key_id, amount_nanos, now)
        return self.get_key(key_id)

    def _top_up(self, conn: Connection, key_id: str, amount_nanos: int, now: int) -> None:
        changed = conn.execute(
            update(api_keys)
            .where(_k.id == key_id, _k.balance_nanos <= MAX_BALANCE_NANOS - amount_nanos)
            .values(
                balance_nanos=_k.balance_nanos + amount_nanos,
                topped_up_nanos=_k.topped_up_nanos + amount_nanos,
            )
        ).rowcount
        if not changed:
            self.get_key(key_id)  # NotFoundError for an unknown key
            raise InvalidRequestError(
                f"a balance is at most ${nanos_to_usd(MAX_BALANCE_NANOS)}", param="amount"
            )
        conn.execute(
            insert(top_ups).values(key_id=key_id, amount_nanos=amount_nanos, created_at=now)
        )


def _key_record(row: Any) -> KeyRecord:
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
    )

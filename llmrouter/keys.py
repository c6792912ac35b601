"""API-key authentication with a short TTL cache in front of the store."""

from __future__ import annotations

import threading

from cachetools import TTLCache

from .errors import AuthenticationError
from .store import KeyRecord, Store, hash_secret


class KeyAuthenticator:
    """Turns a bearer secret into its key record. Unknown secrets are cached too, so a
    flood of bad keys does not reach the database; ``forget`` drops a key at once."""

    def __init__(self, store: Store, *, ttl_seconds: float, maxsize: int = 10_000) -> None:
        self._store = store
        self._cache: TTLCache[str, KeyRecord | None] | None = (
            TTLCache(maxsize=maxsize, ttl=ttl_seconds) if ttl_seconds > 0 else None
        )
        self._lock = threading.Lock()

    def authenticate(self, secret: str | None) -> KeyRecord:
        if not secret:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        digest = hash_secret(secret)
        record = self._lookup(digest)
        if record is None:
            raise AuthenticationError("Incorrect API key provided.")
        if not record.active:
            raise AuthenticationError("This API key has been revoked.")
        return record

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

    def forget_all(self) -> None:
        """Drop every cached answer (after a key is created, revoked or changed here)."""
        if self._cache is not None:
            with self._lock:
                self._cache.clear()

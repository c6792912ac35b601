"""The provider directory kept current: config-file providers plus the store's connections,
rebuilt when the store's change counter moves.

A request reads ``current()``: the snapshot in memory, and at most once per
``refresh_seconds`` a check of the counter started in a background thread — off the
request's path. After a quiet spell (no request for several intervals) the check runs
in the calling request instead, so a process that has been idle never serves a stale
snapshot. A name no snapshot knows triggers a check too (``refresh_on_miss``), so a
connection made in another process routes here at once. Changes made through this
process rebuild at once (``refresh``).

A failed check (the database unreachable) keeps the snapshot it has; a connection that
cannot be built is left out of the snapshot and logged (``ProviderDirectory.skipped``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from pydantic import ValidationError

from ..config import ProviderSettings
from ..errors import ConfigError, InvalidRequestError, LLMRouterError
from ..store import ConnectionRecord, Store
from .directory import ProviderDirectory

log = logging.getLogger("llmrouter")
#: a check runs in the request itself when the last one is older than this many intervals
_STALE_INTERVALS = 3
#: name misses check the store at most this often (a flood of bad names is not a flood
#: of queries)
_MISS_CHECK_SECONDS = 0.1

SettingsOf = Callable[[ConnectionRecord], ProviderSettings]


class LiveDirectory:
    """The current ``ProviderDirectory`` of a Router, kept in step with the store."""

    def __init__(
        self,
        providers: Sequence[ProviderSettings],
        aliases: Mapping[str, str],
        store: Store,
        settings_of: SettingsOf,
        *,
        refresh_seconds: float,
    ) -> None:
        self._providers = tuple(providers)
        self._aliases = dict(aliases)
        self._store = store
        self._settings_of = settings_of
        self._interval = refresh_seconds
        self._lock = threading.Lock()  # one rebuild at a time
        self._checking = False
        self._snapshot = ProviderDirectory(self._providers, self._aliases)
        self._checked_at = 0.0
        self._snapshot = self._rebuilt(*store.list_connections())
        self._checked_at = time.monotonic()

    def current(self) -> ProviderDirectory:
        """This request's snapshot."""
        if self._interval and time.monotonic() - self._checked_at >= self._interval:
            self._start_check()
        return self._snapshot

    def refresh(self) -> ProviderDirectory:
        """Check the store now and return the snapshot (rebuilt if the counter moved)."""
        with self._lock:
            self._check()
        return self._snapshot

    def refresh_on_miss(self) -> ProviderDirectory | None:
        """A newer snapshot after a name missed, or None when there is none (or a check
        ran just now)."""
        if time.monotonic() - self._checked_at < _MISS_CHECK_SECONDS:
            return None
        before = self._snapshot
        try:
            after = self.refresh()
        except LLMRouterError:
            return None
        return after if after is not before else None

    def close(self) -> None:
        self._snapshot.close()

    def _start_check(self) -> None:
        with self._lock:
            if self._checking:
                return
            self._checking = True
        if time.monotonic() - self._checked_at >= _STALE_INTERVALS * self._interval:
            self._quiet_check()  # idle for a while: this request waits for the check
        else:
            threading.Thread(target=self._quiet_check, daemon=True).start()

    def _quiet_check(self) -> None:
        try:
            with self._lock:
                self._check()
        except LLMRouterError as exc:
            log.warning("provider directory not refreshed: %s", exc.message)
        finally:
            self._checking = False

    def _check(self) -> None:
        """Under ``_lock``: rebuild when the counter moved."""
        version = self._store.directory_version()
        self._checked_at = time.monotonic()
        if version != self._snapshot.version:
            self._snapshot = self._rebuilt(*self._store.list_connections())

    def _rebuilt(self, version: int, records: list[ConnectionRecord]) -> ProviderDirectory:
        connections = []
        for record in records:
            if record.status == "disabled":
                continue
            try:
                connections.append(self._settings_of(record))
            except (ConfigError, InvalidRequestError, ValidationError) as exc:
                reason = exc.message if isinstance(exc, LLMRouterError) else "invalid fields"
                log.warning("provider connection %s left out: %s", record.id, reason)
        return ProviderDirectory(
            self._providers,
            self._aliases,
            connections=connections,
            version=version,
            previous=self._snapshot,
        )

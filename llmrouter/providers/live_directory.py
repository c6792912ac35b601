"""The provider directory kept current: config-file providers plus the store's connections,
rebuilt when the store's change counter moves.

A request reads ``current()``: the snapshot in memory. When the last check of the counter
is ``refresh_seconds`` old, the request starts the next one in a background thread and
goes on with the snapshot it has, so a busy process sees a change within about one
interval and no request waits for the database. A process that has been idle (no request
for ``_IDLE_INTERVALS`` intervals) checks in the request instead: after a quiet spell it
never routes to a connection deleted meanwhile. A name no snapshot knows is looked for in
the store too (``refresh_on_miss``), by a check begun after the miss, so a connection made
in another process routes here with the first request that names it; misses check at most
every ``_MISS_CHECK_SECONDS``, so a flood of bad names is not a flood of queries. A change
made through this process rebuilds at once (``refresh``). An in-memory store has no other
process to hear from: it is never checked but by ``refresh``.

A failed check (the database unreachable) keeps the snapshot it has, logged, and is tried
again an interval later; a connection that cannot be built is left out of the snapshot and
logged (``ProviderDirectory.skipped``); a connection row that cannot even be read keeps the
snapshot as it was. Nothing here logs a secret: a reason is a message of ours or an
exception's type, never a stored value.

Threads: one check at a time (``_lock``, held while the store is read); the background
check is a short-lived daemon thread, at most one running, that ``close`` waits for. After
``os.fork`` (gunicorn ``--preload``) the child starts with fresh locks and checks in its
first request: the snapshot it inherited may be as old as the fork.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence

from pydantic import ValidationError

from ..config import ProviderSettings
from ..errors import LLMRouterError
from ..schemas import describe_validation_error
from ..store import ConnectionRecord, Store
from .directory import ProviderDirectory

log = logging.getLogger("llmrouter")
#: a request checks in its own time after this many intervals without a request
_IDLE_INTERVALS = 2
#: name misses check the store at most this often (a flood of bad names is not a flood
#: of queries); a miss waits at most this long for its check to begin
_MISS_CHECK_SECONDS = 0.1
#: how long ``close`` waits for a background check still reading the store
_CLOSE_WAIT_SECONDS = 5.0

SettingsOf = Callable[[ConnectionRecord], ProviderSettings]


class LiveDirectory:
    """The current ``ProviderDirectory`` of a Router, kept in step with the store."""

    # (set in ``_reset_threading``, again after a fork)
    _lock: threading.Lock  # one check at a time, held while the store is read
    _state: threading.Lock  # guards _checking, _thread and _closed; never held across I/O
    _checking: bool
    _thread: threading.Thread | None  # the background check running, if one is
    _attempted_at: float  # when the last check began (monotonic)
    _used_at: float  # when a request last read the snapshot

    def __init__(
        self,
        providers: Sequence[ProviderSettings],
        aliases: Mapping[str, str],
        store: Store,
        settings_of: SettingsOf,
        *,
        refresh_seconds: float,
        on_replaced: Callable[[frozenset[str]], None] = lambda names: None,
    ) -> None:
        """``on_replaced`` hears the names of providers a new snapshot rebuilt or dropped
        (the Router forgets their circuit breakers)."""
        self._providers = tuple(providers)
        self._on_replaced = on_replaced
        self._aliases = dict(aliases)
        self._store = store
        self._settings_of = settings_of
        self._interval = refresh_seconds
        self._reset_threading()
        self._closed = False
        self._failing = False  # the last check failed (logged once)
        #: the counter value whose connections could not be read (logged once, not re-read)
        self._unreadable: int | None = None
        # the config file's providers alone first: a ConfigError of theirs stops the Router
        self._snapshot = ProviderDirectory(self._providers, self._aliases)
        self._check()  # a database unreachable at start stops it too
        self._used_at = time.monotonic()
        _live_directories.add(self)

    def current(self) -> ProviderDirectory:
        """This request's snapshot."""
        if self._interval:
            now = time.monotonic()
            if now - self._used_at >= _IDLE_INTERVALS * self._interval:
                self._check_in_request()
            elif now - self._attempted_at >= self._interval:
                self._start_background_check()
            # set after the check: a request that comes meanwhile finds the process idle
            # still, and waits for that check rather than use the old snapshot
            self._used_at = time.monotonic()
        return self._snapshot

    def refresh(self) -> ProviderDirectory:
        """Check the store now and return the snapshot (rebuilt if the counter moved); a
        database that cannot be reached is a ``StoreUnavailableError``."""
        with self._lock:
            self._check()
        return self._snapshot

    def refresh_on_miss(self, seen: ProviderDirectory) -> ProviderDirectory | None:
        """After a name missed in ``seen``: a newer snapshot from a check begun after the
        miss, or None when there is none (or the check failed)."""
        if self._store.in_memory:
            return None  # only this process writes it, and rebuilds at once when it does
        missed_at = time.monotonic()
        while True:
            with self._lock:
                if self._attempted_at >= missed_at:
                    break  # a check begun after the miss has ended (its lock is ours)
                wait = self._attempted_at + _MISS_CHECK_SECONDS - time.monotonic()
                if wait <= 0:
                    self._quiet_check()
                    break
            time.sleep(wait)
        after = self._snapshot
        return after if after is not seen else None

    def close(self) -> None:
        """Stop checking (waiting a little for a check still running) and release the
        adapters."""
        with self._state:
            self._closed = True
            thread = self._thread
        if thread is not None:
            thread.join(_CLOSE_WAIT_SECONDS)
        self._snapshot.close()

    # ---------------------------------------------------------------- checks

    def _start_background_check(self) -> None:
        with self._state:
            if self._checking or self._closed:
                return
            self._checking = True
            self._thread = thread = threading.Thread(
                target=self._background_check, name="llmrouter-directory-check", daemon=True
            )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (interpreter shutting down, limits)
            with self._state:
                self._checking, self._thread = False, None

    def _background_check(self) -> None:
        try:
            with self._lock:
                self._quiet_check()
        finally:
            with self._state:
                self._checking, self._thread = False, None

    def _check_in_request(self) -> None:
        with self._lock:  # a check running now ends first: its result may do
            if time.monotonic() - self._attempted_at >= self._interval:
                self._quiet_check()

    def _quiet_check(self) -> None:
        """Under ``_lock``: ``_check``; a failure is logged (once until a check succeeds
        again) and the snapshot kept."""
        try:
            self._check()
        except Exception as exc:  # a bug of ours must not fail requests: they keep the snapshot
            reason = exc.message if isinstance(exc, LLMRouterError) else type(exc).__name__
            if not self._failing:
                log.warning("provider directory not refreshed, the last snapshot kept: %s", reason)
            self._failing = True
        else:
            if self._failing:
                log.info("provider directory refreshed again")
            self._failing = False

    def _check(self) -> None:
        """Under ``_lock`` (or in ``__init__``): rebuild when the counter moved."""
        self._attempted_at = time.monotonic()
        version = self._store.directory_version()
        if version in (self._snapshot.version, self._unreadable):
            return
        try:
            version, records = self._store.list_connections()
        except LLMRouterError:
            raise
        except Exception as exc:  # a row the store cannot read (garbage JSON, say)
            self._unreadable = version
            log.error(
                "provider directory not refreshed: the connections in the store cannot be "
                "read (%s); the snapshot of version %d is kept",
                type(exc).__name__,
                self._snapshot.version,
            )
            return
        self._snapshot = self._rebuilt(version, records)
        self._unreadable = None
        if self._snapshot.replaced:
            self._on_replaced(self._snapshot.replaced)

    def _rebuilt(self, version: int, records: list[ConnectionRecord]) -> ProviderDirectory:
        connections = []
        for record in records:
            if record.status == "disabled":
                continue
            try:
                connections.append(self._settings_of(record))
            except LLMRouterError as exc:
                _left_out(record, exc.message)
            except ValidationError as exc:
                _left_out(
                    record, f"a stored field is invalid ({describe_validation_error(exc)[0]})"
                )
            except Exception as exc:  # whatever a row holds, the others route
                _left_out(record, f"it cannot be built ({type(exc).__name__})")
        return ProviderDirectory(
            self._providers,
            self._aliases,
            connections=connections,
            version=version,
            previous=self._snapshot,
        )

    # ---------------------------------------------------------------- threads

    def _reset_threading(self) -> None:
        self._lock = threading.Lock()
        self._state = threading.Lock()
        self._checking = False
        self._thread = None
        self._attempted_at = -math.inf
        self._used_at = -math.inf


def _left_out(record: ConnectionRecord, reason: str) -> None:
    log.warning(
        "provider connection %s (%r, provider %r) left out: %s",
        record.id,
        record.name,
        record.provider,
        reason,
    )


_live_directories: weakref.WeakSet[LiveDirectory] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Threads do not survive a fork, but their locks and flags do: a check running in the
    # parent would leave the child's lock held and ``_checking`` set forever.
    for directory in list(_live_directories):
        directory._reset_threading()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

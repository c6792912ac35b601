"""Settlements the database could not take when the call ended, retried in the background.

A call whose upstream answered is answered even when its settlement cannot be written: the
write waits here and is retried, with backoff, until the database is back. Its ``pending``
ledger row keeps the money accounted for meanwhile; only if this process dies first does
the sweeper close that row as ``abandoned``. Every write is idempotent (a ticket completes
once), so a retry after a write whose acknowledgement was lost changes nothing twice.

At ``Router.close()`` and at interpreter exit, the streams still open are closed (billed
for what they delivered) and the queue is flushed for a few seconds; what is still
unwritten then is left to the sweeper, by design.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import StoreUnavailableError

log = logging.getLogger("llmrouter")

#: seconds between retries: doubling from the first to the last
FIRST_RETRY_SECONDS = 0.1
LAST_RETRY_SECONDS = 5.0
#: how long interpreter exit (or ``close``) waits for the queue to empty
FLUSH_SECONDS = 5.0


@dataclass
class _Write:
    run: Callable[[], object]
    what: str
    refused: bool = False  # the database refused it at least once


class Closeable(Protocol):
    def close(self) -> None: ...


class SettlementQueue:
    """One background thread per Router, started on the first write it is given."""

    def __init__(self) -> None:
        self._writes: deque[_Write] = deque()
        self._wake = threading.Condition()
        self._one_pass = threading.Lock()  # the worker's pass or a flush's, never both
        self._thread: threading.Thread | None = None
        self._closed = False
        self._streams: weakref.WeakSet[Closeable] = weakref.WeakSet()
        _open_queues.add(self)

    def track(self, stream: Closeable) -> None:
        """Close ``stream`` at ``flush`` if it is still open then (interpreter exit)."""
        self._streams.add(stream)

    def __len__(self) -> int:
        return len(self._writes)

    def submit(self, run: Callable[[], object], what: str) -> None:
        """Retry ``run`` until it stops raising ``StoreUnavailableError``; ``what`` names it
        in the log. After ``close`` there is no worker: it is tried once, here."""
        if self._closed:
            self._writes.append(_Write(run, what))
            self._try_all()
            return
        with self._wake:
            self._writes.append(_Write(run, what))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="llmrouter-settlements", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def flush(self, seconds: float = FLUSH_SECONDS) -> int:
        """Try the waiting writes until they are done or ``seconds`` pass; returns how many
        are left (each still has its pending row, for the sweeper)."""
        for stream in list(self._streams):
            try:
                stream.close()  # settles, or queues its settlement here
            except Exception:
                log.exception("an open stream could not be closed at shutdown")
        deadline = time.monotonic() + seconds
        delay = FIRST_RETRY_SECONDS
        while self._writes and time.monotonic() < deadline:
            if not self._try_all():
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, LAST_RETRY_SECONDS)
        left = len(self._writes)
        if left:
            log.error("%d settlements left unwritten for the sweeper", left)
        return left

    def close(self, seconds: float = FLUSH_SECONDS) -> int:
        left = self.flush(seconds)
        with self._wake:
            self._closed = True
            self._wake.notify()
        _open_queues.discard(self)
        return left

    def _work(self) -> None:
        delay = FIRST_RETRY_SECONDS
        while True:
            with self._wake:
                while not self._writes and not self._closed:
                    self._wake.wait()
                    delay = FIRST_RETRY_SECONDS
                if self._closed:
                    return
            if self._try_all():
                delay = FIRST_RETRY_SECONDS
                continue
            with self._wake:
                self._wake.wait(delay)
            delay = min(delay * 2, LAST_RETRY_SECONDS)

    def _try_all(self) -> bool:
        """One pass over the waiting writes, in order; False when the database still
        refuses (the rest wait for the next pass)."""
        with self._one_pass:
            while self._writes:
                write = self._writes[0]
                try:
                    write.run()
                except StoreUnavailableError:
                    write.refused = True
                    return False
                except Exception:
                    log.exception("%s could not be written and is left to the sweeper", write.what)
                else:
                    if write.refused:
                        log.info("%s written after the database came back", write.what)
                self._writes.popleft()
        return True


_open_queues: weakref.WeakSet[SettlementQueue] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for queue in list(_open_queues):
        queue.flush()

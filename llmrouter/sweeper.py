"""The background sweeper of ``llmrouter serve``: ``Router.sweep()`` and the video tasks'
``router.video.sweep()`` every few seconds.

Sweeping is idempotent and safe from any number of processes at once (each pending row is
closed by one conditional UPDATE), so every serving process may run one.
"""

from __future__ import annotations

import logging
import threading

from .errors import StoreUnavailableError
from .router import Router

log = logging.getLogger("llmrouter")


class Sweeper:
    def __init__(self, router: Router, every_seconds: float) -> None:
        self._router = router
        self._every = every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmrouter-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                swept = self._router.sweep()
            except StoreUnavailableError:
                continue  # the next round tries again
            except Exception:
                log.exception("sweeping abandoned calls failed")
                continue
            for call in swept:
                log.warning(
                    "swept abandoned call %s of key %s: %d nano-USD released",
                    call.request_id,
                    call.key_id,
                    call.released_nanos,
                )
            try:  # the video tasks nobody polls: polled, ended, settled
                self._router.video.sweep()
            except StoreUnavailableError:
                continue
            except Exception:
                log.exception("sweeping video tasks failed")

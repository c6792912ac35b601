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
            # The video tasks first: a task ended without its settlement is settled from
            # its row, before its ticket's deadline could make it look abandoned.
            self._sweep_video_tasks()
            self._sweep_calls()

    def _sweep_video_tasks(self) -> None:
        """The video tasks nobody polls: polled, ended, settled."""
        try:
            swept = self._router.video.sweep()
        except StoreUnavailableError:
            return  # the next round tries again
        except Exception:
            log.exception("sweeping video tasks failed")
            return
        for task in swept.ended:
            log.info("swept video task %s of key %s: %s", task.id, task.key_id, task.status)
        for task in swept.settled:
            log.warning(
                "settled video task %s of key %s, ended %s without its settlement",
                task.id,
                task.key_id,
                task.status,
            )

    def _sweep_calls(self) -> None:
        try:
            swept = self._router.sweep()
        except StoreUnavailableError:
            return
        except Exception:
            log.exception("sweeping abandoned calls failed")
            return
        for call in swept:
            log.warning(
                "swept abandoned call %s of key %s: %d nano-USD released",
                call.request_id,
                call.key_id,
                call.released_nanos,
            )

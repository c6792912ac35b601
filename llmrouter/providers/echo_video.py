"""The offline ``echo`` provider's video tasks, for demos and host-app tests: a task is
queued when made and succeeded at its first poll, with a placeholder URL under the
reserved ``.invalid`` domain. Its id carries what the task is, so any process answers a
poll of it (like a real provider, and unlike an in-memory table)."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

from ..errors import UpstreamError
from .video_base import TaskStatus, TaskUsage, UpstreamTask, VideoRequest

_PREFIX = "echo-video-"


class EchoVideo:
    """Video task methods of ``EchoAdapter`` (``VideoAdapter``'s abstract ones)."""

    name: str

    def create_task(self, request: VideoRequest, upstream_model: str) -> UpstreamTask:
        about = {"m": upstream_model, "d": request.duration, "r": request.resolution}
        encoded = base64.urlsafe_b64encode(json.dumps(about).encode()).decode().rstrip("=")
        return UpstreamTask(id=_PREFIX + encoded, status=TaskStatus.QUEUED, progress=0)

    def get_task(self, task_id: str) -> UpstreamTask:
        about = self._about(task_id)
        return UpstreamTask(
            id=task_id,
            status=TaskStatus.SUCCEEDED,
            progress=100,
            video_url=f"https://echo.invalid/videos/{task_id}.mp4",
            usage=TaskUsage(seconds=Decimal(about["d"])),
        )

    def cancel_task(self, task_id: str) -> None:
        self._about(task_id)  # a queued echo task is simply never polled again

    def _about(self, task_id: str) -> dict[str, Any]:
        try:
            encoded = task_id.removeprefix(_PREFIX)
            about = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
            int(about["d"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(
                f"{self.name}: no echo video task '{task_id[:60]}'", provider=self.name
            ) from exc
        return dict(about)

"""Status tokens: a video task's id and its key's id, signed with the router's
``secret_key`` (itsdangerous, with a purpose salt of its own). A token is valid in every
process sharing the ``secret_key``, across restarts; one altered in any byte, or presented
by another key, is ``task_not_found`` — no hint that the task exists."""

from __future__ import annotations

import hmac

from itsdangerous import BadData, URLSafeSerializer

from ..errors import NotFoundError

_SALT = "llmrouter video task status token v1"


class TaskNotFoundError(NotFoundError):
    code = "task_not_found"


def not_found() -> TaskNotFoundError:
    return TaskNotFoundError("No video task has this status token.", param="status_token")


class StatusTokens:
    def __init__(self, secret_key: str) -> None:
        self._serializer = URLSafeSerializer(secret_key, salt=_SALT)

    def issue(self, task_id: str, key_id: str) -> str:
        return str(self._serializer.dumps([task_id, key_id]))

    def task_of(self, token: str, key_id: str) -> str:
        """The task id of ``token`` when ``key_id`` made it; ``TaskNotFoundError`` else."""
        if not isinstance(token, str) or len(token) > 1000:
            raise not_found()
        try:
            task_id, owner = self._serializer.loads(token)
        except (BadData, TypeError, ValueError):
            raise not_found() from None
        if owner != key_id or not isinstance(task_id, str):
            raise not_found()
        # base64 leaves spare bits in a segment's last character: a token altered there
        # decodes and verifies alike. Only the token as issued is the task's.
        if not hmac.compare_digest(self.issue(task_id, key_id), token):
            raise not_found()
        return task_id

"""Video tasks in the store: the task row, written before the create answer leaves, and the
admission ticket it keeps (its ledger row, ``pending`` until the task ends). A part of
``Store``; its transactions are the store's.

Every change of a task's status to a final one is conditional on the task not being final
yet (``finish``): of two processes seeing a task end, exactly one wins, and only the winner
settles its ticket. A poll claims the task first (``claim_poll``: moves ``polled_at`` if it
is old enough), so concurrent polls in every process cause one upstream request per
interval.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, insert, select, update

from .records import AdmissionKind, Ticket, VideoTaskRecord
from .tables import Tables

#: statuses a task never leaves
FINAL_STATUSES = ("succeeded", "failed", "cancelled", "expired")
#: ledger statuses of a ticket not settled yet
_UNSETTLED = ("pending", "abandoned")
_KINDS = {kind.label: kind for kind in AdmissionKind if kind.admitted}


class VideoTaskStore:
    """The video task operations of ``Store``, which provides ``transaction``."""

    transaction: Callable[..., AbstractContextManager[Connection]]
    tables: Tables

    def insert_task(self, values: dict[str, Any]) -> VideoTaskRecord:
        row = {**values, "images": json.dumps(values["images"], ensure_ascii=False)}
        with self.transaction() as conn:
            conn.execute(insert(self.tables.video_tasks), row)
        task = self.get_task(values["id"])
        assert task is not None
        return task

    def get_task(self, task_id: str) -> VideoTaskRecord | None:
        _v = self.tables.video_tasks.c
        with self.transaction(read_only=True) as conn:
            row = conn.execute(select(self.tables.video_tasks).where(_v.id == task_id)).first()
        return _task(row) if row else None

    def find_task(self, key_id: str, idempotency_key: str) -> VideoTaskRecord | None:
        _v = self.tables.video_tasks.c
        statement = select(self.tables.video_tasks).where(
            _v.key_id == key_id, _v.idempotency_key == idempotency_key
        )
        with self.transaction(read_only=True) as conn:
            row = conn.execute(statement).first()
        return _task(row) if row else None

    def list_tasks(
        self, key_id: str, *, limit: int, before: VideoTaskRecord | None = None
    ) -> list[VideoTaskRecord]:
        """The key's tasks, newest first, after ``before`` (a task of the same key)."""
        _v = self.tables.video_tasks.c
        statement = select(self.tables.video_tasks).where(_v.key_id == key_id)
        if before is not None:
            statement = statement.where(
                (_v.created_at < before.created_at)
                | ((_v.created_at == before.created_at) & (_v.id < before.id))
            )
        statement = statement.order_by(_v.created_at.desc(), _v.id.desc()).limit(limit)
        with self.transaction(read_only=True) as conn:
            return [_task(row) for row in conn.execute(statement)]

    def unfinished_tasks(self, *, limit: int = 1000) -> list[VideoTaskRecord]:
        """Tasks not ended, the oldest first (what the sweeper polls)."""
        _v = self.tables.video_tasks.c
        statement = (
            select(self.tables.video_tasks)
            .where(_v.status.not_in(FINAL_STATUSES))
            .order_by(_v.created_at)
            .limit(limit)
        )
        with self.transaction(read_only=True) as conn:
            return [_task(row) for row in conn.execute(statement)]

    def ended_with_pending_ticket(self, *, limit: int = 1000) -> list[VideoTaskRecord]:
        """Ended tasks whose ticket is still pending (their process died between the two
        writes), or was closed by the chat sweeper meanwhile: the sweeper settles them."""
        _v, _l = self.tables.video_tasks.c, self.tables.ledger.c
        statement = (
            select(self.tables.video_tasks)
            .join(self.tables.ledger, (_l.request_id == _v.request_id) & (_l.round == 1))
            .where(_v.status.in_(FINAL_STATUSES), _l.status.in_(_UNSETTLED))
            .limit(limit)
        )
        with self.transaction(read_only=True) as conn:
            return [_task(row) for row in conn.execute(statement)]

    def update_task(self, task_id: str, values: dict[str, Any]) -> bool:
        """Change a task not ended yet; False when it has ended meanwhile."""
        _v = self.tables.video_tasks.c
        statement = (
            update(self.tables.video_tasks)
            .where(_v.id == task_id, _v.status.not_in(FINAL_STATUSES))
            .values(values)
        )
        with self.transaction() as conn:
            return bool(conn.execute(statement).rowcount)

    def finish_task(self, task_id: str, values: dict[str, Any]) -> bool:
        """End a task (``values`` holds its final status): True for the one caller, in any
        process, that ended it; that caller settles its ticket."""
        return self.update_task(task_id, values)

    def claim_poll(self, task_id: str, *, now: int, interval_ms: int) -> bool:
        """Whether this caller may ask the provider about the task now: True for one caller
        per ``interval_ms``, in every process."""
        _v = self.tables.video_tasks.c
        statement = (
            update(self.tables.video_tasks)
            .where(
                _v.id == task_id,
                _v.status.not_in(FINAL_STATUSES),
                _v.polled_at <= now - interval_ms,
            )
            .values(polled_at=now)
        )
        with self.transaction() as conn:
            return bool(conn.execute(statement).rowcount)

    def ticket_of(self, request_id: str) -> Ticket | None:
        """The admission ticket a ledger row holds, while it is pending (or swept: the
        chat sweeper closed it, and a settlement still completes it once); None once it
        is settled."""
        _l = self.tables.ledger.c
        # a video task's exchange has one round
        statement = select(self.tables.ledger).where(_l.request_id == request_id, _l.round == 1)
        with self.transaction(read_only=True) as conn:
            row = conn.execute(statement).first()
        if row is None or row.admission not in _KINDS or row.status not in _UNSETTLED:
            return None
        return Ticket(
            request_id=row.request_id,
            key_id=row.key_id,
            kind=_KINDS[row.admission],
            at=row.started_at,
            day=row.day,
            reserved_nanos=row.reserved_nanos,
            slot_at=row.slot_at,
            deadline_at=row.deadline_at or 0,
        )


def _task(row: Any) -> VideoTaskRecord:
    return VideoTaskRecord(
        id=row.id,
        key_id=row.key_id,
        request_id=row.request_id,
        provider=row.provider,
        model=row.model,
        upstream_model=row.upstream_model,
        upstream_id=row.upstream_id,
        status=row.status,
        progress=row.progress,
        video_url=row.video_url,
        video_expires_at=row.video_expires_at,
        error=row.error,
        prompt=row.prompt,
        duration=row.duration,
        resolution=row.resolution,
        ratio=row.ratio,
        images=tuple(json.loads(row.images)),
        reserved_nanos=row.reserved_nanos,
        cost_nanos=row.cost_nanos,
        charged_nanos=row.charged_nanos,
        idempotency_key=row.idempotency_key,
        body_hash=row.body_hash,
        created_at=row.created_at,
        updated_at=row.updated_at,
        polled_at=row.polled_at,
        expires_at=row.expires_at,
    )

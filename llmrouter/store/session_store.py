"""The chat sessions of the connections' chat route (seed 003), in the store: a session
and its turns, written together after a call succeeds. A part of ``Store``; its
transactions are the store's.

A session's turns are ordered by their row id. Appending first updates the session's
row, which locks it (PostgreSQL, MariaDB; SQLite writers are serial anyway), so two
exchanges appended to one session at once never interleave their turns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, Select, bindparam, delete, func, insert, select, update

from ..errors import NotFoundError
from .records import ChatMessageRecord, SessionRecord
from .tables import Tables


class SessionStatements:
    """The session statements on one prefix's tables (bind names: ``cs_`` and a word)."""

    def __init__(self, tables: Tables) -> None:
        sessions, messages = tables.chat_sessions, tables.chat_messages
        self.sessions, self.messages = sessions, messages
        _s, _m = sessions.c, messages.c
        self.insert_session = insert(sessions)
        self.insert_message = insert(messages)
        self.touch = (
            update(sessions)
            .where(_s.id == bindparam("cs_id"), _s.connection_id == bindparam("cs_connection"))
            .values(updated_at=bindparam("cs_now"))
        )
        counted: Select[Any] = (
            select(*sessions.c, func.count(_m.id).label("message_count"))
            .select_from(sessions.outerjoin(messages, _m.session_id == _s.id))
            .where(_s.connection_id == bindparam("cs_connection"))
            .group_by(*sessions.c)
        )
        self.of_connection = counted.order_by(_s.updated_at.desc(), _s.id.desc())
        self.one = counted.where(_s.id == bindparam("cs_id"))
        self.turns = (
            select(_m.role, _m.content, _m.created_at, _m.request_id)
            .where(_m.session_id == bindparam("cs_id"))
            .order_by(_m.id)
        )
        self.delete_turns = delete(messages).where(_m.session_id == bindparam("cs_id"))
        self.delete_session = delete(sessions).where(_s.id == bindparam("cs_id"))


class SessionStore:
    """The chat session operations of ``Store``, which provides ``transaction`` and the
    statements. A session is always named with its connection's id: a session of another
    connection is not found."""

    transaction: Callable[..., AbstractContextManager[Connection]]
    _sessions: SessionStatements

    def create_session(
        self,
        *,
        session_id: str,
        connection_id: str,
        key_id: str,
        title: str,
        now: int,
        messages: Sequence[ChatMessageRecord],
    ) -> SessionRecord:
        """A new session holding ``messages``, in one transaction."""
        sql = self._sessions
        with self.transaction() as conn:
            conn.execute(
                sql.insert_session,
                {
                    "id": session_id,
                    "connection_id": connection_id,
                    "key_id": key_id,
                    "title": title,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            self._insert_turns(conn, session_id, messages)
            return self._one(conn, connection_id, session_id)

    def append_to_session(
        self,
        connection_id: str,
        session_id: str,
        messages: Sequence[ChatMessageRecord],
        *,
        now: int,
    ) -> SessionRecord:
        """Append ``messages`` to a session, in one transaction; ``NotFoundError`` when it
        is not there (deleted meanwhile), and then nothing is written."""
        sql = self._sessions
        with self.transaction() as conn:
            params = {"cs_id": session_id, "cs_connection": connection_id, "cs_now": now}
            if not conn.execute(sql.touch, params).rowcount:
                raise _not_found(session_id)
            self._insert_turns(conn, session_id, messages)
            return self._one(conn, connection_id, session_id)

    def get_session(self, connection_id: str, session_id: str) -> SessionRecord:
        """A session with its messages, oldest first."""
        sql = self._sessions
        with self.transaction(read_only=True) as conn:
            record = self._one(conn, connection_id, session_id)
            rows = conn.execute(sql.turns, {"cs_id": session_id}).all()
        turns = tuple(
            ChatMessageRecord(r.role, r.content, r.created_at, r.request_id) for r in rows
        )
        return replace(record, messages=turns)

    def list_sessions(self, connection_id: str) -> list[SessionRecord]:
        """A connection's sessions, the most recently used first, with their message
        counts (not their messages)."""
        with self.transaction(read_only=True) as conn:
            rows = conn.execute(self._sessions.of_connection, {"cs_connection": connection_id})
            return [_record(row) for row in rows]

    def delete_session(self, connection_id: str, session_id: str) -> SessionRecord:
        """Delete a session and its messages, in one transaction; returns it as it was
        (without its messages)."""
        sql = self._sessions
        with self.transaction() as conn:
            record = self._one(conn, connection_id, session_id)
            conn.execute(sql.delete_turns, {"cs_id": session_id})
            conn.execute(sql.delete_session, {"cs_id": session_id})
        return record

    def _one(self, conn: Connection, connection_id: str, session_id: str) -> SessionRecord:
        params = {"cs_id": session_id, "cs_connection": connection_id}
        row = conn.execute(self._sessions.one, params).first()
        if row is None:
            raise _not_found(session_id)
        return _record(row)

    def _insert_turns(
        self, conn: Connection, session_id: str, messages: Sequence[ChatMessageRecord]
    ) -> None:
        # one statement per turn: the row ids (the turns' order) follow the list's order
        for message in messages:
            conn.execute(
                self._sessions.insert_message,
                {
                    "session_id": session_id,
                    "role": message.role,
                    "content": message.content,
                    "request_id": message.request_id,
                    "created_at": message.created_at,
                },
            )


def _not_found(session_id: str) -> NotFoundError:
    return NotFoundError(
        f"no chat session with id '{session_id}' on this connection",
        param="sessionId",
        code="session_not_found",
    )


def _record(row: Any) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        connection_id=row.connection_id,
        key_id=row.key_id,
        title=row.title,
        created_at=row.created_at,
        updated_at=row.updated_at,
        message_count=int(row.message_count),
    )

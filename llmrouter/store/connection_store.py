"""Provider connections in the store, and the change counter every process reads to know
when its provider directory is out of date. A part of ``Store``; its transactions are the
store's.

Every change to a connection bumps ``directory_version`` in the same transaction, so a
process that reads the counter and then the connections never sees a change half made.

A row whose JSON columns do not parse (written by hand, a bug, another version) is read
as ``disabled``, its ``status_reason`` naming the column, so it never routes and hides no
other row; a change that gives that field again heals it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import ConflictError, NotFoundError
from .records import ConnectionRecord
from .tables import Tables

log = logging.getLogger("llmrouter")
_VERSION_ROW = 1


class ConnectionStatements:
    def __init__(self, tables: Tables) -> None:
        self.table = tables.connections
        _c = tables.connections.c
        _v = tables.directory_version.c
        _t = tables.provider_totals.c
        self.totals = tables.provider_totals
        self.sessions = tables.chat_sessions
        self.messages = tables.chat_messages
        self.versions = tables.directory_version
        self.version = select(_v.version).where(_v.id == _VERSION_ROW)
        self.bump = (
            update(tables.directory_version)
            .where(_v.id == _VERSION_ROW)
            .values(version=_v.version + 1)
        )
        self.insert = insert(tables.connections)
        self.by_id = select(tables.connections).where(_c.id == bindparam("c_id"))
        self.all = select(tables.connections).order_by(_c.created_at, _c.id)
        self.total_cost = select(_t.cost_nanos).where(_t.provider == bindparam("c_provider"))
        self.all_totals = select(_t.provider, _t.cost_nanos)
        self.count_secrets = (
            select(func.count())
            .select_from(tables.connections)
            .where(_c.api_key_encrypted.is_not(None))
        )


class ConnectionStore:
    """The connection operations of ``Store``, which provides ``transaction`` and the
    statements."""

    transaction: Callable[..., AbstractContextManager[Connection]]
    _connections: ConnectionStatements
    _create_provider_row: Callable[[Connection, str], None]

    def directory_version(self) -> int:
        """The change counter of the connections (0 before the first change)."""
        with self.transaction(read_only=True) as conn:
            return int(conn.execute(self._connections.version).scalar() or 0)

    def list_connections(self) -> tuple[int, list[ConnectionRecord]]:
        """The counter and every connection, read in one transaction (so they agree)."""
        sql = self._connections
        with self.transaction(read_only=True) as conn:
            version = int(conn.execute(sql.version).scalar() or 0)
            rows = conn.execute(sql.all).all()
            totals = {p: c for p, c in conn.execute(sql.all_totals).all()}
        return version, [_record(row, totals.get(row.name, 0)) for row in rows]

    def count_stored_secrets(self) -> int:
        """How many connections hold an encrypted API key."""
        with self.transaction(read_only=True) as conn:
            return int(conn.execute(self._connections.count_secrets).scalar() or 0)

    def get_connection(self, connection_id: str) -> ConnectionRecord:
        with self.transaction(read_only=True) as conn:
            return self._get(conn, connection_id)

    def _get(self, conn: Connection, connection_id: str) -> ConnectionRecord:
        row = conn.execute(self._connections.by_id, {"c_id": connection_id}).first()
        if row is None:
            raise NotFoundError(
                f"no provider connection with id '{connection_id}'", param="id", code="not_found"
            )
        total = conn.execute(self._connections.total_cost, {"c_provider": row.name}).scalar()
        return _record(row, int(total or 0))

    def create_connection(self, values: dict[str, Any]) -> ConnectionRecord:
        """Insert a connection (``values``: its columns but the cost base); a name taken
        by another connection, in any case, is a ``ConflictError``."""
        sql = self._connections
        with self.transaction() as conn:
            self._create_provider_row(conn, values["name"])
            base = conn.execute(sql.total_cost, {"c_provider": values["name"]}).scalar()
            row = {**_columns(values), "cost_base_nanos": int(base or 0)}
            self._unique_name(conn, lambda: conn.execute(sql.insert, row), values["name"])
            self._bump(conn)
            return self._get(conn, values["id"])

    def update_connection(self, connection_id: str, values: dict[str, Any]) -> ConnectionRecord:
        """Change the columns in ``values`` (checked by the caller). A rename keeps the
        connection's ``totalCost``: its cost base moves to the new name's totals."""
        sql = self._connections
        _c = sql.table.c
        with self.transaction() as conn:
            before = self._get(conn, connection_id)
            columns = _columns(values)
            if "name" in values and values["name"] != before.name:
                self._create_provider_row(conn, values["name"])
                new_total = conn.execute(sql.total_cost, {"c_provider": values["name"]}).scalar()
                columns["cost_base_nanos"] = int(new_total or 0) - before.total_cost_nanos
            statement = update(sql.table).where(_c.id == connection_id).values(columns)
            self._unique_name(conn, lambda: conn.execute(statement), values.get("name", ""))
            self._bump(conn)
            return self._get(conn, connection_id)

    def delete_connection(self, connection_id: str) -> ConnectionRecord:
        """Delete a connection and its chat sessions; its ledger rows and provider totals
        stay (under its name)."""
        sql = self._connections
        with self.transaction() as conn:
            record = self._get(conn, connection_id)
            sessions = select(sql.sessions.c.id).where(sql.sessions.c.connection_id == record.id)
            conn.execute(delete(sql.messages).where(sql.messages.c.session_id.in_(sessions)))
            conn.execute(delete(sql.sessions).where(sql.sessions.c.connection_id == record.id))
            conn.execute(delete(sql.table).where(sql.table.c.id == record.id))
            self._bump(conn)
        return record

    def reencrypt_secrets(self, reencrypt: Callable[[str], str]) -> int:
        """Every stored provider secret through ``reencrypt``, in one transaction (all or
        none); returns how many. The directory counter is bumped, so every process reloads
        (and decrypts) the connections."""
        sql = self._connections
        _c = sql.table.c
        with self.transaction() as conn:
            rows = conn.execute(
                select(_c.id, _c.api_key_encrypted).where(_c.api_key_encrypted.is_not(None))
            ).all()
            for connection_id, ciphertext in rows:
                conn.execute(
                    update(sql.table)
                    .where(_c.id == connection_id)
                    .values(api_key_encrypted=reencrypt(ciphertext))
                )
            self._bump(conn)
        return len(rows)

    def _bump(self, conn: Connection) -> None:
        if not conn.execute(self._connections.bump).rowcount:
            try:  # the first change of this database: the counter row is made
                with conn.begin_nested():
                    conn.execute(
                        insert(self._connections.versions), {"id": _VERSION_ROW, "version": 1}
                    )
            except IntegrityError:  # made by another process meanwhile
                conn.execute(self._connections.bump)

    def _unique_name(self, conn: Connection, write: Callable[[], object], name: str) -> None:
        try:
            with conn.begin_nested():
                write()
        except IntegrityError:
            raise ConflictError(
                f"a provider named '{name}' exists already (names are compared case-insensitively)",
                param="name",
                code="duplicate_name",
            ) from None


def _columns(values: dict[str, Any]) -> dict[str, Any]:
    columns = dict(values)
    if "name" in columns:
        columns["name_folded"] = columns["name"].lower()
    for name in ("configuration", "models"):
        if name in columns:
            columns[name] = json.dumps(columns[name], ensure_ascii=False)
    return columns


def _record(row: Any, total_nanos: int) -> ConnectionRecord:
    configuration = _json_column(row.configuration, dict)
    models = _json_column(row.models, list)
    status, reason = row.status, row.status_reason
    unreadable = [n for n, v in (("configuration", configuration), ("models", models)) if v is None]
    if unreadable:
        what = " and ".join(unreadable)
        log.warning(
            "provider connection %s cannot be read: its stored %s is not JSON of the right "
            "shape; it is disabled until a change gives it again",
            row.id,
            what,
        )
        status, reason = "disabled", f"its stored {what} cannot be read: give it again"
    return ConnectionRecord(
        id=row.id,
        name=row.name,
        provider=row.provider,
        model=row.model,
        base_url=row.base_url,
        api_key_hint=row.api_key_hint,
        configuration=configuration if configuration is not None else {},
        models=models if models is not None else [],
        status=status,
        status_reason=reason,
        total_cost_nanos=total_nanos - row.cost_base_nanos,
        created_at=row.created_at,
        updated_at=row.updated_at,
        api_key_encrypted=row.api_key_encrypted,
    )


def _json_column(text: Any, kind: type[Any]) -> Any:
    """A JSON column's value if it parses to ``kind``, else None."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, kind) else None

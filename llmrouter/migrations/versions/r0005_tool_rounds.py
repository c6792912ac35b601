"""Built-in tool loops (issue 11): a ledger row per upstream round of an exchange, unique
by (``request_id``, ``round``) instead of ``request_id`` alone, and the built-in tools a
key may be offered (``api_keys.allowed_tools``).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import Column, Connection, Integer, Text, func, inspect, select, table, text

from llmrouter.migrations import prefix

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Lets SQLite's batch copy name the constraints it reflects unnamed.
_CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}


def upgrade() -> None:
    p = prefix()
    op.add_column(p + "api_keys", Column("allowed_tools", Text, nullable=True))
    ledger = p + "ledger"
    # A database adopted from before migrations has the unique constraint under its
    # database's own name (or none, on SQLite): dropped by the name it really has.
    old = _unique_on(op.get_bind(), ledger, ["request_id"]) or f"uq_{ledger}_request_id"
    # SQLite cannot change constraints in place: batch mode copies the table there (and
    # alters it in place elsewhere).
    with op.batch_alter_table(ledger, naming_convention=_CONVENTION) as batch:
        batch.add_column(Column("round", Integer, nullable=False, server_default=text("1")))
        batch.drop_constraint(old, type_="unique")
        batch.create_unique_constraint(f"uq_{ledger}_request_id_round", ["request_id", "round"])


def downgrade() -> None:
    p = prefix()
    ledger = p + "ledger"
    bind = op.get_bind()
    later = table(ledger, Column("round", Integer))
    if bind.execute(select(func.count()).where(later.c.round > 1)).scalar():
        # Their money is in those rows: the old uniqueness cannot hold them.
        raise RuntimeError(
            f"{ledger} has rows of built-in tool rounds (round > 1): revision 0004 cannot "
            "hold them; keep this revision"
        )
    with op.batch_alter_table(ledger, naming_convention=_CONVENTION) as batch:
        batch.drop_constraint(f"uq_{ledger}_request_id_round", type_="unique")
        batch.drop_column("round")
        batch.create_unique_constraint(f"uq_{ledger}_request_id", ["request_id"])
    with op.batch_alter_table(p + "api_keys") as batch:
        batch.drop_column("allowed_tools")


def _unique_on(bind: Connection, table_name: str, columns: list[str]) -> str | None:
    for constraint in inspect(bind).get_unique_constraints(table_name):
        if constraint["column_names"] == columns:
            return constraint["name"]
    return None

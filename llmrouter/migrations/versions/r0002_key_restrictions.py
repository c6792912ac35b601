"""Key restrictions: the models and providers an API key may call, and the version the
admission statement compares (keys over HTTP, issue 9).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import Column, Integer, Text, text

from llmrouter.migrations import prefix

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (every backend has it; SQLite's batch copy is not needed to add).
    table = prefix() + "api_keys"
    op.add_column(table, Column("allowed_models", Text, nullable=True))
    op.add_column(table, Column("allowed_providers", Text, nullable=True))
    op.add_column(
        table, Column("restrictions_version", Integer, nullable=False, server_default=text("0"))
    )


def downgrade() -> None:
    with op.batch_alter_table(prefix() + "api_keys") as table:
        table.drop_column("restrictions_version")
        table.drop_column("allowed_providers")
        table.drop_column("allowed_models")

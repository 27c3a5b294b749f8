"""Runtimes and artifacts: the runtime an execution ran in, and the files it left under ``out/``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot ALTER TABLE ... ADD COLUMN in every form Alembic emits.
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("runtime", sa.Text(), nullable=True))
        batch.add_column(sa.Column("artifacts", sa.JSON(), nullable=True))
        # A default, so that rows stored before this revision read as "nothing left out".
        batch.add_column(
            sa.Column(
                "artifacts_truncated", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("artifacts_truncated")
        batch.drop_column("artifacts")
        batch.drop_column("runtime")

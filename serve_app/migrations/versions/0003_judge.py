"""The judge a request asked for (``isolated`` or ``in_process``), kept for runs resumed elsewhere.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot ALTER TABLE ... ADD COLUMN in every form Alembic emits.
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("judge", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("judge")

"""Sessions: live interpreters that keep their state, and the executions that ran in them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Plain types, frozen here (as in 0001): serve_app.db.types wraps these.
TIME = sa.DateTime(timezone=True)
STATUS = sa.String(length=32)


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("runtime", sa.Text(), nullable=False),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column("idle_timeout_s", sa.Float(), nullable=False),
        sa.Column("host", sa.Text(), nullable=True),
        sa.Column("node_id", sa.Text(), nullable=True),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("last_used_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("terminated_reason", STATUS, nullable=True),
        sa.Column("terminated_at", TIME, nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name="fk_sessions_key_id_api_keys"),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_key_id_created_at_id", "sessions", ["key_id", "created_at", "id"])
    op.create_index("ix_sessions_status", "sessions", ["status"])
    # batch_alter_table: SQLite cannot ALTER TABLE ... ADD COLUMN in every form Alembic emits.
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("session_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("result", sa.Text(), nullable=True))
        batch.create_index("ix_executions_session_id", ["session_id"])


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.drop_index("ix_executions_session_id")
        batch.drop_column("result")
        batch.drop_column("session_id")
    op.drop_table("sessions")  # its indexes go with it

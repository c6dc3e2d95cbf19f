"""fair queues and server-side sessions: tasks.device (the device class asked for, to look at the
servable part of the queue only), tasks.failures (attempts that count against max_attempts: a
drain or restart does not), an index for each owner's oldest queued tasks, dashboard_sessions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("device", sa.String(length=8), nullable=False, server_default="auto"))
        batch.add_column(sa.Column("failures", sa.Integer(), nullable=False, server_default="0"))
        batch.create_index("ix_tasks_state_owner_id", ["state", "owner", "id"], unique=False)
    # The device class is the batch key's last part; the attempts so far all counted before.
    op.execute(
        "UPDATE tasks SET device = CASE WHEN batch_key LIKE '%/cuda' THEN 'cuda' "
        "WHEN batch_key LIKE '%/cpu' THEN 'cpu' ELSE 'auto' END, failures = attempt"
    )
    op.create_table(
        "dashboard_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("token_digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dashboard_sessions")),
    )
    with op.batch_alter_table("dashboard_sessions") as batch:
        batch.create_index(batch.f("ix_dashboard_sessions_token_digest"), ["token_digest"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dashboard_sessions") as batch:
        batch.drop_index(batch.f("ix_dashboard_sessions_token_digest"))
    op.drop_table("dashboard_sessions")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_state_owner_id")
        batch.drop_column("failures")
        batch.drop_column("device")

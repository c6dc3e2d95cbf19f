"""index tasks.finished_at: the dashboard's trainings per hour read only the last day

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 21:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_tasks_finished_at"), "tasks", ["finished_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_tasks_finished_at"), table_name="tasks")

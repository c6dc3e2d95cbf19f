"""arm columns hold 10 bits: the single-network arm is the tenth (nine term bits then 1)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 23:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (("tasks", "arm_adam", True), ("tasks", "arm_lbfgs", True), ("observations", "arm_adam", False),
           ("observations", "arm_lbfgs", True))  # fmt: skip


def _resize(old: int, new: int) -> None:
    for table, column, nullable in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                column, existing_type=sa.String(length=old), type_=sa.String(length=new), existing_nullable=nullable
            )


def upgrade() -> None:
    _resize(9, 10)


def downgrade() -> None:
    _resize(10, 9)  # fails while a single-network arm is stored, as it should

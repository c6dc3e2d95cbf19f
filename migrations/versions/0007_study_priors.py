"""study priors: studies.prior names the prior a study started from (``burgers-single-v1``; null:
none), so its engine stacks on the same prior after every restore, whatever is installed later

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 20:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("prior", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("prior")

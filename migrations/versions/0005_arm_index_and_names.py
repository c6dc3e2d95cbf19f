"""one form per arm and one name per concept: arm columns hold ``Arm.index`` (an integer) instead
of 9- or 10-character bit strings; observations.context -> params, reward_phase0 -> reward_adam

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00

The bits -> index backfill is one UPDATE per column (SQL that SQLite and PostgreSQL both run):
bit i of the string is term i, and a tenth character 1 is the single network (index 512).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ARM_COLUMNS = (("tasks", "arm_adam", True), ("tasks", "arm_lbfgs", True), ("observations", "arm_adam", False),
               ("observations", "arm_lbfgs", True))  # fmt: skip
N_TERMS, SINGLE_INDEX = 9, 512


def _index_of_bits(column: str) -> str:
    terms = " + ".join(
        f"(CASE WHEN substr({column}, {i + 1}, 1) = '1' THEN {1 << i} ELSE 0 END)" for i in range(N_TERMS)
    )
    return (
        f"CASE WHEN {column} IS NULL THEN NULL "
        f"WHEN length({column}) = {N_TERMS + 1} AND substr({column}, {N_TERMS + 1}, 1) = '1' THEN {SINGLE_INDEX} "
        f"ELSE {terms} END"
    )


def _bits_of_index(column: str) -> str:
    bits = " || ".join(f"(CASE WHEN ({column} / {1 << i}) % 2 = 1 THEN '1' ELSE '0' END)" for i in range(N_TERMS))
    return (
        f"CASE WHEN {column} IS NULL THEN NULL WHEN {column} = {SINGLE_INDEX} THEN '{'0' * N_TERMS}1' ELSE {bits} END"
    )


def _convert(new_type, expression) -> None:
    """Each arm column rewritten through a new column of ``new_type`` filled by ``expression``."""
    for table, column, nullable in ARM_COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(f"{column}_new", new_type, nullable=True))
        op.execute(f"UPDATE {table} SET {column}_new = {expression(column)}")
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
            batch.alter_column(f"{column}_new", new_column_name=column, existing_type=new_type, nullable=nullable)


def _rename_observation_columns(pairs) -> None:
    with op.batch_alter_table("observations") as batch:
        for old, new, kind in pairs:
            batch.alter_column(old, new_column_name=new, existing_type=kind)


def upgrade() -> None:
    _convert(sa.Integer(), _index_of_bits)
    _rename_observation_columns((("context", "params", sa.JSON()), ("reward_phase0", "reward_adam", sa.Float())))


def downgrade() -> None:
    _rename_observation_columns((("params", "context", sa.JSON()), ("reward_adam", "reward_phase0", sa.Float())))
    _convert(sa.String(10), _bits_of_index)

"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 17:26:04.363654
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dispatcher_id", sa.String(length=40), nullable=False),
        sa.Column("worker_id", sa.String(length=40), nullable=True),
        sa.Column("batch_key", sa.String(length=300), nullable=False),
        sa.Column("family", sa.String(length=40), nullable=False),
        sa.Column("device", sa.String(length=40), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_batches_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_batches_dispatcher_id"), ["dispatcher_id"], unique=False)

    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=True),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("family", sa.String(length=40), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
        sa.UniqueConstraint("name", name=op.f("uq_campaigns_name")),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("current_batch", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workers_last_seen"), ["last_seen"], unique=False)

    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("family", sa.String(length=40), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("profile_key", sa.String(length=100), nullable=False),
        sa.Column("profile", sa.JSON(), nullable=False),
        sa.Column("policy", sa.String(length=200), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("heuristic", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], name=op.f("fk_studies_campaign_id_campaigns")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
        sa.UniqueConstraint("key", name=op.f("uq_studies_key")),
    )
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_studies_campaign_id"), ["campaign_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_studies_family"), ["family"], unique=False)

    op.create_table(
        "policy_snapshots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("engine", sa.JSON(), nullable=False),
        sa.Column("observation_count", sa.Integer(), nullable=False),
        sa.Column("last_observation_id", sa.Integer(), nullable=True),
        sa.Column("fit_seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], name=op.f("fk_policy_snapshots_study_id_studies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_snapshots")),
        sa.UniqueConstraint("study_id", "version", name="uq_policy_snapshots_study_version"),
    )
    with op.batch_alter_table("policy_snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_policy_snapshots_study_id"), ["study_id"], unique=False)

    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("campaign_step", sa.Integer(), nullable=True),
        sa.Column("campaign_stage", sa.String(length=16), nullable=True),
        sa.Column("campaign_round", sa.Integer(), nullable=True),
        sa.Column("family", sa.String(length=40), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("batch_key", sa.String(length=300), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("solo", sa.Boolean(), nullable=False),
        sa.Column("arm_adam", sa.String(length=9), nullable=True),
        sa.Column("arm_lbfgs", sa.String(length=9), nullable=True),
        sa.Column("lbfgs_policy", sa.String(length=16), nullable=True),
        sa.Column("arm_policy", sa.String(length=200), nullable=True),
        sa.Column("batch_id", sa.Integer(), nullable=True),
        sa.Column("worker_id", sa.String(length=40), nullable=True),
        sa.Column("progress_phase", sa.String(length=8), nullable=True),
        sa.Column("progress_iteration", sa.Integer(), nullable=True),
        sa.Column("progress_total", sa.Integer(), nullable=True),
        sa.Column("progress_loss", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("rel_l2", sa.Float(), nullable=True),
        sa.Column("reward", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_tasks_batch_id_batches")),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], name=op.f("fk_tasks_campaign_id_campaigns")),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], name=op.f("fk_tasks_study_id_studies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_tasks_owner_idempotency_key"),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tasks_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index("ix_tasks_campaign_step", ["campaign_id", "campaign_step"], unique=False)
        batch_op.create_index("ix_tasks_owner_id", ["owner", "id"], unique=False)
        batch_op.create_index("ix_tasks_state_id", ["state", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_study_id"), ["study_id"], unique=False)

    op.create_table(
        "artefacts",
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.LargeBinary(), nullable=False),
        sa.Column("solution", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_artefacts_task_id_tasks")),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_artefacts")),
    )
    op.create_table(
        "observations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("arm_adam", sa.String(length=9), nullable=False),
        sa.Column("arm_lbfgs", sa.String(length=9), nullable=True),
        sa.Column("reward", sa.Float(), nullable=False),
        sa.Column("reward_phase0", sa.Float(), nullable=True),
        sa.Column("rel_l2", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], name=op.f("fk_observations_study_id_studies")),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_observations_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_observations")),
        sa.UniqueConstraint("task_id", name=op.f("uq_observations_task_id")),
    )
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.create_index("ix_observations_study_id_id", ["study_id", "id"], unique=False)

    op.create_table(
        "progress_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_progress_points_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_progress_points")),
    )
    with op.batch_alter_table("progress_points", schema=None) as batch_op:
        batch_op.create_index("ix_progress_points_task_id_id", ["task_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("progress_points", schema=None) as batch_op:
        batch_op.drop_index("ix_progress_points_task_id_id")

    op.drop_table("progress_points")
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.drop_index("ix_observations_study_id_id")

    op.drop_table("observations")
    op.drop_table("artefacts")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_study_id"))
        batch_op.drop_index("ix_tasks_state_id")
        batch_op.drop_index("ix_tasks_owner_id")
        batch_op.drop_index("ix_tasks_campaign_step")
        batch_op.drop_index(batch_op.f("ix_tasks_batch_id"))

    op.drop_table("tasks")
    with op.batch_alter_table("policy_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_policy_snapshots_study_id"))

    op.drop_table("policy_snapshots")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_studies_family"))
        batch_op.drop_index(batch_op.f("ix_studies_campaign_id"))

    op.drop_table("studies")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workers_last_seen"))

    op.drop_table("workers")
    op.drop_table("campaigns")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batches_dispatcher_id"))
        batch_op.drop_index(batch_op.f("ix_batches_created_at"))

    op.drop_table("batches")

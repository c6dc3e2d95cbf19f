"""The service's tables (SQLAlchemy 2 typed ORM). Migrations in ``migrations/`` must match them.

Only ``metalic/store`` reads these rows; it hands the other rooms records (``store.records``).
Times are naive UTC from the database clock (``utc_now``). An arm is one integer, its
``Arm.index``. A finished observation is insert-only and unique per task; every state change of a
task is a guarded update (see ``store.tasks``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.functions import FunctionElement

# Task states.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TASK_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)


class utc_now(FunctionElement):
    """The database's current UTC time, with microseconds, as a naive timestamp."""

    type = DateTime()
    inherit_cache = True


@compiles(utc_now, "sqlite")
def _utc_now_sqlite(element, compiler, **kw) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


@compiles(utc_now, "postgresql")
def _utc_now_postgresql(element, compiler, **kw) -> str:
    return "(clock_timestamp() AT TIME ZONE 'utc')"


@compiles(utc_now)
def _utc_now_default(element, compiler, **kw) -> str:
    return "CURRENT_TIMESTAMP"


# Named constraints, so that later migrations can alter them on SQLite too (batch mode).
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime()}


class CampaignRow(Base):
    """A METALIC campaign run as tasks: ``step`` = steps submitted so far (of ``steps``)."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(500), unique=True)
    owner: Mapped[str | None] = mapped_column(String(100))
    family: Mapped[str] = mapped_column(String(40))
    config: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(16), default=RUNNING)
    step: Mapped[int] = mapped_column(Integer, default=0)
    steps: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utc_now())
    finished_at: Mapped[datetime | None]


class StudyRow(Base):
    """One bandit: a family, a mode and a budget profile (or one heuristic of a campaign)."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(300), unique=True)
    family: Mapped[str] = mapped_column(String(40), index=True)
    mode: Mapped[str] = mapped_column(String(16))
    profile_key: Mapped[str] = mapped_column(String(100))
    profile: Mapped[dict[str, Any]]
    policy: Mapped[str] = mapped_column(String(200), default="ucb")
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"), index=True)
    heuristic: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now())
    prior: Mapped[str | None] = mapped_column(String(80))  # the prior it started from (metalic.priors)


class BatchRow(Base):
    """Tasks trained together in one ``train_batch`` on one worker."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    dispatcher_id: Mapped[str] = mapped_column(String(40), index=True)
    worker_id: Mapped[str | None] = mapped_column(String(40))
    batch_key: Mapped[str] = mapped_column(String(300))
    family: Mapped[str] = mapped_column(String(40))
    device: Mapped[str] = mapped_column(String(40))
    size: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=RUNNING)  # running / done / lost
    created_at: Mapped[datetime] = mapped_column(default=utc_now(), index=True)
    finished_at: Mapped[datetime | None]
    seconds: Mapped[float | None] = mapped_column(Float)


class TaskRow(Base):
    """One solve request and its life: queued -> running -> succeeded / failed / cancelled."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_tasks_owner_idempotency_key"),
        Index("ix_tasks_state_id", "state", "id"),
        Index("ix_tasks_owner_id", "owner", "id"),
        Index("ix_tasks_campaign_step", "campaign_id", "campaign_step"),
        Index("ix_tasks_state_owner_id", "state", "owner", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(100))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"))
    campaign_step: Mapped[int | None] = mapped_column(Integer)
    campaign_stage: Mapped[str | None] = mapped_column(String(16))
    campaign_round: Mapped[int | None] = mapped_column(Integer)
    family: Mapped[str] = mapped_column(String(40))
    request: Mapped[dict[str, Any]]
    batch_key: Mapped[str] = mapped_column(String(300))
    device: Mapped[str] = mapped_column(String(8), default="auto", server_default="auto")  # auto / cpu / cuda
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # dispatches so far
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # attempts that count
    solo: Mapped[bool] = mapped_column(Boolean, default=False)  # next try alone (its batch failed)
    arm_adam: Mapped[int | None] = mapped_column(Integer)  # Arm.index, once decided
    arm_lbfgs: Mapped[int | None] = mapped_column(Integer)
    lbfgs_policy: Mapped[str | None] = mapped_column(String(16))  # sequential: chosen after Adam
    arm_policy: Mapped[str | None] = mapped_column(String(200))  # which policy chose the Adam arm
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"), index=True)
    worker_id: Mapped[str | None] = mapped_column(String(40))
    progress_phase: Mapped[str | None] = mapped_column(String(8))
    progress_iteration: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    progress_loss: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utc_now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None] = mapped_column(index=True)  # throughput per hour
    heartbeat_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None]
    rel_l2: Mapped[float | None] = mapped_column(Float)
    reward: Mapped[float | None] = mapped_column(Float)


class ObservationRow(Base):
    """A finished training as the bandit sees it. Insert-only; one per task."""

    __tablename__ = "observations"
    __table_args__ = (Index("ix_observations_study_id_id", "study_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), unique=True)
    params: Mapped[dict[str, Any]]
    arm_adam: Mapped[int] = mapped_column(Integer)  # Arm.index
    arm_lbfgs: Mapped[int | None] = mapped_column(Integer)
    reward: Mapped[float] = mapped_column(Float)
    reward_adam: Mapped[float | None] = mapped_column(Float)  # sequential: the reward after the Adam phase
    rel_l2: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utc_now())


class SnapshotRow(Base):
    """The study's engine after a refit: hyper-parameters, random state, the observations it saw."""

    __tablename__ = "policy_snapshots"
    __table_args__ = (UniqueConstraint("study_id", "version", name="uq_policy_snapshots_study_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    engine: Mapped[dict[str, Any]]
    observation_count: Mapped[int] = mapped_column(Integer)
    last_observation_id: Mapped[int | None] = mapped_column(Integer)
    fit_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utc_now())


class ArtefactRow(Base):
    """A succeeded task's trained model (``metalic-model/1`` bytes) and solution grid (``.npz``)."""

    __tablename__ = "artefacts"

    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    model: Mapped[bytes] = mapped_column(LargeBinary)
    solution: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utc_now())


class WorkerRow(Base):
    """A trainer actor or a dispatcher, with its heartbeat."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # trainer / dispatcher
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), default="idle")  # idle / busy / stopped
    current_batch: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utc_now())
    last_seen: Mapped[datetime] = mapped_column(default=utc_now(), index=True)


class ProgressRow(Base):
    """Loss during training, written at a bounded rate (the task page's live curve)."""

    __tablename__ = "progress_points"
    __table_args__ = (Index("ix_progress_points_task_id_id", "task_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(8))
    iteration: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(default=utc_now())


class SessionRow(Base):
    """A dashboard login, kept server-side so that logging out ends it for every copy of its cookie."""

    __tablename__ = "dashboard_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_digest: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now())
    ended_at: Mapped[datetime | None]


class TokenRow(Base):
    """An API bearer token, stored as its SHA-256 (the token itself is shown once, at creation).
    ``name`` is the principal: tasks belong to it, whichever of its tokens submitted them."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    role: Mapped[str] = mapped_column(String(16))  # user / admin
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now())
    revoked_at: Mapped[datetime | None]

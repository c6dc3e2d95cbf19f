"""What the store hands the other rooms: frozen records, never ORM rows or sessions.

A record has the fields of its row that readers need, with arms as ``Arm`` values. A schema
change stays inside ``metalic/store``: rows become records in one function here (``record``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from metalic.arms import Arm


def record(cls, row, **extra):
    """The record ``cls`` of ``row``: its same-named fields (or ``extra``), arm indices as ``Arm``
    values, times as aware UTC datetimes (the database keeps naive UTC). One function for every
    record, so a column added to a row and a record is read here."""
    values = {}
    for f in fields(cls):
        if f.name in extra:
            values[f.name] = extra[f.name]
        elif f.name in ("arm_adam", "arm_lbfgs"):
            index = getattr(row, f.name)
            values[f.name] = None if index is None else Arm.from_index(index)
        else:
            values[f.name] = utc(getattr(row, f.name))
    return cls(**values)


def utc(value):
    """A naive datetime from the database as the aware UTC datetime it is; anything else as it is."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True)
class TaskRecord:
    """One solve request and its life: queued -> running -> succeeded / failed / cancelled.
    ``request``: the SolveRequest as JSON; ``result``: ``SolveResult.summary()`` once succeeded."""

    id: int
    owner: str | None
    idempotency_key: str | None
    study_id: int
    campaign_id: int | None
    campaign_step: int | None
    campaign_stage: str | None
    campaign_round: int | None
    family: str
    request: dict[str, Any]
    batch_key: str
    device: str
    state: str
    attempt: int
    failures: int
    solo: bool
    arm_adam: Arm | None
    arm_lbfgs: Arm | None
    lbfgs_policy: str | None
    arm_policy: str | None
    batch_id: int | None
    worker_id: str | None
    progress_phase: str | None
    progress_iteration: int | None
    progress_total: int | None
    progress_loss: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    result: dict[str, Any] | None
    rel_l2: float | None
    reward: float | None

    @property
    def params(self) -> dict[str, float]:
        return self.request["params"]


@dataclass(frozen=True)
class StudyRecord:
    """One bandit: a family, a mode and a budget profile (or one policy of a campaign).
    ``heuristic``: a campaign study's policy (or ``warmup``); ``policy``: the service's default."""

    id: int
    key: str
    family: str
    mode: str
    profile_key: str
    profile: dict[str, Any]
    policy: str
    campaign_id: int | None
    heuristic: str | None
    created_at: datetime
    prior: str | None = None


@dataclass(frozen=True)
class SnapshotRecord:
    """A study's engine after a refit; ``engine`` (its JSON) only when it was asked for."""

    study_id: int
    version: int
    observation_count: int
    last_observation_id: int | None
    fit_seconds: float
    created_at: datetime
    engine: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ObservationRecord:
    """A finished training as the bandit sees it."""

    id: int
    study_id: int
    task_id: int
    params: dict[str, float]
    arm_adam: Arm
    arm_lbfgs: Arm | None
    reward: float
    reward_adam: float | None
    rel_l2: float | None
    status: str
    created_at: datetime


@dataclass(frozen=True)
class CampaignRecord:
    """A campaign run as tasks: ``step`` = steps submitted so far (of ``steps``)."""

    id: int
    name: str | None
    owner: str | None
    family: str
    config: dict[str, Any]
    state: str
    step: int
    steps: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class WorkerRecord:
    """A trainer or a dispatcher, with its heartbeat."""

    id: str
    kind: str
    host: str
    pid: int
    device: str
    state: str
    current_batch: int | None
    started_at: datetime
    last_seen: datetime


@dataclass(frozen=True)
class ArtefactRecord:
    """A succeeded task's model file and solution grid (bytes)."""

    task_id: int
    model: bytes
    solution: bytes | None


@dataclass(frozen=True)
class TokenRecord:
    """An API token as stored (its SHA-256, never the token)."""

    id: int
    name: str
    role: str
    digest: str
    created_at: datetime
    revoked_at: datetime | None

"""A task's life in the store; every state change is a guarded update whose row count is checked.

queued --start_batch--> running --record_result--> succeeded (+ observation + artefact, one transaction)
                           |--retry_or_fail--> queued (attempt + 1 at the next dispatch) / failed
queued / running --cancel--> cancelled

A write for a task names the attempt it belongs to; if the task was requeued or cancelled
meanwhile, the write changes nothing (a late result for an old attempt is refused).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from metalic.arms import Arm
from metalic.jobs import SolveRequest, SolveResult
from metalic.store.models import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    ArtefactRow,
    BatchRow,
    ObservationRow,
    ProgressRow,
    StudyRow,
    TaskRow,
    utc_now,
)
from metalic.store.records import ArtefactRecord, TaskRecord, record
from metalic.store.studies import study_for_request


class QueueFull(Exception):
    """The owner already has as many queued and running tasks as one user may."""


def submit(
    store,
    request: SolveRequest,
    owner: str | None = None,
    idempotency_key: str | None = None,
    policy: str = "ucb",
    max_open: int | None = None,
) -> tuple[TaskRecord, bool]:
    """Queue a validated request; returns (task, created). With an ``idempotency_key`` already used
    by ``owner``, the earlier task is returned and nothing is written. QueueFull when ``owner``
    already has ``max_open`` queued and running tasks."""
    (found,) = submit_batch(store, [(request, owner, idempotency_key)], policy, max_open)
    if isinstance(found, QueueFull):
        raise found
    return found


def submit_batch(
    store,
    items: Sequence[tuple[SolveRequest, str | None, str | None]],
    policy: str = "ucb",
    max_open: int | None = None,
) -> list[tuple[TaskRecord, bool] | QueueFull]:
    """Queue several (request, owner, idempotency key) in one transaction (a server's group commit):
    for each, (task, created) as ``submit`` gives it, or QueueFull when its owner (not None) would
    have more than ``max_open`` queued and running tasks; in order."""
    out: list = []
    with store.write() as s:
        studies: dict[str, int] = {}
        keyed = _keyed_tasks(s, [(o, k) for _, o, k in items if k is not None])
        room = _room(s, {o for _, o, _ in items if o is not None}, max_open)
        fresh: list[TaskRow] = []
        for request, owner, key in items:
            if key is not None and (owner, key) in keyed:
                out.append((keyed[(owner, key)], False))
                continue
            if owner in room:
                if room[owner] <= 0:
                    out.append(
                        QueueFull(f"{owner} has {max_open} queued and running tasks, the most one user may have")
                    )
                    continue
                room[owner] -= 1
            task = new_task(request, _study_id(s, request, policy, studies), owner=owner, idempotency_key=key)
            if key is not None:
                keyed[(owner, key)] = task
            fresh.append(task)
            out.append((task, True))
        s.add_all(fresh)
        s.flush()
        return [x if isinstance(x, QueueFull) else (record(TaskRecord, x[0]), x[1]) for x in out]


def _room(s: Session, owners: set[str], max_open: int | None) -> dict[str, int]:
    """How many more tasks each owner may queue (none of them when there is no limit)."""
    if max_open is None or not owners:
        return {}
    open_now = dict(
        s.execute(
            select(TaskRow.owner, func.count())
            .where(TaskRow.owner.in_(owners), TaskRow.state.in_((QUEUED, RUNNING)))
            .group_by(TaskRow.owner)
        ).all()
    )
    return {o: max_open - int(open_now.get(o, 0)) for o in owners}


def _keyed_tasks(s: Session, wanted: list[tuple[str | None, str]]) -> dict[tuple, TaskRow]:
    """The tasks already submitted under (owner, idempotency key)."""
    if not wanted:
        return {}
    owners = {o for o, _ in wanted}
    keys = {k for _, k in wanted}
    found = {}
    for t in s.scalars(select(TaskRow).where(TaskRow.idempotency_key.in_(keys))).all():
        if t.owner in owners or (t.owner is None and None in owners):
            found[(t.owner, t.idempotency_key)] = t
    return found


def _study_id(s: Session, request: SolveRequest, policy: str, known: dict[str, int]) -> int:
    """The id of the study that learns from ``request`` (``known``: this transaction's lookups)."""
    key = f"{request.family}/{request.mode}/{request.profile_key()}"
    if key not in known:
        known[key] = study_for_request(s, request, policy).id
    return known[key]


def submit_many(store, requests: Sequence[SolveRequest], owner: str | None = None, policy: str = "ucb") -> list[int]:
    """Queue several validated requests in one transaction; returns their task ids in order."""
    return [t.id for t, _ in submit_batch(store, [(r, owner, None) for r in requests], policy)]  # no limit: no refusal


def new_task(request: SolveRequest, study_id: int, **fields) -> TaskRow:
    """A queued task row for ``request`` (explicit arms are decided now, learned ones at dispatch)."""
    first, second = request.arm_choice, request.arm_lbfgs_choice
    arm_lbfgs = None
    if second is not None and not second.learned:
        arm_lbfgs = second.arm.index
    values = {
        "study_id": study_id,
        "family": request.family,
        "request": request.model_dump(mode="json"),
        "batch_key": request.batch_key(),
        "device": request.device,
        "state": QUEUED,
        "attempt": 0,
        "solo": False,
        "arm_adam": None if first.learned else first.arm.index,
        "arm_lbfgs": arm_lbfgs,
        "arm_policy": None if first.learned else "explicit",
    }
    return TaskRow(**(values | fields))


def _task_row(session: Session, task_id: int, owner: str | None = None) -> TaskRow | None:
    task = session.get(TaskRow, task_id)
    if task is None or (owner is not None and task.owner != owner):
        return None
    return task


def get_task(store, task_id: int, owner: str | None = None) -> TaskRecord | None:
    """The task, or None when it does not exist or (with ``owner``) belongs to someone else."""
    with store.read() as s:
        task = _task_row(s, task_id, owner)
        return None if task is None else record(TaskRecord, task)


def list_tasks(
    store, owner: str | None = None, state: str | None = None, limit: int = 20, before: int | None = None
) -> list[TaskRecord]:
    """Tasks newest first (of ``owner`` when given, in ``state`` when given, ids below ``before``)."""
    q = select(TaskRow).order_by(TaskRow.id.desc()).limit(limit)
    if owner is not None:
        q = q.where(TaskRow.owner == owner)
    if state is not None:
        q = q.where(TaskRow.state == state)
    if before is not None:
        q = q.where(TaskRow.id < before)
    with store.read() as s:
        return [record(TaskRecord, t) for t in s.scalars(q).all()]


def get_artefact(store, task_id: int) -> ArtefactRecord | None:
    with store.read() as s:
        row = s.get(ArtefactRow, task_id)
        return None if row is None else record(ArtefactRecord, row)


def cancel(store, task_id: int, owner: str | None = None) -> TaskRecord | None:
    """Cancel a queued or running task (a running one stops at its next progress point).
    Returns the task as it is afterwards; None when not found (or not the owner's)."""
    with store.write() as s:
        task = _task_row(s, task_id, owner)
        if task is None:
            return None
        s.execute(
            update(TaskRow)
            .where(TaskRow.id == task_id, TaskRow.state.in_((QUEUED, RUNNING)))
            .values(state=CANCELLED, finished_at=utc_now(), error="cancelled")
        )
        s.refresh(task)
        return record(TaskRecord, task)


def cancel_campaign_tasks(session: Session, campaign_id: int) -> None:
    """Cancel a campaign's queued and running tasks (inside the caller's write transaction)."""
    session.execute(
        update(TaskRow)
        .where(TaskRow.campaign_id == campaign_id, TaskRow.state.in_((QUEUED, RUNNING)))
        .values(state=CANCELLED, finished_at=utc_now(), error="campaign cancelled")
    )


# ---- dispatch -------------------------------------------------------------------------------------
def queued_tasks(store, limit: int) -> list[TaskRecord]:
    """The oldest queued tasks, in order."""
    with store.read() as s:
        rows = s.scalars(select(TaskRow).where(TaskRow.state == QUEUED).order_by(TaskRow.id).limit(limit)).all()
        return [record(TaskRecord, t) for t in rows]


def queued_by_owner(store, devices: Iterable[str], per_owner: int) -> tuple[list[TaskRecord], dict]:
    """What the dispatcher packs from: each owner's oldest ``per_owner`` queued tasks whose device
    class is one of ``devices`` (oldest first), and each owner's running tasks (owner -> count).
    A task no trainer can serve, or one owner's long queue, never hides another's."""
    ranked = (
        select(TaskRow.id, func.row_number().over(partition_by=TaskRow.owner, order_by=TaskRow.id).label("rank"))
        .where(TaskRow.state == QUEUED, TaskRow.device.in_(list(devices)))
        .subquery()
    )
    q = select(TaskRow).join(ranked, ranked.c.id == TaskRow.id).where(ranked.c.rank <= per_owner).order_by(TaskRow.id)
    with store.read() as s:
        tasks = [record(TaskRecord, t) for t in s.scalars(q).all()]
        running = dict(
            s.execute(select(TaskRow.owner, func.count()).where(TaskRow.state == RUNNING).group_by(TaskRow.owner)).all()
        )
    return tasks, running


def fail_unservable(store, devices: Iterable[str], older_than: float) -> list[int]:
    """Fail the queued tasks that asked for a device class not among ``devices`` and have waited
    ``older_than`` seconds (their GPU left the cluster, or never joined). Returns their ids."""
    from datetime import timedelta

    served = set(devices) | {"auto"}
    with store.write() as s:
        cutoff = s.execute(select(utc_now())).scalar_one() - timedelta(seconds=older_than)
        rows = s.execute(
            select(TaskRow.id, TaskRow.device).where(
                TaskRow.state == QUEUED, TaskRow.device.not_in(served), TaskRow.created_at < cutoff
            )
        ).all()
        for task_id, device in rows:
            error = f"device: no trainer of this cluster serves {device} (waited {older_than:g} s)"
            s.execute(
                update(TaskRow)
                .where(TaskRow.id == task_id, TaskRow.state == QUEUED)
                .values(state=FAILED, finished_at=utc_now(), error=error)
            )
    return [task_id for task_id, _ in rows]


def running_arms(store, study_ids: Iterable[int]) -> dict[int, list[tuple[dict, Arm]]]:
    """Per study, (parameters, Adam arm) of its running tasks: the pending trainings."""
    ids = list(study_ids)
    if not ids:
        return {}
    with store.read() as s:
        rows = s.execute(
            select(TaskRow.study_id, TaskRow.request, TaskRow.arm_adam).where(
                TaskRow.state == RUNNING, TaskRow.study_id.in_(ids), TaskRow.arm_adam.is_not(None)
            )
        ).all()
    out: dict[int, list[tuple[dict, Arm]]] = {}
    for study_id, request, arm in rows:
        out.setdefault(study_id, []).append((request["params"], Arm.from_index(arm)))
    return out


@dataclass(frozen=True)
class Assignment:
    """A queued task with its arms decided, to start in a batch."""

    task_id: int
    arm_adam: Arm
    arm_lbfgs: Arm | None
    lbfgs_policy: str | None
    arm_policy: str


def start_batch(
    store, assignments: Sequence[Assignment], *, dispatcher_id: str, worker_id: str | None, device: str
) -> tuple[int | None, list[TaskRecord]]:
    """Mark the tasks running in a new batch (attempt + 1). A task no longer queued (cancelled
    meanwhile) is left out. Returns (batch id, started tasks), or (None, []) when none started."""
    with store.write() as s:
        started: list[int] = []
        batch = BatchRow(
            dispatcher_id=dispatcher_id, worker_id=worker_id, batch_key="", family="", device=device, size=0
        )
        s.add(batch)
        s.flush()
        for a in assignments:
            n = s.execute(
                update(TaskRow)
                .where(TaskRow.id == a.task_id, TaskRow.state == QUEUED)
                .values(
                    state=RUNNING,
                    attempt=TaskRow.attempt + 1,
                    batch_id=batch.id,
                    worker_id=worker_id,
                    arm_adam=a.arm_adam.index,
                    arm_lbfgs=None if a.arm_lbfgs is None else a.arm_lbfgs.index,
                    lbfgs_policy=a.lbfgs_policy,
                    arm_policy=a.arm_policy,
                    started_at=utc_now(),
                    heartbeat_at=utc_now(),
                    progress_phase=None,
                    progress_iteration=None,
                    progress_total=None,
                    progress_loss=None,
                )
            ).rowcount
            if n == 1:
                started.append(a.task_id)
        if not started:
            s.delete(batch)
            return None, []
        tasks = s.scalars(select(TaskRow).where(TaskRow.id.in_(started)).order_by(TaskRow.id)).all()
        batch.batch_key, batch.family, batch.size = tasks[0].batch_key, tasks[0].family, len(tasks)
        return batch.id, [record(TaskRecord, t) for t in tasks]


def finish_batch(store, batch_id: int, state: str, seconds: float | None = None) -> None:
    with store.write() as s:
        s.execute(
            update(BatchRow)
            .where(BatchRow.id == batch_id, BatchRow.state == RUNNING)
            .values(state=state, finished_at=utc_now(), seconds=seconds)
        )


def orphaned_batches(store, live_dispatchers: Iterable[str]) -> list[int]:
    """Running batches whose dispatcher is not one of ``live_dispatchers``."""
    with store.read() as s:
        rows = s.execute(
            select(BatchRow.id).where(BatchRow.state == RUNNING, BatchRow.dispatcher_id.not_in(list(live_dispatchers)))
        ).all()
    return [b for (b,) in rows]


# ---- while running --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProgressItem:
    task_id: int
    attempt: int
    phase: str
    iteration: int
    total: int
    loss: float | None


def write_progress(store, items: Sequence[ProgressItem]) -> set[int]:
    """Record progress of running tasks (and a heartbeat); returns the ids of tasks that are no
    longer running at their attempt (cancelled or requeued): their training should stop."""
    gone: set[int] = set()
    with store.write() as s:
        for it in items:
            loss = it.loss if it.loss is not None and math.isfinite(it.loss) else None
            n = s.execute(
                update(TaskRow)
                .where(*_live(it.task_id, it.attempt))
                .values(
                    progress_phase=it.phase,
                    progress_iteration=it.iteration,
                    progress_total=it.total,
                    progress_loss=loss,
                    heartbeat_at=utc_now(),
                )
            ).rowcount
            if n == 1:
                s.add(
                    ProgressRow(
                        task_id=it.task_id, attempt=it.attempt, phase=it.phase, iteration=it.iteration, loss=loss
                    )
                )
            else:
                gone.add(it.task_id)
    return gone


def _live(task_id: int, attempt: int) -> tuple:
    """The guard of every write for one attempt of a task: it is still running at that attempt."""
    return TaskRow.id == task_id, TaskRow.attempt == attempt, TaskRow.state == RUNNING


def live_tasks(store, items: Sequence[tuple[int, int]]) -> set[int]:
    """Of (task id, attempt), the ids still running at that attempt."""
    if not items:
        return set()
    with store.read() as s:
        rows = s.execute(
            select(TaskRow.id, TaskRow.attempt).where(TaskRow.id.in_([i for i, _ in items]), TaskRow.state == RUNNING)
        ).all()
    current = dict(rows)
    return {i for i, a in items if current.get(i) == a}


def heartbeat_tasks(store, items: Sequence[tuple[int, int]]) -> None:
    with store.write() as s:
        for task_id, attempt in items:
            s.execute(update(TaskRow).where(*_live(task_id, attempt)).values(heartbeat_at=utc_now()))


# ---- outcomes -------------------------------------------------------------------------------------
def record_result(store, task_id: int, attempt: int, result: SolveResult) -> bool:
    """Task succeeded + its observation + its artefact, in one transaction, only if the task is
    still running at ``attempt``. Returns False (and writes nothing) otherwise."""
    if result.status == "cancelled" or result.reward is None:
        return False
    summary = result.summary()
    with store.write() as s:
        n = s.execute(
            update(TaskRow)
            .where(*_live(task_id, attempt))
            .values(
                state=SUCCEEDED,
                finished_at=utc_now(),
                result=summary,
                rel_l2=summary["rel_l2"],
                reward=result.reward,
                arm_adam=result.arm_adam.index,
                arm_lbfgs=result.arm_lbfgs.index,
                error=None,
            )
        ).rowcount
        if n != 1:
            return False
        task = s.get(TaskRow, task_id)
        sequential = s.get(StudyRow, task.study_id).mode == "sequential"
        s.add(
            ObservationRow(
                study_id=task.study_id,
                task_id=task_id,
                params=task.request["params"],
                arm_adam=result.arm_adam.index,
                arm_lbfgs=result.arm_lbfgs.index if sequential else None,
                reward=result.reward,
                reward_adam=result.reward_adam if sequential else None,
                rel_l2=summary["rel_l2"],
                status=result.status,
            )
        )
        if result.model is not None:
            s.add(ArtefactRow(task_id=task_id, model=result.model, solution=result.solution))
    return True


def retry_or_fail(
    store, items: Sequence[tuple[int, int]], error: str, max_attempts: int, solo: bool = False, counted: bool = True
) -> dict[str, list[int]]:
    """Tasks whose attempt ended without a result: back to the queue, or failed once ``max_attempts``
    of their attempts ended so. ``solo``: their next try runs alone (their batch raised).
    ``counted=False``: the attempt ended for reasons of the service's own (a drain, a restart), not
    of the task's: it goes back to the queue and its failures stay as they were."""
    out: dict[str, list[int]] = {"requeued": [], "failed": []}
    requeue = {"state": QUEUED, "error": error[:4000], "solo": solo, "batch_id": None, "worker_id": None,
               "heartbeat_at": None}  # fmt: skip
    with store.write() as s:
        for task_id, attempt in items:
            guard = _live(task_id, attempt)
            if not counted:
                values, outcome = requeue, "requeued"
            else:
                failures = s.scalar(select(TaskRow.failures).where(*guard))
                if failures is None:
                    continue  # no longer running at this attempt
                if failures + 1 >= max_attempts:
                    values = {"state": FAILED, "finished_at": utc_now(), "error": error[:4000]}
                    outcome = "failed"
                else:
                    values, outcome = requeue, "requeued"
                values = {**values, "failures": TaskRow.failures + 1}
            if s.execute(update(TaskRow).where(*guard).values(**values)).rowcount:
                out[outcome].append(task_id)
    return out


def stale_running(store, lease_seconds: float) -> list[tuple[int, int, int | None]]:
    """(task id, attempt, batch id) of running tasks without a heartbeat for ``lease_seconds``."""
    from datetime import timedelta

    with store.read() as s:
        cutoff = s.execute(select(utc_now())).scalar_one() - timedelta(seconds=lease_seconds)
        rows = s.execute(
            select(TaskRow.id, TaskRow.attempt, TaskRow.batch_id).where(
                TaskRow.state == RUNNING, TaskRow.heartbeat_at < cutoff
            )
        ).all()
    return [tuple(r) for r in rows]


def running_of_batches(store, batch_ids: Iterable[int]) -> list[tuple[int, int]]:
    ids = list(batch_ids)
    if not ids:
        return []
    with store.read() as s:
        rows = s.execute(
            select(TaskRow.id, TaskRow.attempt).where(TaskRow.state == RUNNING, TaskRow.batch_id.in_(ids))
        ).all()
    return [tuple(r) for r in rows]


def counts_by_state(store, campaign_id: int | None = None) -> dict[str, int]:
    """Tasks per state (states with none left out), of one campaign or of all."""
    with store.read() as s:
        return state_counts(s, campaign_id)


def state_counts(session: Session, campaign_id: int | None = None) -> dict[str, int]:
    """``counts_by_state`` inside a caller's transaction."""
    q = select(TaskRow.state, func.count()).group_by(TaskRow.state)
    if campaign_id is not None:
        q = q.where(TaskRow.campaign_id == campaign_id)
    return {state: int(n) for state, n in session.execute(q).all()}

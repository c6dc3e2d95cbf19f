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

from metalic.jobs import SolveRequest, SolveResult
from metalic.store.models import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Artefact,
    Batch,
    Observation,
    ProgressPoint,
    Study,
    Task,
    utc_now,
)
from metalic.store.studies import bits, study_for_request


def submit(
    store,
    request: SolveRequest,
    owner: str | None = None,
    idempotency_key: str | None = None,
    policy: str = "ucb",
) -> tuple[Task, bool]:
    """Queue a validated request; returns (task, created). With an ``idempotency_key`` already used
    by ``owner``, the earlier task is returned and nothing is written."""
    with store.write() as s:
        if idempotency_key is not None:
            found = s.scalar(select(Task).where(Task.owner == owner, Task.idempotency_key == idempotency_key))
            if found is not None:
                return found, False
        study = study_for_request(s, request, policy)
        task = new_task(request, study.id, owner=owner, idempotency_key=idempotency_key)
        s.add(task)
        s.flush()
        return task, True


def submit_batch(
    store, items: Sequence[tuple[SolveRequest, str | None, str | None]], policy: str = "ucb"
) -> list[tuple[Task, bool]]:
    """Queue several (request, owner, idempotency key) in one transaction (a server's group commit):
    returns (task, created) for each, as ``submit`` would, in order."""
    out: list[tuple[Task, bool]] = []
    with store.write() as s:
        studies: dict[str, int] = {}
        keyed: dict[tuple, Task] = {}
        wanted = [(o, k) for _, o, k in items if k is not None]
        if wanted:
            owners = {o for o, _ in wanted}
            keys = {k for _, k in wanted}
            for t in s.scalars(select(Task).where(Task.idempotency_key.in_(keys))).all():
                if t.owner in owners or (t.owner is None and None in owners):
                    keyed[(t.owner, t.idempotency_key)] = t
        fresh: list[Task] = []
        for request, owner, key in items:
            if key is not None and (owner, key) in keyed:
                out.append((keyed[(owner, key)], False))
                continue
            study_key = f"{request.family}/{request.mode}/{request.profile_key()}"
            if study_key not in studies:
                studies[study_key] = study_for_request(s, request, policy).id
            task = new_task(request, studies[study_key], owner=owner, idempotency_key=key)
            if key is not None:
                keyed[(owner, key)] = task
            fresh.append(task)
            out.append((task, True))
        s.add_all(fresh)
        s.flush()
    return out


def submit_many(store, requests: Sequence[SolveRequest], owner: str | None = None, policy: str = "ucb") -> list[int]:
    """Queue several validated requests in one transaction; returns their task ids in order."""
    with store.write() as s:
        studies: dict[str, int] = {}
        tasks = []
        for request in requests:
            key = f"{request.family}/{request.mode}/{request.profile_key()}"
            if key not in studies:
                studies[key] = study_for_request(s, request, policy).id
            tasks.append(new_task(request, studies[key], owner=owner))
        s.add_all(tasks)
        s.flush()
        return [t.id for t in tasks]


def new_task(request: SolveRequest, study_id: int, **fields) -> Task:
    """A queued task row for ``request`` (explicit arms are decided now, learned ones at dispatch)."""
    first, second = request.arm_choice, request.arm_lbfgs_choice
    arm_lbfgs = None
    if second is not None and not second.learned:
        arm_lbfgs = bits(second.arm)
    return Task(
        study_id=study_id,
        family=request.family,
        request=request.model_dump(mode="json"),
        batch_key=request.batch_key(),
        state=QUEUED,
        attempt=0,
        solo=False,
        arm_adam=None if first.learned else bits(first.arm),
        arm_lbfgs=arm_lbfgs,
        arm_policy=None if first.learned else "explicit",
        **fields,
    )


def get_task(session: Session, task_id: int, owner: str | None = None) -> Task | None:
    """The task, or None when it does not exist or (with ``owner``) belongs to someone else."""
    task = session.get(Task, task_id)
    if task is None or (owner is not None and task.owner != owner):
        return None
    return task


def cancel(store, task_id: int, owner: str | None = None) -> Task | None:
    """Cancel a queued or running task (a running one stops at its next progress point).
    Returns the task as it is afterwards; None when not found (or not the owner's)."""
    with store.write() as s:
        task = get_task(s, task_id, owner)
        if task is None:
            return None
        s.execute(
            update(Task)
            .where(Task.id == task_id, Task.state.in_((QUEUED, RUNNING)))
            .values(state=CANCELLED, finished_at=utc_now(), error="cancelled")
        )
        s.refresh(task)
        return task


# ---- dispatch -------------------------------------------------------------------------------------
def queued_tasks(session: Session, limit: int) -> Sequence[Task]:
    """The oldest queued tasks, in order."""
    return session.scalars(select(Task).where(Task.state == QUEUED).order_by(Task.id).limit(limit)).all()


def running_arms(session: Session, study_ids: Iterable[int]) -> dict[int, list[tuple[dict, str]]]:
    """Per study, (context, Adam-arm bits) of its running tasks: the pending trainings."""
    ids = list(study_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(Task.study_id, Task.request, Task.arm_adam).where(
            Task.state == RUNNING, Task.study_id.in_(ids), Task.arm_adam.is_not(None)
        )
    ).all()
    out: dict[int, list[tuple[dict, str]]] = {}
    for study_id, request, arm in rows:
        out.setdefault(study_id, []).append((request["params"], arm))
    return out


@dataclass(frozen=True)
class Assignment:
    """A queued task with its arms decided, to start in a batch."""

    task_id: int
    arm_adam: str
    arm_lbfgs: str | None
    lbfgs_policy: str | None
    arm_policy: str


def start_batch(
    store, assignments: Sequence[Assignment], *, dispatcher_id: str, worker_id: str | None, device: str
) -> tuple[int | None, list[Task]]:
    """Mark the tasks running in a new batch (attempt + 1). A task no longer queued (cancelled
    meanwhile) is left out. Returns (batch id, started tasks), or (None, []) when none started."""
    with store.write() as s:
        started: list[int] = []
        batch = Batch(dispatcher_id=dispatcher_id, worker_id=worker_id, batch_key="", family="", device=device, size=0)
        s.add(batch)
        s.flush()
        for a in assignments:
            n = s.execute(
                update(Task)
                .where(Task.id == a.task_id, Task.state == QUEUED)
                .values(
                    state=RUNNING,
                    attempt=Task.attempt + 1,
                    batch_id=batch.id,
                    worker_id=worker_id,
                    arm_adam=a.arm_adam,
                    arm_lbfgs=a.arm_lbfgs,
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
        tasks = s.scalars(select(Task).where(Task.id.in_(started)).order_by(Task.id)).all()
        batch.batch_key, batch.family, batch.size = tasks[0].batch_key, tasks[0].family, len(tasks)
        return batch.id, list(tasks)


def finish_batch(store, batch_id: int, state: str, seconds: float | None = None) -> None:
    with store.write() as s:
        s.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.state == RUNNING)
            .values(state=state, finished_at=utc_now(), seconds=seconds)
        )


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
                update(Task)
                .where(Task.id == it.task_id, Task.attempt == it.attempt, Task.state == RUNNING)
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
                    ProgressPoint(
                        task_id=it.task_id, attempt=it.attempt, phase=it.phase, iteration=it.iteration, loss=loss
                    )
                )
            else:
                gone.add(it.task_id)
    return gone


def live_tasks(store, items: Sequence[tuple[int, int]]) -> set[int]:
    """Of (task id, attempt), the ids still running at that attempt."""
    if not items:
        return set()
    with store.read() as s:
        rows = s.execute(
            select(Task.id, Task.attempt).where(Task.id.in_([i for i, _ in items]), Task.state == RUNNING)
        ).all()
    current = dict(rows)
    return {i for i, a in items if current.get(i) == a}


def heartbeat_tasks(store, items: Sequence[tuple[int, int]]) -> None:
    with store.write() as s:
        for task_id, attempt in items:
            s.execute(
                update(Task)
                .where(Task.id == task_id, Task.attempt == attempt, Task.state == RUNNING)
                .values(heartbeat_at=utc_now())
            )


# ---- outcomes -------------------------------------------------------------------------------------
def record_result(store, task_id: int, attempt: int, result: SolveResult) -> bool:
    """Task succeeded + its observation + its artefact, in one transaction, only if the task is
    still running at ``attempt``. Returns False (and writes nothing) otherwise."""
    if result.status == "cancelled" or result.reward is None:
        return False
    summary = result.summary()
    with store.write() as s:
        n = s.execute(
            update(Task)
            .where(Task.id == task_id, Task.attempt == attempt, Task.state == RUNNING)
            .values(
                state=SUCCEEDED,
                finished_at=utc_now(),
                result=summary,
                rel_l2=summary["rel_l2"],
                reward=result.reward,
                arm_adam=bits(result.arm_adam),
                arm_lbfgs=bits(result.arm_lbfgs),
                error=None,
            )
        ).rowcount
        if n != 1:
            return False
        task = s.get(Task, task_id)
        study = s.get(Study, task.study_id)
        sequential = study.mode == "sequential"
        s.add(
            Observation(
                study_id=study.id,
                task_id=task_id,
                context=task.request["params"],
                arm_adam=bits(result.arm_adam),
                arm_lbfgs=bits(result.arm_lbfgs) if sequential else None,
                reward=result.reward,
                reward_phase0=result.reward_phase0 if sequential else None,
                rel_l2=summary["rel_l2"],
                status=result.status,
            )
        )
        if result.model is not None:
            s.add(Artefact(task_id=task_id, model=result.model, solution=result.solution))
    return True


def retry_or_fail(
    store, items: Sequence[tuple[int, int]], error: str, max_attempts: int, solo: bool = False
) -> dict[str, list[int]]:
    """Tasks whose attempt ended without a result: back to the queue, or failed once they have had
    ``max_attempts`` attempts. ``solo``: their next try runs alone (their batch raised)."""
    out: dict[str, list[int]] = {"requeued": [], "failed": []}
    with store.write() as s:
        for task_id, attempt in items:
            guard = (Task.id == task_id, Task.attempt == attempt, Task.state == RUNNING)
            if attempt >= max_attempts:
                n = s.execute(
                    update(Task).where(*guard).values(state=FAILED, finished_at=utc_now(), error=error[:4000])
                ).rowcount
                if n:
                    out["failed"].append(task_id)
            else:
                n = s.execute(
                    update(Task)
                    .where(*guard)
                    .values(
                        state=QUEUED, error=error[:4000], solo=solo, batch_id=None, worker_id=None, heartbeat_at=None
                    )
                ).rowcount
                if n:
                    out["requeued"].append(task_id)
    return out


def stale_running(store, lease_seconds: float) -> list[tuple[int, int, int | None]]:
    """(task id, attempt, batch id) of running tasks without a heartbeat for ``lease_seconds``."""
    from datetime import timedelta

    with store.read() as s:
        cutoff = s.execute(select(utc_now())).scalar_one() - timedelta(seconds=lease_seconds)
        rows = s.execute(
            select(Task.id, Task.attempt, Task.batch_id).where(Task.state == RUNNING, Task.heartbeat_at < cutoff)
        ).all()
    return [tuple(r) for r in rows]


def running_of_batches(store, batch_ids: Iterable[int]) -> list[tuple[int, int]]:
    ids = list(batch_ids)
    if not ids:
        return []
    with store.read() as s:
        rows = s.execute(select(Task.id, Task.attempt).where(Task.state == RUNNING, Task.batch_id.in_(ids))).all()
    return [tuple(r) for r in rows]


def counts_by_state(session: Session, campaign_id: int | None = None) -> dict[str, int]:
    """Tasks per state (states with none left out), of one campaign or of all."""
    q = select(Task.state, func.count()).group_by(Task.state)
    if campaign_id is not None:
        q = q.where(Task.campaign_id == campaign_id)
    return {state: int(n) for state, n in session.execute(q).all()}

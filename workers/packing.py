"""Queued tasks -> batches on free trainers, with their arms decided.

``Packer.pack(free slots)`` reads each owner's oldest queued tasks that a trainer can serve, puts
them in fair-share order, lets ``batching.plan_batches`` pack them (batch keys, solo tasks, each
trainer's limit), decides each batch's arms, and marks the batch's tasks running in the store.
Explicit arms stay as asked; ``learned`` ones are asked of the study's engine restored from its
latest snapshot (``EngineCache``: no fit here), aware of the study's running trainings and of the
batch's earlier choices, so one batch never repeats an arm at one parameter point.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from metalic.batching import Queued, Trainer, fair_order, plan_batches, ready
from metalic.jobs import Run, SolveRequest
from metalic.store import tasks as task_store
from metalic.store.records import TaskRecord
from metalic.store.studies import EngineCache, get_study
from workers.batch import BatchPayload, DispatchedTask
from workers.executors import Slot

log = logging.getLogger(__name__)


class Packer:
    def __init__(self, store, executor, dispatcher_id: str, max_batch: int | None = None, window: float = 0.0):
        self.store, self.executor, self.dispatcher_id, self.max_batch = store, executor, dispatcher_id, max_batch
        self.window = window  # seconds a batch that is not full waits for the tasks sent with it
        self.engines = EngineCache(store)

    def limit(self, slot: Slot) -> int:
        return min(slot.max_batch, self.max_batch) if self.max_batch else slot.max_batch

    def pack(self, free: Sequence[Slot]) -> list[tuple[Slot, BatchPayload, set[int]]]:
        """Batches started in the store for ``free`` slots: (slot, payload, its studies). The queue
        is read per owner and per servable device class (``store.tasks.queued_by_owner``), put in
        fair-share order (``batching.fair_order``), packed (``batching.plan_batches``); a batch
        that is not full waits for the tasks sent with it (``batching.ready``)."""
        if not free:
            return []
        devices = {"auto"} | {s.device for s in self.executor.slots}
        queued, running = task_store.queued_by_owner(self.store, devices, per_owner=2 * max(map(self.limit, free)))
        if not queued:
            return []
        queued = [queued[i] for i in fair_order([t.owner for t in queued], running)]
        trainers = [Trainer(s.device, self.limit(s)) for s in free]
        plans = plan_batches([Queued(t.batch_key, t.device, t.solo) for t in queued], trainers)
        now = self.store.now()
        out = []
        for plan in plans:
            tasks = [queued[i] for i in plan.runs]
            age = (now - min(t.created_at for t in tasks)).total_seconds()
            if not ready(len(tasks), trainers[plan.trainer].max_batch, age, self.window):
                continue
            started = self._start(free[plan.trainer], tasks)
            if started is not None:
                out.append((free[plan.trainer], *started))
        return out

    def _start(self, slot: Slot, tasks: list[TaskRecord]) -> tuple[BatchPayload, set[int]] | None:
        assignments, engines = self._decide_arms(tasks)
        worker_id = self.executor.worker_id(slot)
        batch_id, started = task_store.start_batch(
            self.store, assignments, dispatcher_id=self.dispatcher_id, worker_id=worker_id, device=slot.device
        )
        if batch_id is None:
            return None
        dispatched = [DispatchedTask(t.id, t.attempt, _run_of(t)) for t in started]
        used = {d.run.chooser for d in dispatched if d.run.chooser is not None}
        payload = BatchPayload(batch_id, dispatched, {k: v for k, v in engines.items() if k in used})
        log.info("batch %s: %d task(s) of %s on %s", batch_id, len(started), started[0].batch_key, slot.name)
        return payload, {t.study_id for t in started}

    def _decide_arms(self, tasks: list[TaskRecord]) -> tuple[list[task_store.Assignment], dict[str, dict]]:
        """Arms for each task: explicit ones as asked, learned ones from the study's engine; and the
        engine snapshots that pick learned L-BFGS arms, by study id."""
        learned = {t.study_id for t in tasks if t.arm_adam is None or _learned_lbfgs(t)}
        studies = {sid: get_study(self.store, sid) for sid in learned}
        pending = task_store.running_arms(self.store, learned)
        versions = {sid: self.engines.get(sid) for sid in learned}
        chosen = {sid: list(pending.get(sid, [])) for sid in learned}
        out: list[task_store.Assignment] = []
        engines: dict[str, dict] = {}
        for t in tasks:
            request = SolveRequest.model_validate(t.request, context={"trusted": True})
            arm_adam, arm_policy = t.arm_adam, t.arm_policy or "explicit"
            if arm_adam is None:
                version, engine = versions[t.study_id]
                policy = request.arm_choice.policy or studies[t.study_id].policy
                arm_adam = engine.suggest(request.params, pending=chosen[t.study_id], policy=policy)[0]
                chosen[t.study_id].append((request.params, arm_adam))
                arm_policy = f"learned:{policy} (snapshot v{version})"
            lbfgs_policy = None
            if _learned_lbfgs(t):
                lbfgs_policy = request.arm_lbfgs_choice.policy or studies[t.study_id].policy
                engines[str(t.study_id)] = versions[t.study_id][1].snapshot(observations=True)
            out.append(task_store.Assignment(t.id, arm_adam, t.arm_lbfgs, lbfgs_policy, arm_policy))
        return out, engines


def _learned_lbfgs(task: TaskRecord) -> bool:
    if task.lbfgs_policy is not None:  # a campaign decided it up front
        return True
    return task.request.get("mode") == "sequential" and task.arm_lbfgs is None


def _run_of(task: TaskRecord) -> Run:
    """The run of a task started in a batch (its arms decided)."""
    request = SolveRequest.model_validate(task.request, context={"trusted": True})
    chooser = str(task.study_id) if task.lbfgs_policy else None
    return Run(request, task.arm_adam, task.arm_lbfgs, task.lbfgs_policy, chooser)

"""The dispatcher: queued tasks -> arms -> batches on free trainers; outcomes -> refits -> snapshots.

One loop (``tick``), each step a function:

1. ``_collect``: finished batches. The worker has recorded its results already; a batch whose
   actor died has its tasks requeued (attempt + 1) or failed after ``max_attempts``.
2. ``_requeue_stale``: running tasks without a heartbeat for ``lease_seconds`` are requeued.
3. ``campaigns.advance``: campaigns whose current step has finished submit their next step.
4. ``_dispatch``: the oldest queued tasks, grouped by batch key (same family, budgets, points,
   network, device class), up to ``max_batch`` per free trainer. ``learned`` arms are asked of the
   study's engine restored from its latest snapshot, aware of the study's running trainings and of
   the batch's earlier choices, so one batch never repeats an arm at one context.
5. ``_refits``: studies with new observations are refitted in a background thread (one refit at a
   time) and get a new policy snapshot; recommendations read the latest snapshot.

The store is the one source of truth: on start, tasks left running by a dispatcher that is gone
go back to the queue, and any late result of theirs is refused by the attempt guard.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import func, select

from metalic.jobs import SolveRequest
from metalic.settings import Settings, get_settings
from metalic.store import tasks as task_store
from metalic.store import workers as worker_store
from metalic.store.models import RUNNING, Batch, Observation, PolicySnapshot, Study
from metalic.store.studies import EngineCache, arm_of_bits, bits, refit_study
from workers import campaigns
from workers.batch import BatchPayload, BatchReport, TaskSpec
from workers.executors import Slot

log = logging.getLogger(__name__)


def _lower_priority() -> None:
    """Refits yield the CPU to trainings that share the machine (Linux: per-thread nice)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class DispatcherBusy(RuntimeError):
    """Another dispatcher is alive on this store."""


@dataclass
class _Flight:
    payload: BatchPayload
    slot: Slot
    studies: set[int] = field(default_factory=set)


class Dispatcher:
    def __init__(
        self,
        store,
        executor,
        settings: Settings | None = None,
        max_batch: int | None = None,
        exclusive: bool = True,
    ):
        self.store, self.executor = store, executor
        self.settings = settings or get_settings()
        self.max_batch = max_batch
        if exclusive:
            others = worker_store.live_dispatchers(store, self._stale_seconds)
            if others:
                o = others[0]
                raise DispatcherBusy(f"a dispatcher is already running on this store ({o.host}, pid {o.pid})")
        self.id = worker_store.register(store, worker_store.DISPATCHER, "dispatcher")
        self.flights: dict[int, _Flight] = {}
        self.engines = EngineCache()
        self._live_engines: dict = {}  # the refit thread's engines
        self._refit_pool = ThreadPoolExecutor(1, thread_name_prefix="metalic-refit", initializer=_lower_priority)
        self._refits: dict[int, Future] = {}
        self._dirty: set[int] = set()
        self._refit_lock = threading.Lock()
        self.wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat = self._last_stale = self._last_refresh = 0.0
        self.batches_started = 0
        self.recover()

    @property
    def _stale_seconds(self) -> float:
        return 3 * self.settings.heartbeat_seconds + 2 * self.settings.poll_seconds + 5

    # ---- start-up -------------------------------------------------------------------------------
    def recover(self) -> dict[str, list[int]]:
        """Requeue what dispatchers that are gone left running; refit studies whose observations
        are newer than their snapshot."""
        live = {w.id for w in worker_store.live_dispatchers(self.store, self._stale_seconds)} | {self.id}
        with self.store.read() as s:
            orphans = s.execute(select(Batch.id).where(Batch.state == RUNNING, Batch.dispatcher_id.not_in(live))).all()
        batch_ids = [b for (b,) in orphans]
        items = task_store.running_of_batches(self.store, batch_ids)
        moved = task_store.retry_or_fail(
            self.store, items, "the dispatcher of its batch stopped", self.settings.max_attempts
        )
        for b in batch_ids:
            task_store.finish_batch(self.store, b, "lost")
        if items:
            log.warning("requeued %d task(s) left running by a stopped dispatcher", len(moved["requeued"]))
        self._dirty |= self._studies_behind()
        return moved

    def _studies_behind(self) -> set[int]:
        with self.store.read() as s:
            newest = dict(
                s.execute(
                    select(Observation.study_id, func.max(Observation.id))
                    .join(Study, Study.id == Observation.study_id)
                    .where(Study.campaign_id.is_(None))
                    .group_by(Observation.study_id)
                ).all()
            )
            seen = dict(
                s.execute(
                    select(PolicySnapshot.study_id, func.max(PolicySnapshot.last_observation_id)).group_by(
                        PolicySnapshot.study_id
                    )
                ).all()
            )
        return {sid for sid, last in newest.items() if (seen.get(sid) or 0) < last}

    # ---- the loop ---------------------------------------------------------------------------------
    def tick(self) -> bool:
        """One pass; True when it changed something (so the loop goes round again at once)."""
        now = time.monotonic()
        if now - self._last_beat >= self.settings.heartbeat_seconds:
            worker_store.heartbeat(self.store, self.id, state="busy" if self.flights else "idle")
            self._last_beat = now
        if now - self._last_refresh >= 10 * self.settings.heartbeat_seconds:
            self.executor.refresh()
            self._last_refresh = now
        busy = self._collect()
        if now - self._last_stale >= self.settings.heartbeat_seconds:
            busy |= self._requeue_stale()
            self._last_stale = now
        busy |= campaigns.advance_all(self.store)
        busy |= self._dispatch()
        self._refit()
        return busy

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Tick until ``stop()`` (or ``until()`` is true)."""
        while not self._stopping.is_set():
            if until is not None and until():
                return
            try:
                busy = self.tick()
            except Exception:
                log.exception("dispatcher tick failed; retrying")
                busy = False
            if not busy:
                self._idle(self.settings.poll_seconds)

    def _idle(self, seconds: float) -> None:
        """Wait until a batch finishes, a task is submitted here (``wake``), or ``seconds`` pass;
        blocking in the executor keeps the loop off the CPU that trains."""
        if self.flights and not any(not s.busy for s in self.executor.slots):
            self.executor.wait(seconds)
        else:
            self.wake.wait(seconds)
            self.wake.clear()

    def start(self) -> Dispatcher:
        """Run the loop in a background thread."""
        self._thread = threading.Thread(target=self.run, name="metalic-dispatcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain: float = 0.0, kill_workers: bool = True) -> None:
        """Stop dispatching. ``drain``: seconds to let running batches finish first. Batches still
        running then are left to the next dispatcher (requeued at its start)."""
        deadline = time.monotonic() + drain
        self._stopping.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join()
        while self.flights and time.monotonic() < deadline:
            self._collect(timeout=min(0.5, max(deadline - time.monotonic(), 0)))
        if self.flights and kill_workers:
            # Our batches will not be collected: put their tasks back now rather than at the
            # next start (the workers' late results are refused).
            items = task_store.running_of_batches(self.store, self.flights)
            task_store.retry_or_fail(self.store, items, "the dispatcher stopped", self.settings.max_attempts)
            for b in self.flights:
                task_store.finish_batch(self.store, b, "lost")
            self.flights.clear()
        self._refit_pool.shutdown(wait=True)
        self.executor.shutdown(kill=kill_workers)
        worker_store.stop(self.store, self.id)

    # ---- 1. finished batches ----------------------------------------------------------------------
    def _collect(self, timeout: float = 0.0) -> bool:
        finished = self.executor.poll(timeout)
        for _slot, payload, outcome in finished:
            # The flight leaves ``self.flights`` only once its batch row is final, so that
            # ``wait_idle`` never returns between the two.
            flight = self.flights.get(payload.batch_id)
            if isinstance(outcome, BatchReport):
                task_store.finish_batch(self.store, payload.batch_id, "done", outcome.seconds)
                if outcome.recorded and flight is not None:
                    self._dirty |= flight.studies
            else:
                log.warning("batch %s lost with its worker: %s", payload.batch_id, outcome)
                task_store.retry_or_fail(
                    self.store,
                    payload.items,
                    f"worker lost: {type(outcome).__name__}: {str(outcome)[:500]}",
                    self.settings.max_attempts,
                )
                task_store.finish_batch(self.store, payload.batch_id, "lost")
            self.flights.pop(payload.batch_id, None)
        return bool(finished)

    # ---- 2. stale leases --------------------------------------------------------------------------
    def _requeue_stale(self) -> bool:
        stale = task_store.stale_running(self.store, self.settings.lease_seconds)
        if not stale:
            return False
        task_store.retry_or_fail(
            self.store,
            [(t, a) for t, a, _ in stale],
            f"no heartbeat for {self.settings.lease_seconds:g} s",
            self.settings.max_attempts,
        )
        for batch_id in {b for _, _, b in stale if b is not None}:
            flight = self.flights.pop(batch_id, None)
            if flight is not None:
                self.executor.abandon(flight.slot)
            task_store.finish_batch(self.store, batch_id, "lost")
        return True

    # ---- 4. dispatch -----------------------------------------------------------------------------
    def _dispatch(self) -> bool:
        free = [s for s in self.executor.slots if not s.busy]
        if not free:
            return False
        widest = max(self._limit(s) for s in free)
        with self.store.read() as s:
            queued = task_store.queued_tasks(s, limit=4 * widest * len(free))
        if not queued:
            return False
        groups: dict[str, list] = {}
        for t in queued:
            groups.setdefault(t.batch_key, []).append(t)
        started = False
        for slot in free:
            for key, group in list(groups.items()):
                if not group or not slot.accepts(group[0].request.get("device", "auto")):
                    continue
                take = [group[0]] if group[0].solo else [t for t in group if not t.solo][: self._limit(slot)]
                groups[key] = [t for t in group if t not in take]
                if self._start(slot, take):
                    started = True
                    break
        return started

    def _limit(self, slot: Slot) -> int:
        return min(slot.max_batch, self.max_batch) if self.max_batch else slot.max_batch

    def _start(self, slot: Slot, tasks: list) -> bool:
        assignments, engines = self._decide_arms(tasks)
        worker_id = self.executor.worker_id(slot)
        batch_id, started = task_store.start_batch(
            self.store, assignments, dispatcher_id=self.id, worker_id=worker_id, device=slot.device
        )
        if batch_id is None:
            return False
        specs = [
            TaskSpec(t.id, t.attempt, t.study_id, t.request, t.arm_adam, t.arm_lbfgs, t.lbfgs_policy) for t in started
        ]
        used = {str(t.study_id) for t in started if t.lbfgs_policy}
        payload = BatchPayload(batch_id, specs, {k: v for k, v in engines.items() if k in used})
        self.flights[batch_id] = _Flight(payload, slot, {t.study_id for t in started})
        self.executor.submit(slot, payload)
        self.batches_started += 1
        log.info("batch %s: %d task(s) of %s on %s", batch_id, len(started), started[0].batch_key, slot.name)
        return True

    def _decide_arms(self, tasks: list) -> tuple[list[task_store.Assignment], dict[str, dict]]:
        """Arms for each task: explicit ones as asked, learned ones from the study's engine."""
        out: list[task_store.Assignment] = []
        engines: dict[str, dict] = {}
        with self.store.read() as s:
            studies = {sid: s.get(Study, sid) for sid in {t.study_id for t in tasks}}
            learned = {t.study_id for t in tasks if t.arm_adam is None or self._learned_lbfgs(t)}
            pending = task_store.running_arms(s, learned)
            versions: dict[int, tuple[int, object]] = {sid: self.engines.get(s, studies[sid]) for sid in learned}
        chosen: dict[int, list] = {sid: [(c, arm_of_bits(a)) for c, a in pending.get(sid, [])] for sid in learned}
        for t in tasks:
            request = SolveRequest.model_validate(t.request, context={"trusted": True})
            study = studies[t.study_id]
            arm_adam, arm_policy = t.arm_adam, t.arm_policy or "explicit"
            if arm_adam is None:
                version, engine = versions[t.study_id]
                policy = request.arm_choice.policy or study.policy
                arm = engine.suggest(request.params, pending=chosen[t.study_id], policy=policy)[0]
                chosen[t.study_id].append((request.params, arm))
                arm_adam, arm_policy = bits(arm), f"learned:{policy} (snapshot v{version})"
            lbfgs_policy = None
            if self._learned_lbfgs(t):
                lbfgs_policy = request.arm_lbfgs_choice.policy or study.policy
                version, engine = versions[t.study_id]
                engines[str(t.study_id)] = engine.snapshot(observations=True)
            out.append(task_store.Assignment(t.id, arm_adam, t.arm_lbfgs, lbfgs_policy, arm_policy))
        return out, engines

    @staticmethod
    def _learned_lbfgs(task) -> bool:
        if task.lbfgs_policy is not None:  # a campaign decided it up front
            return True
        request = task.request
        return request.get("mode") == "sequential" and task.arm_lbfgs is None

    # ---- 5. refits -------------------------------------------------------------------------------
    def _refit(self) -> None:
        with self._refit_lock:
            self._refit_locked()

    def _refit_locked(self) -> None:
        for sid, future in list(self._refits.items()):
            if future.done():
                self._refits.pop(sid)
                if future.exception() is not None:
                    log.error("refit of study %s failed: %s", sid, future.exception())
        if not self._dirty:
            return
        with self.store.read() as s:
            campaign_owned = set(
                s.scalars(select(Study.id).where(Study.id.in_(self._dirty), Study.campaign_id.is_not(None))).all()
            )
        for sid in list(self._dirty):
            if sid in campaign_owned:  # a campaign refits its own engines, step by step
                self._dirty.discard(sid)
                continue
            if sid in self._refits:
                continue  # one refit per study at a time; it will be marked dirty again if needed
            self._dirty.discard(sid)
            self._refits[sid] = self._refit_pool.submit(self._refit_until_current, sid)

    def _refit_until_current(self, study_id: int) -> None:
        while not self._stopping.is_set() and refit_study(self.store, study_id, self._live_engines) is not None:
            pass

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Block until no batch is in flight and no refit is running or due (the loop must be
        running in its thread)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._refit_lock:
                if not self.flights and not self._dirty and not self._refits:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"dispatcher still busy after {timeout:g} s")

"""Solve tasks through the whole service core: store -> dispatcher -> Ray trainer actor -> store.

One local Ray serves the session; every test builds its own dispatcher and actors on a fresh
database (SQLite file or PostgreSQL schema) and stops them at its end.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from metalic.jobs import SolveRequest
from metalic.settings import Settings
from metalic.store import tasks as task_store
from metalic.store.models import BatchRow, ObservationRow, ProgressRow, SnapshotRow, StudyRow, TaskRow, WorkerRow
from metalic.store.studies import EngineCache
from workers.dispatcher import Dispatcher, DispatcherBusy
from workers.executors import RayExecutor

pytestmark = pytest.mark.service

TINY = {"adam": 50, "lbfgs": 20, "collocation": 200, "boundary": 50, "interface_points": 21}
FAST = {"poll_seconds": 0.05, "heartbeat_seconds": 0.5, "progress_seconds": 0.2, "lease_seconds": 30.0}


def settings(**kw) -> Settings:
    return Settings(**{**FAST, "max_batch_cpu": 8, "cpu_workers": 1, **kw})


def request(beta: float, arm: str = "learned", seed: int = 0, family: str = "advection", **kw) -> SolveRequest:
    params = {"beta": beta} if family in ("advection", "broken") else {"nu": beta}
    return SolveRequest(family=family, params=params, arm=arm, seed=seed, **{**TINY, **kw})


def wait_until(predicate: Callable[[], bool], timeout: float = 180.0, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise TimeoutError(f"condition not met within {timeout:g} s")


def states(store) -> dict[str, int]:
    return task_store.counts_by_state(store)


def all_finished(store, n: int) -> Callable[[], bool]:
    return lambda: sum(v for k, v in states(store).items() if k in ("succeeded", "failed", "cancelled")) >= n


def dispatcher(store, ray_address, **kw) -> Dispatcher:
    conf = settings(**kw)
    return Dispatcher(store, RayExecutor(store.url, conf), conf).start()


def one_observation_each(store, task_ids) -> None:
    with store.read() as s:
        rows = s.execute(
            select(ObservationRow.task_id, func.count())
            .where(ObservationRow.task_id.in_(task_ids))
            .group_by(ObservationRow.task_id)
        ).all()
    assert dict(rows) == dict.fromkeys(task_ids, 1)


def test_twenty_tasks_are_packed_into_batches_and_each_is_observed_once(store, ray_address):
    first = [task_store.submit(store, request(1 + 1.7 * i, seed=i))[0] for i in range(16)]
    disp = dispatcher(store, ray_address)
    try:
        wait_until(all_finished(store, 16))
        # the next four go through a warm actor, two of them at one context with learned arms
        more = [task_store.submit(store, request(b, seed=20 + i))[0] for i, b in enumerate((5.0, 5.0, 12.0, 21.0))]
        wait_until(all_finished(store, 20))
        disp.wait_idle()
        with store.read() as s:
            batches = s.scalars(select(BatchRow).order_by(BatchRow.id)).all()
            tasks = s.scalars(select(TaskRow).order_by(TaskRow.id)).all()
            study = s.get(StudyRow, first[0].study_id)
            versions = s.scalars(select(SnapshotRow.version).where(SnapshotRow.study_id == study.id)).all()
            latest = max(versions)
            snap = s.scalar(select(SnapshotRow).where(SnapshotRow.version == latest))
        version, restored = EngineCache(store).get(study.id)
        assert states(store) == {"succeeded": 20}
        assert [b.size for b in batches[:2]] == [8, 8]  # 16 compatible queued tasks, --max-batch 8
        assert {t.batch_id for t in tasks[:16]} == {batches[0].id, batches[1].id}
        assert all(b.state == "done" for b in batches)
        one_observation_each(store, [t.id for t in tasks])
        assert len(set(versions)) == len(versions) and latest >= 2 and snap.observation_count == 20
        same_context = [t for t in tasks if t.id in (more[0].id, more[1].id)]
        if same_context[0].batch_id == same_context[1].batch_id:  # one batch never repeats an arm at a context
            assert same_context[0].arm_adam != same_context[1].arm_adam
        assert all(t.arm_policy.startswith("learned:ucb") for t in tasks)
        # the engine restored from the latest snapshot suggests what the live one does
        live_version, _, live = disp.refits.live_engines[study.id]
        assert live_version == version == latest
        for ctx in ({"beta": 3.0}, {"beta": 17.5}, {"beta": 29.0}):
            assert restored.suggest(ctx, q=4) == live.suggest(ctx, q=4)
        with store.read() as s:
            trainers = s.scalars(select(WorkerRow).where(WorkerRow.kind == "trainer")).all()
        assert trainers and all(w.state == "idle" for w in trainers)
    finally:
        disp.stop()


def test_an_actor_killed_mid_batch_has_its_tasks_finish_on_a_new_one(sqlite_store, ray_address):
    store = sqlite_store
    ids = [task_store.submit(store, request(2.0 + i, "u,flux", seed=i, adam=800))[0].id for i in range(3)]
    disp = dispatcher(store, ray_address)
    try:

        def training() -> bool:
            with store.read() as s:
                return (s.scalar(select(func.max(TaskRow.progress_iteration)).where(TaskRow.attempt == 1)) or 0) >= 40

        def busy_pid() -> int | None:  # (asking the busy actor itself would wait for its batch)
            with store.read() as s:
                return s.scalar(select(WorkerRow.pid).where(WorkerRow.kind == "trainer", WorkerRow.state == "busy"))

        wait_until(lambda: training() and busy_pid() is not None)
        os.kill(busy_pid(), signal.SIGKILL)
        wait_until(all_finished(store, 3))
        disp.wait_idle()
        with store.read() as s:
            tasks = s.scalars(select(TaskRow).where(TaskRow.id.in_(ids))).all()
            batches = s.scalars(select(BatchRow).order_by(BatchRow.id)).all()
        assert [t.state for t in tasks] == ["succeeded"] * 3
        assert [t.attempt for t in tasks] == [2, 2, 2]
        assert [b.state for b in batches] == ["lost", "done"]
        one_observation_each(store, ids)
    finally:
        disp.stop()


def test_a_restarted_dispatcher_finishes_what_was_running_and_refuses_the_late_results(sqlite_store, ray_address):
    store = sqlite_store
    ids = [task_store.submit(store, request(4.0 + i, "u", seed=i, adam=900))[0].id for i in range(2)]
    # The second dispatcher's trainer is started first: a new executor waits for its trainer to
    # import torch (seconds under load), and the first actor could finish its 900 iterations and
    # record its (then still current) results before the second dispatcher's start requeues them.
    second_executor = RayExecutor(store.url, settings())
    first = dispatcher(store, ray_address)
    with pytest.raises(DispatcherBusy):
        Dispatcher(store, None, settings())  # one dispatcher per store
    wait_until(lambda: states(store).get("running") == 2)
    first.stop(kill_workers=False)  # as if it crashed: its actor trains on, unaware
    second = Dispatcher(store, second_executor, settings()).start()  # requeues at once
    try:
        wait_until(all_finished(store, 2))
        late = []
        wait_until(lambda: late.extend(first.executor.poll()) or bool(late))  # the first actor's report
        (_, payload, report) = late[0]
        assert sorted(report.refused) == sorted(ids) and report.recorded == [], (report, payload.items)
        with store.read() as s:
            tasks = s.scalars(select(TaskRow).where(TaskRow.id.in_(ids))).all()
        assert [(t.state, t.attempt) for t in tasks] == [("succeeded", 2)] * 2
        one_observation_each(store, ids)
    finally:
        second.stop()
        first.executor.shutdown(kill=True)


def test_a_task_that_always_fails_ends_failed_with_its_error(store, ray_address):
    bad = task_store.submit(store, request(3.0, "u", family="broken"))[0]
    good = task_store.submit(store, request(3.0, "u"))[0]
    disp = dispatcher(store, ray_address, max_attempts=3)
    try:
        wait_until(all_finished(store, 2))
        with store.read() as s:
            failed, ok = s.get(TaskRow, bad.id), s.get(TaskRow, good.id)
            observed = s.scalar(
                select(func.count()).select_from(ObservationRow).where(ObservationRow.task_id == bad.id)
            )
        assert (failed.state, failed.attempt) == ("failed", 3)
        assert "RuntimeError: reference solver exploded" in failed.error
        assert ok.state == "succeeded" and observed == 0
    finally:
        disp.stop()


def test_cancelled_while_queued_never_runs_and_while_running_stops_at_the_next_progress_point(
    sqlite_store, ray_address
):
    store = sqlite_store
    queued = task_store.submit(store, request(3.0, "u", seed=1, adam=20000))[0]
    task_store.cancel(store, queued.id)
    running = task_store.submit(store, request(3.0, "u", seed=2, adam=20000))[0]
    disp = dispatcher(store, ray_address, compile="off")  # no minute-long CPU compile before the first step
    try:
        wait_until(lambda: states(store).get("running") == 1)

        def progressed() -> bool:
            with store.read() as s:
                return (s.get(TaskRow, running.id).progress_iteration or 0) >= 20

        wait_until(progressed)
        task_store.cancel(store, running.id)
        wait_until(lambda: all(b.state != "running" for b in _batches(store)), timeout=60)
        with store.read() as s:
            last = s.scalar(select(func.max(ProgressRow.iteration)).where(ProgressRow.task_id == running.id))
            q, r = s.get(TaskRow, queued.id), s.get(TaskRow, running.id)
            observations = s.scalar(select(func.count()).select_from(ObservationRow))
        assert (q.state, q.attempt, q.batch_id) == ("cancelled", 0, None)
        assert r.state == "cancelled" and last < 20000 and observations == 0
        assert len(_batches(store)) == 1  # the cancelled queued task never reached a worker
    finally:
        disp.stop()


def _batches(store) -> list[BatchRow]:
    with store.read() as s:
        return list(s.scalars(select(BatchRow)).all())


def test_a_worker_compiles_as_asked_else_as_set_else_on_an_accelerator_else_by_the_budget_rule():
    import torch

    from workers.batch import worker_compile

    assert worker_compile(True, "cpu") is True and worker_compile(False, "cpu") is False
    assert worker_compile(None, "cpu") is None  # TrainConfig.use_compile decides by the budget
    assert worker_compile(None, "cpu", "off") is False and worker_compile(None, "cpu", "on") is True
    assert worker_compile(True, "cpu", "off") is True  # a payload that asks wins over the setting
    assert worker_compile(None, "cuda", "off") is False
    if torch.cuda.is_available():
        assert worker_compile(None, "cuda") is True

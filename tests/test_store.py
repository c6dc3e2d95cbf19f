"""The store on SQLite and PostgreSQL: migrations, guarded task states, exactly-once results."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select

from metalic.bandit.engine import BanditEngine
from metalic.jobs import SolveRequest, SolveResult, Training, run_solve_batch
from metalic.store import SchemaError, Store
from metalic.store import tasks as task_store
from metalic.store.db import head_revision
from metalic.store.models import Artefact, Base, Observation, PolicySnapshot, Study, Task
from metalic.store.studies import EngineCache, engine_from_snapshot, refit_study

TINY = {"adam": 10, "lbfgs": 3, "collocation": 32, "boundary": 8, "interface_points": 5}


def tiny(beta: float = 3.0, arm: str = "u,flux", seed: int = 0, **kw) -> SolveRequest:
    return SolveRequest(family="advection", params={"beta": beta}, arm=arm, seed=seed, **{**TINY, **kw})


def counts(store) -> dict[str, int]:
    with store.read() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in Base.__subclasses__()}


def test_upgrade_head_on_an_empty_database_matches_the_models(db_url):
    store = Store(db_url)
    assert store.current_revision() is None and store.is_empty()
    with pytest.raises(SchemaError, match="metalic db upgrade"):
        store.check_schema()
    store.upgrade()
    assert store.current_revision() == head_revision()
    store.check_schema()
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        tables = set(inspect(conn).get_table_names())
    assert {"studies", "tasks", "observations", "policy_snapshots", "artefacts", "workers"} <= tables
    store.downgrade("base")  # downgrade to nothing and back: the migration is reversible
    with store.engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    store.upgrade()
    store.dispose()


def test_metalic_db_upgrade_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"METALIC_DATABASE_URL": url}
    cli = [sys.executable, "-m", "metalic.cli"]
    run = subprocess.run([*cli, "db", "upgrade"], capture_output=True, text=True, env={**_env(), **env}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"revision  {head_revision()}" in run.stdout
    empty = {"METALIC_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    bad = subprocess.run([*cli, "dispatcher"], capture_output=True, text=True, env={**_env(), **empty}, timeout=120)
    assert bad.returncode == 2 and "metalic db upgrade" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def _env() -> dict:
    import os

    return dict(os.environ)


def test_submit_is_idempotent_and_finds_the_study(store):
    t1, created = task_store.submit(store, tiny(), owner="ann", idempotency_key="k1")
    t2, again = task_store.submit(store, tiny(beta=9.0), owner="ann", idempotency_key="k1")
    t3, _ = task_store.submit(store, tiny(), owner="bob", idempotency_key="k1")
    assert created and not again and t2.id == t1.id and t3.id != t1.id
    t4, _ = task_store.submit(store, tiny(beta=5.0, arm="learned"))
    t5, _ = task_store.submit(store, tiny(adam=11))
    assert t4.study_id == t1.study_id != t5.study_id  # one study per (family, mode, budget profile)
    assert (t1.arm_adam, t4.arm_adam) == ("100010000", None)  # learned arms are decided at dispatch
    assert counts(store)["tasks"] == 4


def _run(store, task_ids: list[int], batch_arms: dict[int, str] | None = None) -> tuple[int, list[Task]]:
    arms = batch_arms or {}
    assignments = [task_store.Assignment(i, arms.get(i, "100010000"), None, None, "explicit") for i in task_ids]
    return task_store.start_batch(store, assignments, dispatcher_id="d", worker_id="w", device="cpu")


def _result(task: Task) -> SolveResult:
    request = SolveRequest.model_validate(task.request)
    return run_solve_batch([Training.explicit(request)], device="cpu")[0]


def test_a_result_is_recorded_exactly_once_and_a_late_one_for_an_old_attempt_is_refused(store):
    task, _ = task_store.submit(store, tiny())
    batch_id, started = _run(store, [task.id])
    assert batch_id is not None and started[0].attempt == 1 and started[0].state == "running"
    result = _result(started[0])
    # The worker went quiet: the task goes back to the queue; its first attempt's result comes late.
    moved = task_store.retry_or_fail(store, [(task.id, 1)], "no heartbeat", max_attempts=3)
    assert moved == {"requeued": [task.id], "failed": []}
    before = counts(store)
    assert task_store.record_result(store, task.id, 1, result) is False
    assert counts(store) == before
    _, started = _run(store, [task.id])
    assert started[0].attempt == 2
    assert task_store.record_result(store, task.id, 2, result) is True
    assert task_store.record_result(store, task.id, 2, result) is False  # never twice
    with store.read() as s:
        obs = s.scalars(select(Observation).where(Observation.task_id == task.id)).all()
        done = s.get(Task, task.id)
        assert s.get(Artefact, task.id).model == result.model
    assert len(obs) == 1 and obs[0].reward == pytest.approx(result.reward)
    assert done.state == "succeeded" and done.rel_l2 == pytest.approx(result.rel_l2)


def test_attempts_are_bounded_and_the_error_is_kept(store):
    task, _ = task_store.submit(store, tiny())
    for attempt in (1, 2, 3):
        _, started = _run(store, [task.id])
        assert started[0].attempt == attempt
        task_store.retry_or_fail(store, [(task.id, attempt)], f"boom {attempt}", max_attempts=3)
    with store.read() as s:
        t = s.get(Task, task.id)
    assert (t.state, t.attempt, t.error) == ("failed", 3, "boom 3")
    assert _run(store, [task.id]) == (None, [])  # a failed task never starts again


def test_cancel_queued_and_running_and_progress_reports_it(store):
    queued, _ = task_store.submit(store, tiny())
    running, _ = task_store.submit(store, tiny(seed=1))
    _run(store, [running.id])
    assert task_store.cancel(store, queued.id).state == "cancelled"
    assert _run(store, [queued.id]) == (None, [])  # a cancelled task never runs
    items = [task_store.ProgressItem(running.id, 1, "adam", 10, 10, 0.5)]
    assert task_store.write_progress(store, items) == set()
    assert task_store.cancel(store, running.id, owner="someone-else") is None  # not theirs: not found
    assert task_store.cancel(store, running.id).state == "cancelled"
    assert task_store.write_progress(store, items) == {running.id}  # the worker learns it must stop


def test_snapshots_restore_the_engine_and_refits_add_versions(store):
    reqs = [tiny(beta=b, arm=a, seed=i) for i, (b, a) in enumerate([(2, "u"), (9, "u,flux"), (20, "all"), (4, "res")])]
    tasks = [task_store.submit(store, r)[0] for r in reqs]
    _, started = _run(store, [t.id for t in tasks], {t.id: t.arm_adam for t in tasks})
    for t in started[:3]:
        assert task_store.record_result(store, t.id, 1, _result(t))
    live: dict = {}
    first = refit_study(store, tasks[0].study_id, live)
    assert first.version == 1 and first.observation_count == 3
    assert refit_study(store, tasks[0].study_id, live) is None  # nothing new
    assert task_store.record_result(store, started[3].id, 1, _result(started[3]))
    second = refit_study(store, tasks[0].study_id, live)
    assert second.version == 2 and second.observation_count == 4
    with store.read() as s:
        study = s.get(Study, tasks[0].study_id)
        restored = engine_from_snapshot(s, study, s.get(PolicySnapshot, second.id))
        version, cached = EngineCache().get(s, study)
    engine: BanditEngine = live[study.id][2]
    assert version == 2
    for ctx in ({"beta": 5.0}, {"beta": 27.0}):
        assert restored.suggest(ctx, q=3) == engine.suggest(ctx, q=3) == cached.suggest(ctx, q=3)
        assert [r.arm for r in restored.recommend(ctx)] == [r.arm for r in engine.recommend(ctx)]

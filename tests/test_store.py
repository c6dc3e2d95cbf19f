"""The store on SQLite and PostgreSQL: migrations, guarded task states, exactly-once results."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select

import migrations
from metalic.arms import Arm
from metalic.bandit.engine import BanditEngine
from metalic.jobs import Run, SolveRequest, SolveResult, run_solve_batch
from metalic.store import Store
from metalic.store import tasks as task_store
from metalic.store.models import Base, ObservationRow
from metalic.store.records import TaskRecord
from metalic.store.studies import EngineCache, refit_study

TINY = {"adam": 10, "lbfgs": 3, "collocation": 32, "boundary": 8, "interface_points": 5}


def tiny(beta: float = 3.0, arm: str = "u,flux", seed: int = 0, **kw) -> SolveRequest:
    return SolveRequest(family="advection", params={"beta": beta}, arm=arm, seed=seed, **{**TINY, **kw})


def counts(store) -> dict[str, int]:
    with store.read() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in Base.__subclasses__()}


def test_upgrade_head_on_an_empty_database_matches_the_models(db_url):
    store = Store(db_url)
    assert migrations.current(store) is None and store.is_empty()
    with pytest.raises(migrations.SchemaError, match="metalic db upgrade"):
        migrations.check(store)
    migrations.upgrade(store)
    assert migrations.current(store) == migrations.head()
    migrations.check(store)
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        tables = set(inspect(conn).get_table_names())
    assert {"studies", "tasks", "observations", "policy_snapshots", "artefacts", "workers"} <= tables
    migrations.downgrade(store, "base")  # downgrade to nothing and back: the migration is reversible
    with store.engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    migrations.upgrade(store)
    store.dispose()


def test_metalic_db_upgrade_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"METALIC_DATABASE_URL": url}
    cli = [sys.executable, "-m", "metalic.cli"]
    run = subprocess.run([*cli, "db", "upgrade"], capture_output=True, text=True, env={**_env(), **env}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"revision  {migrations.head()}" in run.stdout
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
    assert (t1.arm_adam, t4.arm_adam) == (Arm.parse("u,flux"), None)  # learned arms are decided at dispatch
    assert counts(store)["tasks"] == 4


def _run(store, task_ids: list[int], batch_arms: dict[int, Arm] | None = None) -> tuple[int, list[TaskRecord]]:
    arms = batch_arms or {}
    u_flux = Arm.parse("u,flux")
    assignments = [task_store.Assignment(i, arms.get(i, u_flux), None, None, "explicit") for i in task_ids]
    return task_store.start_batch(store, assignments, dispatcher_id="d", worker_id="w", device="cpu")


def _result(task: TaskRecord) -> SolveResult:
    request = SolveRequest.model_validate(task.request)
    return run_solve_batch([Run.explicit(request)], device="cpu")[0]


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
        obs = s.scalars(select(ObservationRow).where(ObservationRow.task_id == task.id)).all()
    done = task_store.get_task(store, task.id)
    assert task_store.get_artefact(store, task.id).model == result.model
    assert len(obs) == 1 and obs[0].reward == pytest.approx(result.reward)
    assert done.state == "succeeded" and done.rel_l2 == pytest.approx(result.rel_l2)


def test_attempts_are_bounded_and_the_error_is_kept(store):
    task, _ = task_store.submit(store, tiny())
    for attempt in (1, 2, 3):
        _, started = _run(store, [task.id])
        assert started[0].attempt == attempt
        task_store.retry_or_fail(store, [(task.id, attempt)], f"boom {attempt}", max_attempts=3)
    t = task_store.get_task(store, task.id)
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
    study_id = tasks[0].study_id
    _, restored = EngineCache(store).get(study_id, 2)
    version, cached = EngineCache(store).get(study_id)
    engine: BanditEngine = live[study_id][2]
    assert version == 2
    for ctx in ({"beta": 5.0}, {"beta": 27.0}):
        assert restored.suggest(ctx, q=3) == engine.suggest(ctx, q=3) == cached.suggest(ctx, q=3)
        assert [r.arm for r in restored.recommend(ctx)] == [r.arm for r in engine.recommend(ctx)]


def test_migration_0005_turns_stored_bit_strings_into_arm_indices_and_back(db_url):
    """Rows written at revision 0004 (arm bits of 9 or 10 characters, observations.context and
    reward_phase0) read as the same arms after the upgrade, and the downgrade gives the bits back."""
    from sqlalchemy import text

    from metalic.store import studies as study_store

    store = Store(db_url)
    migrations.upgrade(store, "0004")
    rows = [("100010000", "110000000"), ("0000000001", "0000000001"), ("000000000", None), ("111111111", None)]
    request = tiny().model_dump_json()
    study = (
        "INSERT INTO studies (id, key, family, mode, profile_key, profile, policy, created_at) "
        "VALUES (1, 'k', 'advection', 'sequential', 'p', '{}', 'ucb', CURRENT_TIMESTAMP)"
    )
    task = (
        "INSERT INTO tasks (id, study_id, family, request, batch_key, state, attempt, solo, arm_adam, arm_lbfgs, "
        "created_at) VALUES (:i, 1, 'advection', :r, 'b', 'succeeded', 1, false, :a, :l, CURRENT_TIMESTAMP)"
    )
    observation = (
        "INSERT INTO observations (id, study_id, task_id, context, arm_adam, arm_lbfgs, reward, reward_phase0, "
        "rel_l2, status, created_at) VALUES (:i, 1, :i, :c, :a, :l, 1.5, 0.25, 0.03, 'ok', CURRENT_TIMESTAMP)"
    )
    with store.engine.begin() as conn:
        conn.execute(text(study))
        for i, (adam, lbfgs) in enumerate(rows, 1):
            conn.execute(text(task), {"i": i, "r": request, "a": adam, "l": lbfgs})
            conn.execute(text(observation), {"i": i, "c": f'{{"beta": {i}.0}}', "a": adam, "l": lbfgs})
    migrations.upgrade(store)
    expected = [
        ("u,flux", "u,uavg"),
        ("single-domain", "single-domain"),
        ("none", None),
        (Arm.parse("all").label, None),
    ]
    for i, (adam, lbfgs) in enumerate(expected, 1):
        task = task_store.get_task(store, i)
        assert (task.arm_adam.label, None if task.arm_lbfgs is None else task.arm_lbfgs.label) == (adam, lbfgs)
    with store.read() as s:
        observations = [study_store.engine_observation(o) for o in s.scalars(select(ObservationRow)).all()]
    assert [o.arm.label for o in observations] == [a for a, _ in expected]
    assert observations[0].params == {"beta": 1.0} and observations[0].reward_adam == 0.25
    migrations.downgrade(store, "0004")
    with store.engine.connect() as conn:
        back = conn.execute(text("SELECT arm_adam, arm_lbfgs FROM observations ORDER BY id")).all()
    assert [tuple(r) for r in back] == [(a, b) for a, b in rows]
    store.dispose()


def test_a_late_result_of_attempt_1_while_attempt_2_runs_is_refused(store):
    """The attempt guard on its own: the task is running (so the state guard alone would let the
    write through), but at attempt 2; attempt 1's result changes nothing."""
    task, _ = task_store.submit(store, tiny())
    _, started = _run(store, [task.id])
    result = _result(started[0])
    task_store.retry_or_fail(store, [(task.id, 1)], "no heartbeat", max_attempts=3)
    _, again = _run(store, [task.id])
    assert (again[0].state, again[0].attempt) == ("running", 2)
    before = counts(store)
    assert task_store.record_result(store, task.id, 1, result) is False
    assert counts(store) == before  # no observation, no artefact
    now = task_store.get_task(store, task.id)
    assert (now.state, now.attempt, now.result) == ("running", 2, None)
    assert task_store.write_progress(store, [task_store.ProgressItem(task.id, 1, "adam", 5, 5, 0.1)]) == {task.id}

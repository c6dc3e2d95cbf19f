"""A store filled the way the service fills it: two short real campaigns (Advection with UCB,
random and a fixed arm; Heat with UCB, for the two-parameter heatmap) and a few solve requests
with the learned policy, all trained through a real dispatcher (one in-process trainer)."""

from __future__ import annotations

import math
import time

import migrations
from metalic.campaign import CampaignConfig
from metalic.jobs import SolveRequest
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import TrainConfig
from metalic.settings import Settings
from metalic.store import Store, campaigns
from metalic.store import tasks as task_store
from metalic.store.models import CampaignRow, StudyRow, TaskRow
from workers.dispatcher import Dispatcher
from workers.executors import InlineExecutor

TINY_TRAIN = TrainConfig(adam=60, lbfgs=10)
TINY_POINTS = PinnConfig(n_collocation=64, n_boundary=16, n_interface=9)


def tiny_campaign(
    family: str,
    heuristics: tuple[str, ...],
    warmup: int,
    rounds: int,
    test: int,
    train: TrainConfig = TINY_TRAIN,
    points: PinnConfig = TINY_POINTS,
) -> CampaignConfig:
    return CampaignConfig(
        family=family,
        policies=heuristics,
        warmup=warmup,
        rounds=rounds,
        test=test,
        batch=2,
        seed=1,
        train=train,
        pinn=points,
        dtype="float64",
    )


def solve_request(
    family: str, params: dict, seed: int, train: TrainConfig = TINY_TRAIN, points: PinnConfig = TINY_POINTS
) -> SolveRequest:
    return SolveRequest.model_validate(
        {
            "family": family,
            "params": params,
            "arm": "learned",
            "adam": train.adam,
            "lbfgs": train.lbfgs,
            "collocation": points.n_collocation,
            "boundary": points.n_boundary,
            "interface_points": points.n_interface,
            "seed": seed,
            "dtype": "float64",
        }
    )


def seed_store(
    url: str,
    settings: Settings,
    timeout: float = 300.0,
    train: TrainConfig = TINY_TRAIN,
    points: PinnConfig = TINY_POINTS,
    rounds: int = 4,
    extra: tuple[str, ...] = (),
) -> Store:
    """``extra``: more families, each with a campaign of UCB and two fixed arms (screenshots)."""
    store = Store(url)
    migrations.upgrade(store)
    executor = InlineExecutor(store, settings, "cpu", max_batch=8)
    dispatcher = Dispatcher(store, executor, settings, max_batch=8).start()
    try:
        heuristics = ("ucb", "random", "fixed:u,flux")
        campaigns.create(store, tiny_campaign("advection", heuristics, 2, rounds, 2, train, points))
        campaigns.create(store, tiny_campaign("heat", ("ucb",), 3, max(2, rounds // 2), 1, train, points))
        for family in extra:
            policies = ("ucb", "fixed:u,flux", "fixed:all")
            campaigns.create(store, tiny_campaign(family, policies, 2, rounds, 1, train, points))
        for i, beta in enumerate((2.0, 8.0, 15.0, 25.0)):
            task_store.submit(store, solve_request("advection", {"beta": beta}, i, train, points), owner="alice")
        dispatcher.wake.set()
        deadline = time.monotonic() + timeout
        while True:
            with store.read() as s:
                open_campaigns = s.query(CampaignRow).filter(CampaignRow.state == "running").count()
                open_tasks = s.query(TaskRow).filter(TaskRow.state.in_(("queued", "running"))).count()
            if not open_campaigns and not open_tasks:
                break
            assert time.monotonic() < deadline, "the seed campaigns did not finish"
            time.sleep(0.1)
        dispatcher.wait_idle(timeout)
    finally:
        dispatcher.stop(drain=5.0)
    return store


def bulk_seed(store: Store, n: int, family: str = "advection", seed: int = 0) -> int:
    """``n`` more finished tasks and their observations in one service study (bulk inserts of
    synthetic rows: a size test, not a result), and a policy snapshot fitted on 200 of them.
    Returns the study id."""
    import random
    from datetime import datetime, timedelta

    from sqlalchemy import func, insert, select, text

    from metalic.arms import Arm
    from metalic.bandit.engine import BanditEngine, Observation
    from metalic.store.models import ObservationRow
    from metalic.store.studies import add_snapshot, study_for_request

    rng = random.Random(seed)
    request = solve_request(family, {"beta": 3.0}, 0)
    with store.write() as s:
        study = study_for_request(s, request)
        study_id = study.id
    now = datetime.utcnow()
    tasks, observations = [], []
    for i in range(n):
        beta = rng.uniform(1, 30)
        arm = Arm.parse("".join(rng.choice("01") for _ in range(9))).index
        rel = 10 ** rng.uniform(-3, 0.3)
        state = "failed" if i % 50 == 0 else "succeeded"
        finished = now - timedelta(seconds=rng.uniform(0, 30 * 3600))
        tasks.append(
            {
                "owner": f"user{i % 7}",
                "study_id": study_id,
                "family": family,
                "request": {**request.model_dump(mode="json"), "params": {"beta": beta}},
                "batch_key": request.batch_key(),
                "state": state,
                "attempt": 1,
                "arm_adam": arm,
                "created_at": finished - timedelta(seconds=30),
                "finished_at": finished,
                "error": "diverged in a bulk seed" if state == "failed" else None,
                "rel_l2": rel,
                "reward": -math.log10(rel),
            }
        )
        observations.append(
            {
                "study_id": study_id,
                "params": {"beta": beta},
                "arm_adam": arm,
                "reward": -math.log10(rel),
                "rel_l2": rel,
                "status": "ok",
            }
        )
    # Ids are given here (this is the only writer), so that both tables go in as plain executemany
    # inserts, without RETURNING: on PostgreSQL ten times faster than the ORM's bulk insert.
    with store.read() as s:
        first = (s.scalar(select(func.max(TaskRow.id))) or 0) + 1
        first_obs = (s.scalar(select(func.max(ObservationRow.id))) or 0) + 1
    for i, (t, o) in enumerate(zip(tasks, observations, strict=True)):
        t["id"], o["id"], o["task_id"] = first + i, first_obs + i, first + i
    for start in range(0, n, 10_000):
        with store.write() as s:
            s.execute(insert(TaskRow.__table__), tasks[start : start + 10_000])
            s.execute(insert(ObservationRow.__table__), observations[start : start + 10_000])
    if not store.is_sqlite:  # the serial sequences move past the ids given here
        with store.write() as s:
            for table in ("tasks", "observations"):
                s.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
                )
    engine = BanditEngine(family, seed=0)
    engine.observe(*[Observation(o["params"], Arm.from_index(o["arm_adam"]), o["reward"]) for o in observations[:200]])
    with store.write() as s:
        last, total = s.execute(
            select(func.max(ObservationRow.id), func.count()).where(ObservationRow.study_id == study_id)
        ).one()
        engine.n_before = total - len(engine.observations)  # as a windowed restore of all of them
        add_snapshot(s, s.get(StudyRow, study_id), engine, last, 0.1)
    return study_id

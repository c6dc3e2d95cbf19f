"""The single-network ("don't split") arm: an arm the bandit learns about beside the 512 term
subsets, trained as one network wherever it is chosen, stored and recommended like any other."""

from __future__ import annotations

import time

import pytest
import torch
from sqlalchemy import select

from metalic.arms import SINGLE as SINGLE_NETWORK
from metalic.arms import Arm
from metalic.bandit.engine import BanditEngine, Observation
from metalic.jobs import Run, SolveRequest, run_solve_batch
from metalic.pinn.artefact import TrainedModel
from metalic.settings import Settings
from metalic.store import tasks as task_store
from metalic.store.models import ObservationRow, TaskRow
from workers.dispatcher import Dispatcher
from workers.executors import InlineExecutor

A = Arm.parse("u,res_continuity,flux")
TINY = {"adam": 30, "lbfgs": 10, "collocation": 60, "boundary": 20, "interface_points": 11}


def test_the_arm_parses_labels_and_round_trips_through_its_stored_forms():
    for text in ("single-domain", "single", " Single-Domain ", "0000000001", (0,) * 9 + (1,), 512):
        assert Arm.parse(text) == SINGLE_NETWORK
    assert SINGLE_NETWORK.label == "single-domain" and SINGLE_NETWORK.index == 512
    assert SINGLE_NETWORK.bits == "0000000001" and Arm.parse(SINGLE_NETWORK.bits) == SINGLE_NETWORK
    assert Arm.parse("1000100000") == Arm.parse("u,flux")  # a stored split arm with its 10th bit off
    with pytest.raises(ValueError, match="no interface terms"):
        Arm.parse("1000000001")


def planted(beta: float, arm) -> float:
    """Below beta = 10 one network is best (3.5) and every split is worse than above it; above
    beta = 10, arm A (3.0, 0.4 less per bit away from it) and one network is poor (0.5)."""
    if arm.single:
        return 3.5 if beta < 10 else 0.5
    return (3.0 if beta >= 10 else 2.0) - 0.4 * sum(x != y for x, y in zip(arm.term_mask, A.term_mask, strict=True))


@pytest.mark.slow
def test_the_bandit_learns_where_not_splitting_wins():
    engine = BanditEngine("advection", policy="ucb", seed=1)
    contexts = torch.Generator().manual_seed(5)
    noise = torch.Generator().manual_seed(6)
    picked = []
    for t in range(45):
        beta = 1 + 29 * float(torch.rand(1, generator=contexts))
        warm = Arm.from_index(int(torch.randint(513, (1,), generator=noise))) if t < 5 else None
        arm = engine.suggest({"beta": beta})[0] if t >= 5 else warm
        picked.append(arm.single)
        engine.observe(
            Observation({"beta": beta}, arm, planted(beta, arm) + 0.05 * float(torch.randn(1, generator=noise)))
        )
    assert any(picked[5:])  # UCB found and tried it
    for beta in (2.0, 6.0):
        top = engine.recommend({"beta": beta}, top=1)[0]
        assert top.arm == SINGLE_NETWORK and top.terms == "single-domain", (beta, top)
    for beta in (20.0, 28.0):
        assert engine.recommend({"beta": beta}, top=1)[0].arm == A
    # and it survives a snapshot
    again = BanditEngine.from_snapshot(engine.snapshot())
    assert again.recommend({"beta": 4.0}, top=1)[0].arm == SINGLE_NETWORK


def test_a_sequential_engine_keeps_one_network_one_network():
    engine = BanditEngine("advection", mode="sequential", policy="ts", seed=0)
    assert engine.report_adam({"beta": 3.0}, SINGLE_NETWORK, 1.2, q=2) == [SINGLE_NETWORK] * 2
    with pytest.raises(ValueError, match="single-network in both phases"):
        engine.observe(Observation({"beta": 3.0}, SINGLE_NETWORK, 2.0, A, 1.0))
    with pytest.raises(ValueError, match="single-network in both phases"):
        engine.observe(Observation({"beta": 3.0}, A, 2.0, SINGLE_NETWORK, 1.0))
    engine.observe(
        Observation({"beta": 3.0}, SINGLE_NETWORK, 2.0, SINGLE_NETWORK, 1.0),
        Observation({"beta": 9.0}, A, 2.5, A, 1.5),
        Observation({"beta": 19.0}, A, 1.5, Arm.parse("u"), 1.0),
    )
    assert len(engine.adam.y) == 3 and len(engine.lbfgs.y) == 2  # the L-BFGS GP learns only of splits
    for _ in range(5):  # the L-BFGS phase never merges a split
        assert not engine.report_adam({"beta": 5.0}, A, 1.0)[0].single
    assert all(not r.arm.single for r in engine.recommend({"beta": 5.0}, top=512, reward_adam=1.0))


def test_requests_refuse_a_split_that_would_merge_or_a_single_network_that_would_split():
    with pytest.raises(ValueError, match="goes on as one network"):
        SolveRequest(family="advection", mode="sequential", arm="single-domain", arm_lbfgs="u,flux")
    with pytest.raises(ValueError, match="a split cannot merge"):
        SolveRequest(family="advection", mode="sequential", arm="u,flux", arm_lbfgs="single-domain")
    ok = SolveRequest(family="advection", mode="sequential", arm="single-domain", arm_lbfgs="single-domain")
    assert ok.arm == ok.arm_lbfgs == "single-domain"


def test_a_batch_with_both_kinds_trains_one_network_for_the_single_runs_only():
    requests = [
        SolveRequest(family="advection", params={"beta": b}, arm=a, seed=i, **TINY)
        for i, (b, a) in enumerate(((3.0, "u,flux"), (5.0, "single-domain"), (7.0, "u"), (9.0, "single-domain")))
    ]
    seen: dict[int, set[int]] = {}

    def progress(p):
        for j in p.runs:
            seen.setdefault(j, set()).add(p.iteration)

    results = run_solve_batch([Run.explicit(r) for r in requests], device="cpu", progress=progress,
                              should_stop=lambda: {3}, progress_every=5)  # fmt: skip
    assert [r.arm_adam for r in results] == [Arm.parse("u,flux"), SINGLE_NETWORK, Arm.parse("u"), SINGLE_NETWORK]
    assert [r.arm_lbfgs for r in results] == [r.arm_adam for r in results]
    assert [r.status for r in results] == ["ok", "ok", "ok", "cancelled"]  # run 3 is asked to stop
    assert [TrainedModel.from_bytes(r.model).network().n_subdomains for r in results[:3]] == [2, 1, 2]
    assert results[3].model is None and results[3].reward is None
    assert sorted(seen) == [0, 1, 2, 3] and max(seen[1]) == 30  # the single runs' progress, by batch index
    assert all(r.batch_size == 4 and r.batch_seconds == results[0].batch_seconds for r in results)
    # the single runs alone give the same result as inside the mixed batch
    alone = run_solve_batch([Run.explicit(requests[1])], device="cpu")[0]
    assert alone.rel_l2 == pytest.approx(results[1].rel_l2, rel=1e-5)


@pytest.mark.service
def test_the_service_stores_trains_and_observes_the_single_network_arm(store):
    conf = Settings(poll_seconds=0.05, heartbeat_seconds=0.5, progress_seconds=0.2, max_batch_cpu=8)
    ids = [
        task_store.submit(store, SolveRequest(family="advection", params={"beta": b}, arm=a, seed=i, **TINY))[0].id
        for i, (b, a) in enumerate(((3.0, "single-domain"), (12.0, "u,flux"), (20.0, "learned")))
    ]
    dispatcher = Dispatcher(store, InlineExecutor(store, conf, "cpu", max_batch=8), conf, max_batch=8).start()
    try:
        deadline = time.monotonic() + 240
        while True:
            with store.read() as s:
                done = s.scalars(select(TaskRow.state).where(TaskRow.id.in_(ids))).all()
            if all(state in ("succeeded", "failed") for state in done):
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        dispatcher.stop(drain=5.0)
    task = task_store.get_task(store, ids[0])
    assert task.state == "succeeded" and task.arm_adam == SINGLE_NETWORK
    assert task.result["arm_adam"] == "single-domain"
    with store.read() as s:
        obs = s.scalar(select(ObservationRow).where(ObservationRow.task_id == ids[0]))
        assert obs.arm_adam == SINGLE_NETWORK.index and obs.reward == pytest.approx(task.result["reward"])

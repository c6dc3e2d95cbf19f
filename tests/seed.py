"""A store filled the way the service fills it: two short real campaigns (Advection with UCB,
random and a fixed arm; Heat with UCB, for the two-parameter heatmap) and a few solve requests
with the learned policy, all trained through a real dispatcher (one in-process trainer)."""

from __future__ import annotations

import time

from metalic.bandit.campaign import CampaignConfig
from metalic.jobs import SolveRequest
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import TrainConfig
from metalic.settings import Settings
from metalic.store import Store
from metalic.store import tasks as task_store
from metalic.store.models import Campaign, Task
from workers import campaigns
from workers.dispatcher import Dispatcher
from workers.executors import InlineExecutor

TINY_TRAIN = TrainConfig(adam_iters=60, lbfgs_iters=10)
TINY_POINTS = PinnConfig(n_collocation=64, n_boundary=16, n_interface=9)


def tiny_campaign(family: str, heuristics: tuple[str, ...], warmup: int, rounds: int, test: int) -> CampaignConfig:
    return CampaignConfig(
        family=family,
        heuristics=heuristics,
        warmup=warmup,
        rounds=rounds,
        test=test,
        batch=2,
        seed=1,
        train=TINY_TRAIN,
        pinn=TINY_POINTS,
        dtype="float64",
    )


def solve_request(family: str, params: dict, seed: int) -> SolveRequest:
    return SolveRequest.model_validate(
        {
            "family": family,
            "params": params,
            "arm": "learned",
            "adam": 60,
            "lbfgs": 10,
            "collocation": 64,
            "boundary": 16,
            "interface_points": 9,
            "seed": seed,
            "dtype": "float64",
        }
    )


def seed_store(url: str, settings: Settings, timeout: float = 300.0) -> Store:
    store = Store(url)
    store.upgrade()
    executor = InlineExecutor(store, settings, "cpu", max_batch=8)
    dispatcher = Dispatcher(store, executor, settings, max_batch=8).start()
    try:
        campaigns.create(store, tiny_campaign("advection", ("ucb", "random", "fixed:u,flux"), 2, 4, 2))
        campaigns.create(store, tiny_campaign("heat", ("ucb",), 3, 2, 1))
        for i, beta in enumerate((2.0, 8.0, 15.0, 25.0)):
            task_store.submit(store, solve_request("advection", {"beta": beta}, i), owner="alice")
        dispatcher.wake.set()
        deadline = time.monotonic() + timeout
        while True:
            with store.read() as s:
                open_campaigns = s.query(Campaign).filter(Campaign.state == "running").count()
                open_tasks = s.query(Task).filter(Task.state.in_(("queued", "running"))).count()
            if not open_campaigns and not open_tasks:
                break
            assert time.monotonic() < deadline, "the seed campaigns did not finish"
            time.sleep(0.1)
        dispatcher.wait_idle(timeout)
    finally:
        dispatcher.stop(drain=5.0)
    return store

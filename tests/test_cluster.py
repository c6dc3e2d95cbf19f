"""A CPU machine joins the cluster (``metalic worker --cpus N``: its own ``ray start --address``
process with its own resources), takes batches, and dies with SIGKILL mid-batch: its tasks finish
on the machine that is left, each exactly once. Both kinds of store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from metalic.jobs import SolveRequest
from metalic.settings import Settings
from metalic.store import tasks as task_store
from metalic.store import workers as worker_store
from metalic.store.models import BatchRow, ObservationRow
from workers.dispatcher import Dispatcher
from workers.executors import JOINED_CPU, RayExecutor

TINY = {"lbfgs": 5, "collocation": 60, "boundary": 16, "interface_points": 9}


def wait_until(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def join_cpu_machine(ray_address: str, database_url: str) -> subprocess.Popen:
    """``metalic worker --address ... --cpus 1`` in its own session (it execs ``ray start``)."""
    env = {**os.environ, "METALIC_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "metalic.cli", "worker", "--address", ray_address, "--cpus", "1"]
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.service
def test_a_joined_cpu_machine_takes_batches_and_its_death_loses_no_task(store, ray_address):
    import ray

    settings = Settings(poll_seconds=0.05, heartbeat_seconds=0.3, progress_seconds=0.1, max_batch_cpu=2,
                        batch_window_seconds=0.0)  # fmt: skip
    machine = join_cpu_machine(ray_address, store.url)
    try:
        wait_until(lambda: ray.cluster_resources().get(JOINED_CPU, 0) >= 1, timeout=60)
        executor = RayExecutor(store.url, settings, max_batch=2, cpu_workers=1)
        assert sorted(s.name.split("-")[0] for s in executor.slots) == ["cpu", "joined"]
        disp = Dispatcher(store, executor, settings, max_batch=2).start()
    except BaseException:
        os.killpg(machine.pid, signal.SIGKILL)
        raise
    try:
        requests = [SolveRequest(family="advection", params={"beta": 2.0 + i}, arm="u", seed=i, adam=500, **TINY)
                    for i in range(4)]  # fmt: skip
        ids = task_store.submit_many(store, requests)  # one transaction: two batches of two, one per trainer
        joined = next(s for s in executor.slots if s.name.startswith("joined-"))

        def joined_training() -> list[int]:
            flight = next((f for f in list(disp.flights.by_batch.values()) if f.slot is joined), None)
            if flight is None:
                return []
            tasks = [task_store.get_task(store, d.task_id) for d in flight.payload.tasks]
            return [t.id for t in tasks if t.state == "running"]

        wait_until(lambda: len(joined_training()) == 2)  # a batch of two is in flight on the joined machine
        on_joined = joined_training()
        # The machine dies mid-batch: its Ray processes (raylet and the rest, one process group) and
        # the trainer's own process (Ray gives each worker a process group of its own).
        _, rows = worker_store.list_workers(store)
        trainer_pid = next(w.pid for w in rows if w.id == joined.worker_id)
        os.kill(trainer_pid, signal.SIGKILL)
        os.killpg(machine.pid, signal.SIGKILL)
        wait_until(lambda: all(task_store.get_task(store, i).state in ("succeeded", "failed") for i in ids))
        disp.wait_idle()
        tasks = {i: task_store.get_task(store, i) for i in ids}
        assert {t.state for t in tasks.values()} == {"succeeded"}
        assert [tasks[i].attempt for i in on_joined] == [2, 2]  # requeued once, finished on the head
        with store.read() as s:
            counts = select(ObservationRow.task_id, func.count()).group_by(ObservationRow.task_id)
            observed = dict(s.execute(counts).all())
            lost = s.scalar(select(func.count()).select_from(BatchRow).where(BatchRow.state == "lost"))
        assert observed == dict.fromkeys(ids, 1) and lost == 1  # each exactly once
        wait_until(lambda: not any(s.name.startswith("joined-") for s in executor.slots), 30)  # gone with it
    finally:
        disp.stop()
        if machine.poll() is None:
            os.killpg(machine.pid, signal.SIGKILL)
        machine.wait()

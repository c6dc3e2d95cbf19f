"""`metalic campaign` on the store: killed with SIGKILL mid-way and resumed, it ends with the rows
of a run that was never interrupted, and no training is recorded twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from metalic.store import Store
from metalic.store.models import Campaign, Observation, Task

pytestmark = pytest.mark.service

FLAGS = [
    "advection", "--heuristic", "ucb", "--heuristic", "ts", "--heuristic", "fixed:u,flux",
    "--warmup", "2", "--rounds", "4", "--test", "2", "--batch", "2", "--adam", "120", "--lbfgs", "10",
    "--collocation", "64", "--boundary", "16", "--interface-points", "9", "--dtype", "float64", "--seed", "3",
    "--quiet",
]  # fmt: skip


def env(db: str, ray_address: str) -> dict:
    return {**os.environ, "METALIC_DATABASE_URL": db, "METALIC_RAY_ADDRESS": ray_address,
            "METALIC_POLL_SECONDS": "0.05", "METALIC_HEARTBEAT_SECONDS": "0.5"}  # fmt: skip


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "metalic.cli", "campaign", *args]


def comparable(rows: list[dict]) -> list[tuple]:
    return [(r["heuristic"], r["stage"], r["round"], json.dumps(r["context"], sort_keys=True), r["arm"],
             r["arm_lbfgs"], r["status"], round(r["rel_l2"], 9)) for r in rows]  # fmt: skip


def test_a_killed_campaign_resumes_to_the_rows_of_an_uninterrupted_one(tmp_path, ray_address):
    db_a, db_b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    # The uninterrupted reference trains in its own process (--inline); the killed one on Ray actors.
    whole = subprocess.run(cli(*FLAGS, "--out", str(tmp_path / "a"), "--inline"), env=env(db_a, ray_address),
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    rows_a = json.loads((tmp_path / "a" / "rounds.json").read_text())

    killed = subprocess.Popen(cli(*FLAGS, "--out", str(tmp_path / "b")), env=env(db_b, ray_address),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    store = Store(db_b)

    def mid_way() -> bool:
        try:
            with store.read() as s:
                step = s.scalar(select(Campaign.step))
                running = s.scalar(select(func.count()).where(Task.state == "running", Task.progress_iteration > 0))
            return (step or 0) >= 2 and running > 0
        except Exception:  # the schema may not exist yet
            return False

    deadline = time.monotonic() + 300
    while not mid_way():
        assert killed.poll() is None, killed.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(30)
    with store.read() as s:
        orphaned = s.scalar(select(func.count()).where(Task.state == "running"))
        step_at_kill = s.scalar(select(Campaign.step))
    assert orphaned > 0 and step_at_kill < 5  # killed with a batch in flight, before the end

    again = subprocess.run(cli(*FLAGS, "--out", str(tmp_path / "b")), env=env(db_b, ray_address),
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert again.returncode == 2 and "--resume" in again.stderr  # no silent second campaign
    resumed = subprocess.run(cli(*FLAGS, "--out", str(tmp_path / "b"), "--resume"), env=env(db_b, ray_address),
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    rows_b = json.loads((tmp_path / "b" / "rounds.json").read_text())
    assert comparable(rows_b) == comparable(rows_a)

    with store.read() as s:
        tasks = s.scalars(select(Task)).all()
        observed = s.execute(select(Observation.task_id, func.count()).group_by(Observation.task_id)).all()
        camp = s.scalar(select(Campaign))
    # shared warm-up 2 + fixed warm-up 2, online 4 x 3 heuristics, test 2 x 3 heuristics
    assert len(tasks) == 2 + 2 + 12 + 6 and all(t.state == "succeeded" for t in tasks)
    assert dict(observed) == {t.id: 1 for t in tasks}  # every training observed once, none twice
    assert any(t.attempt == 2 for t in tasks) and max(t.attempt for t in tasks) == 2
    assert camp.state == "succeeded" and camp.step == camp.steps
    store.dispose()

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
from metalic.store.models import CampaignRow, ObservationRow, TaskRow

pytestmark = pytest.mark.service

FLAGS = [
    "advection", "--heuristic", "ucb", "--heuristic", "ts", "--heuristic", "fixed:u,flux",
    "--warmup", "2", "--rounds", "2", "--test", "2", "--batch", "2", "--adam", "80", "--lbfgs", "10",
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


def in_process(args: list[str], db: str, monkeypatch) -> int:
    """`metalic campaign` through main() in this process (no interpreter start-up to pay)."""
    from metalic import settings
    from metalic.cli import main

    monkeypatch.setenv("METALIC_DATABASE_URL", db)
    settings.get_settings.cache_clear()
    try:
        return main(["campaign", *args])
    finally:
        settings.get_settings.cache_clear()


def test_a_killed_campaign_resumes_to_the_rows_of_an_uninterrupted_one(tmp_path, ray_address, monkeypatch):
    db_a, db_b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    # The uninterrupted reference trains in this process (--inline); the killed one on Ray actors.
    assert in_process([*FLAGS, "--out", str(tmp_path / "a"), "--inline"], db_a, monkeypatch) == 0
    rows_a = json.loads((tmp_path / "a" / "rounds.json").read_text())

    killed = subprocess.Popen(cli(*FLAGS, "--out", str(tmp_path / "b")), env=env(db_b, ray_address),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    store = Store(db_b)

    def mid_way() -> bool:
        try:
            with store.read() as s:
                step = s.scalar(select(CampaignRow.step))
                running = s.scalar(
                    select(func.count()).where(TaskRow.state == "running", TaskRow.progress_iteration > 0)
                )
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
        orphaned = s.scalar(select(func.count()).where(TaskRow.state == "running"))
        step_at_kill = s.scalar(select(CampaignRow.step))
    assert orphaned > 0 and step_at_kill < 4  # killed with a batch in flight, before the end

    # without --resume, a second campaign on the same folder is refused (exit 2, one line)
    assert in_process([*FLAGS, "--out", str(tmp_path / "b")], db_b, monkeypatch) == 2
    resumed = subprocess.run(cli(*FLAGS, "--out", str(tmp_path / "b"), "--resume"), env=env(db_b, ray_address),
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    rows_b = json.loads((tmp_path / "b" / "rounds.json").read_text())
    assert comparable(rows_b) == comparable(rows_a)

    with store.read() as s:
        tasks = s.scalars(select(TaskRow)).all()
        observed = s.execute(select(ObservationRow.task_id, func.count()).group_by(ObservationRow.task_id)).all()
        camp = s.scalar(select(CampaignRow))
    # shared warm-up 2 + fixed warm-up 2, online 2 x 3 heuristics, test 2 x 3 heuristics
    assert len(tasks) == 2 + 2 + 6 + 6 and all(t.state == "succeeded" for t in tasks)
    assert dict(observed) == {t.id: 1 for t in tasks}  # every training observed once, none twice
    assert any(t.attempt == 2 for t in tasks) and max(t.attempt for t in tasks) == 2
    assert camp.state == "succeeded" and camp.step == camp.steps
    store.dispose()

"""`metalic serve` as a process: SIGTERM drains and exits; a restart finishes every task once.
And the token command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from metalic.store import Store
from metalic.store.models import ObservationRow, TaskRow
from tests.conftest import free_port

CLI = [sys.executable, "-m", "metalic.cli"]


def start(home: Path, port: int, ray_address: str, log: Path, compile: str = "auto") -> subprocess.Popen:
    env = {
        **os.environ,
        "METALIC_COMPILE": compile,  # what the test asks, whatever the caller's environment says
        "METALIC_HOME": str(home),
        "METALIC_RAY_ADDRESS": ray_address,
        "METALIC_DRAIN_SECONDS": "1",
        "METALIC_POLL_SECONDS": "0.05",
        "METALIC_HEARTBEAT_SECONDS": "0.5",
        "METALIC_PROGRESS_SECONDS": "0.2",
    }
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port)], env=env, stdout=log.open("a"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


@pytest.mark.service
def test_sigterm_stops_within_bounds_and_a_restart_finishes_every_task_once(tmp_path, ray_address):
    home, log, port = tmp_path / "home", tmp_path / "serve.log", free_port()
    server = start(home, port, ray_address, log)
    token = (home / "admin-token").read_text().strip()
    h = {"Authorization": f"Bearer {token}"}
    url = f"http://127.0.0.1:{port}"
    body = {
        "params": {"beta": 4.0},
        "arm": "u,flux",
        "budget": {"adam": 600, "lbfgs": 20},
        "points": {"collocation": 200, "boundary": 50, "interface": 21},
    }
    ids = [
        httpx.post(f"{url}/v1/families/advection/solve", json={**body, "seed": i}, headers=h).json()["id"]
        for i in range(3)
    ]
    deadline = time.monotonic() + 120
    while not any((httpx.get(f"{url}/v1/tasks/{i}", headers=h).json()["progress"]["iteration"] or 0) > 0 for i in ids):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    sent = time.monotonic()
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert time.monotonic() - sent < 30  # drain (1 s) + stopping the trainer and Ray
    assert "draining running batches" in log.read_text()
    store = Store(f"sqlite:///{home / 'metalic.db'}")
    with store.read() as s:
        states = s.scalars(select(TaskRow.state).where(TaskRow.id.in_(ids))).all()
    assert "running" not in states and "queued" in states  # the batch in flight went back to the queue

    again = start(home, port, ray_address, log)
    try:
        deadline = time.monotonic() + 240
        while not all(httpx.get(f"{url}/v1/tasks/{i}", headers=h).json()["state"] == "succeeded" for i in ids):
            assert time.monotonic() < deadline
            time.sleep(0.25)
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=60)
    with store.read() as s:
        counts = dict(s.execute(select(ObservationRow.task_id, func.count()).group_by(ObservationRow.task_id)).all())
    assert counts == dict.fromkeys(ids, 1)
    store.dispose()


def test_token_create_list_revoke(tmp_path, capsys, monkeypatch):
    env = {**os.environ, "METALIC_HOME": str(tmp_path)}
    made = subprocess.run(
        [*CLI, "token", "create", "--role", "user", "--name", "ann"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("mtl_") and len(token) > 40 and "not shown again" in made.stderr
    assert token not in (tmp_path / "metalic.db").read_bytes().decode("latin-1")  # only its digest is stored
    from metalic import settings
    from metalic.cli import main
    from metalic.store import db

    monkeypatch.setenv("METALIC_HOME", str(tmp_path))
    settings.get_settings.cache_clear()
    try:
        assert main(["token", "list"]) == 0
        listed = capsys.readouterr().out
        assert "ann" in listed and "live" in listed and token not in listed
        assert main(["token", "revoke", "ann"]) == 0 and "revoked 1" in capsys.readouterr().out
        assert main(["token", "revoke", "ann"]) == 2 and "no live token" in capsys.readouterr().err
        assert main(["token", "create", "--role", "user", "--name", "bad name"]) == 2
        assert "--name" in capsys.readouterr().err
    finally:
        settings.get_settings.cache_clear()
        db._stores.clear()

"""Dashboard page times with 100,000 tasks and 100,000 observations, on SQLite and PostgreSQL.

The store gets ``--small`` synthetic finished tasks with their observations and a policy snapshot
(``tests/seed.py``'s bulk seed), the pages are timed, then it grows to ``--rows`` and they are
timed again: the small store is the same-run baseline (``ratio`` = big / small). The API runs as
its own process (uvicorn, ``api.app:from_settings``); requests come one at a time from this process
over 127.0.0.1 with a logged-in session. Each page: one warm-up request, then ``--repeat`` timed.
The study page's data (``/data/studies/N``) is also timed cold: the first request after a new
policy snapshot, which restores the engine (up to 2,000 observations) before drawing.

    python benchmarks/dashboard_load.py --rows 100000
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

import migrations

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import benchmark_store, describe

UVICORN = [sys.executable, "-m", "uvicorn", "--factory", "api.app:from_settings"]


def pages(study_id: int, task_id: int) -> list[tuple[str, str]]:
    return [
        ("overview page", "/dashboard/"),
        ("overview data (poll)", "/dashboard/data/overview"),
        ("study page", f"/dashboard/studies/{study_id}"),
        ("study data (posterior)", f"/dashboard/data/studies/{study_id}"),
        ("task list", "/dashboard/tasks"),
        ("task list, failed", "/dashboard/tasks?state=failed&family=advection"),
        ("task page", f"/dashboard/tasks/{task_id}"),
    ]


def timed(client: httpx.Client, path: str, repeat: int) -> tuple[float, float, int]:
    """(median ms, max ms, bytes) over ``repeat`` requests after one warm-up."""
    r = client.get(path)
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        assert r.status_code == 200
    return statistics.median(times), max(times), len(r.content)


def run_backend(name: str, url: str, args) -> list[tuple]:
    from metalic.store import Store
    from metalic.store import tasks as task_store
    from metalic.store import tokens as token_store
    from tests.seed import bulk_seed

    store = Store(url)
    migrations.upgrade(store)
    token, _ = token_store.create(store, "bench", "admin")
    study_id = bulk_seed(store, args.small, seed=1)
    port = 18000 + os.getpid() % 1000
    home = tempfile.mkdtemp(prefix="metalic-dash-")
    env = {**os.environ, "METALIC_DATABASE_URL": url, "METALIC_HOME": home}
    server = subprocess.Popen(
        [*UVICORN, "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        client = httpx.Client(base_url=base, timeout=60)
        for _ in range(300):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/dashboard/login").text).group(1)
        assert client.post("/dashboard/login", data={"token": token, "csrf": csrf}).status_code == 303
        task_id = task_store.list_tasks(store, limit=1)[0].id  # the newest
        small = {label: timed(client, path, args.repeat) for label, path in pages(study_id, task_id)}
        started = time.perf_counter()
        bulk_seed(store, args.rows - args.small, seed=2)
        print(f"{name}: grew to {args.rows} tasks and observations in {time.perf_counter() - started:.1f} s")
        start = time.perf_counter()
        r = client.get(f"/dashboard/data/studies/{study_id}")  # a new snapshot version: engine restored
        cold = ((time.perf_counter() - start) * 1000, len(r.content))
        for label, path in pages(study_id, task_id):
            median, worst, size = timed(client, path, args.repeat)
            rows.append((name, label, small[label][0], median, worst, size))
        rows.append((name, "study data, first after a refit", float("nan"), cold[0], cold[0], cold[1]))
        client.close()
    finally:
        server.terminate()
        server.wait(30)
        store.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    print(f"machine: {describe(torch.device('cpu'))}")
    rows = []
    for backend in args.backends:
        with benchmark_store(backend, "dash") as (label, url):
            rows += run_backend(label, url, args)
    print(f"\n| store | page | {args.small} rows, median ms | {args.rows} rows, median ms | ratio | max ms | bytes |")
    print("|---|---|---|---|---|---|---|")
    for name, label, small, median, worst, size in rows:
        ratio = median / small if small == small else float("nan")
        print(f"| {name} | {label} | {small:.1f} | {median:.1f} | {ratio:.2f}x | {worst:.1f} | {size:,} |")


if __name__ == "__main__":
    main()

"""API latency and throughput at 32 concurrent clients, on SQLite and on PostgreSQL.

The store is seeded with real observations (24 tiny Advection trainings through run_solve_batch,
recorded, refitted into a policy snapshot). The API runs as its own process (uvicorn, one worker,
no trainers: ``api.app:from_settings``); the load comes from this process over 127.0.0.1, so both
share this machine's cores. Each scenario runs for ``--seconds``:

- ``GET /healthz`` (no database, no token): the same-run baseline the others are compared with;
- ``GET /v1/families/advection/recommendation?beta=...`` at random contexts;
- ``POST /v1/families/advection/solve`` (each queues a task; nothing trains them here).

The load generator is wrk (Debian package ``wrk``; one thread, ``--clients`` connections), whose
C event loop leaves the cores to the server far more than a Python client would.

    python benchmarks/api_load.py --seconds 15
"""

from __future__ import annotations

import argparse
import os
import random
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


def seed(url: str) -> str:
    """A migrated store with observations and a snapshot; returns an admin token."""
    from metalic.jobs import Run, SolveRequest, run_solve_batch
    from metalic.store import Store
    from metalic.store import tasks as task_store
    from metalic.store import tokens as token_store
    from metalic.store.studies import refit_study

    store = Store(url)
    migrations.upgrade(store)
    token, _ = token_store.create(store, "bench", "admin")
    rng = random.Random(0)
    arms = ["u", "u,flux", "all", "res,uxx", "uavg,gres", "flux,ux", "u,res_continuity", "none"]
    reqs = [
        SolveRequest(
            family="advection",
            params={"beta": rng.uniform(1, 30)},
            arm=arms[i % 8],
            seed=i,
            adam=30,
            lbfgs=10,
            collocation=64,
            boundary=16,
            interface_points=11,
        )
        for i in range(24)
    ]
    ids = task_store.submit_many(store, reqs)
    for chunk in range(0, 24, 8):
        part = list(range(chunk, chunk + 8))
        assignments = [
            task_store.Assignment(ids[i], "".join(map(str, reqs[i].arm_choice.arm)), None, None, "seed") for i in part
        ]
        _, started = task_store.start_batch(store, assignments, dispatcher_id="bench", worker_id=None, device="cpu")
        results = run_solve_batch([Run.explicit(reqs[i]) for i in part], device="cpu")
        for task, result in zip(started, results, strict=True):
            task_store.record_result(store, task.id, task.attempt, result)
    study_id = task_store.list_tasks(store, limit=1)[0].study_id
    assert refit_study(store, study_id, {}) is not None
    store.dispose()
    return token


LUA = r"""
local token = "%(token)s"
local kind = "%(kind)s"
math.randomseed(os.time())
request = function()
  if kind == "recommend" then
    local beta = 1 + 29 * math.random()
    return wrk.format("GET", "/v1/families/advection/recommendation?top=3&beta=" .. beta,
                      {["Authorization"] = "Bearer " .. token})
  elseif kind == "solve" then
    local body = '{"params": {"beta": 3.0}, "arm": "u,flux", "budget": {"adam": 10, "lbfgs": 5}, "seed": '
                 .. math.random(0, 1000000) .. '}'
    return wrk.format("POST", "/v1/families/advection/solve",
                      {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", "/healthz")
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%f %%f\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(95)))
end
"""


def wrk(base: str, token: str, kind: str, seconds: float, clients: int) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p95 ms, errors) from wrk with ``clients`` connections on 1 thread."""
    script = Path(tempfile.mkdtemp()) / f"{kind}.lua"
    script.write_text(LUA % {"token": token, "kind": kind})
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    n, errors, micros, p50, p95 = line.split()[1:]
    return int(n) / (int(micros) / 1e6), float(p50) / 1000, float(p95) / 1000, int(errors)


def run_backend(name: str, url: str, args) -> list[tuple]:
    token = seed(url)
    port = 18000 + random.randint(0, 999)
    env = {**os.environ, "METALIC_DATABASE_URL": url, "METALIC_TOKEN_CACHE_SECONDS": "2"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "api.app:from_settings",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--workers",
            str(args.workers),
        ],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        rows = []
        for label, kind in (
            ("GET /healthz (baseline)", "health"),
            ("GET recommendation", "recommend"),
            ("POST solve", "solve"),
        ):
            wrk(base, token, kind, 2.0, args.clients)  # warm-up: connections, caches
            rps, p50, p95, errors = wrk(base, token, kind, args.seconds, args.clients)
            rows.append((name, label, rps, p50, p95, errors))
        return rows
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--workers", type=int, default=1, help="API processes (metalic serve runs one)")
    args = parser.parse_args()
    print(f"machine: {describe(torch.device('cpu'))}")
    print(f"{args.clients} concurrent clients, {args.seconds:g} s per scenario, {args.workers} uvicorn worker(s)\n")
    rows = []
    for backend in args.backends:
        with benchmark_store(backend, "load") as (label, url):
            rows += run_backend(label, url, args)
    print("| store | scenario | requests/s | vs baseline | p50 ms | p95 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    base = {}
    for store, label, rps, p50, p95, errors in rows:
        base.setdefault(store, rps)
        print(f"| {store} | {label} | {rps:.0f} | {rps / base[store]:.2f}x | {p50:.1f} | {p95:.1f} | {errors} |")


if __name__ == "__main__":
    main()

"""Dashboard page times with 100,000 tasks and 100,000 observations, on SQLite and PostgreSQL.

The store gets ``--small`` synthetic finished tasks with their observations and a policy snapshot
(``tests/seed.py``'s bulk seed), the pages are timed, then it grows to ``--rows`` and they are
timed again: the small store is the same-run baseline (``ratio`` = big / small). The API runs as
its own process (uvicorn, ``api.app:from_settings``); requests come one at a time from this process
over 127.0.0.1 with a logged-in session. Each page: one warm-up request, then ``--repeat`` timed.
In a real headless Chromium (Debian's, driven by Playwright), the overview and the study page are
timed from navigation to every chart drawn: the study page first right after the store grew (a new
policy snapshot: its data request restores the engine, up to 2,000 observations), then warm. One
open tab polling each page for ``--idle`` seconds is charged the API process's CPU time (its share
of one core). The HTTP rows then follow; polls inside ``dashboard_cache_seconds`` are served from
the cache, which is what an open tab costs.

    python benchmarks/dashboard_load.py --rows 100000
"""

from __future__ import annotations

import argparse
import itertools
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


IN_VIEW = """Array.from(document.querySelectorAll('.chart.loading'))
    .every(el => el.getBoundingClientRect().top >= window.innerHeight)"""
EVERY = """(document.querySelector('.chart.loading[data-lazy]') || document.body).scrollIntoView(),
    document.querySelectorAll('.chart.loading').length === 0"""


def drawn(page, everything: bool = False, seconds: float = 30) -> None:
    """Wait until the charts in the window (``everything``: all, scrolling each lazy one into view)
    are drawn; polled from here, as the page's CSP refuses Playwright's eval."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(EVERY if everything else IN_VIEW):
        assert time.monotonic() < deadline, "charts not drawn"
        time.sleep(0.005)


def browser_rows(name: str, base: str, token: str, study_id: int, server_pid: int, args) -> list[tuple]:
    """(store, what, first ms, warm median ms, warm max ms, %) in the browser."""
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(f"{base}/dashboard/login")
        page.fill("input[name=token]", token)
        page.click("form button[type=submit]")
        page.wait_for_load_state("load")
        pages = (("study page", f"/dashboard/studies/{study_id}"), ("overview", "/dashboard/"))
        for (label, path), everything in itertools.product(pages, (False, True)):
            times = []
            for _ in range(1 + args.repeat_browser):
                start = time.perf_counter()
                page.goto(base + path)
                drawn(page, everything)
                times.append((time.perf_counter() - start) * 1000)
            warm, what = times[1:], "every chart, scrolled through" if everything else "the charts in the window"
            rows.append((name, f"{label}: {what} drawn", times[0], statistics.median(warm), max(warm), None))
        for label, path in (("overview", "/dashboard/"), ("study page", f"/dashboard/studies/{study_id}")):
            page.goto(base + path)
            drawn(page)
            before, start = cpu_seconds(server_pid), time.perf_counter()
            page.wait_for_timeout(args.idle * 1000)
            share = 100 * (cpu_seconds(server_pid) - before) / (time.perf_counter() - start)
            rows.append((name, f"{label}, one tab polling for {args.idle} s", None, None, None, share))
        browser.close()
    return rows


def run_backend(name: str, url: str, args) -> tuple[list[tuple], list[tuple]]:
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
        in_browser = browser_rows(name, base, token, study_id, server.pid, args)  # first: the engine is cold
        for label, path in pages(study_id, task_id):
            median, worst, size = timed(client, path, args.repeat)
            rows.append((name, label, small[label][0], median, worst, size))
        client.close()
    finally:
        server.terminate()
        server.wait(30)
        store.dispose()
    return rows, in_browser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--repeat-browser", type=int, default=5, help="warm page loads in the browser")
    parser.add_argument("--idle", type=int, default=30, help="seconds one open tab polls")
    args = parser.parse_args()
    print(f"machine: {describe(torch.device('cpu'))}")
    rows, in_browser = [], []
    for backend in args.backends:
        with benchmark_store(backend, "dash") as (label, url):
            http, browser = run_backend(label, url, args)
            rows, in_browser = rows + http, in_browser + browser
    print(
        f"\n| store | in the browser, {args.rows} rows | first ms | warm median ms | warm max ms | CPU, % of a core |"
    )
    print("|---|---|---|---|---|---|")
    for name, label, first, median, worst, share in in_browser:
        cells = ["" if v is None else f"{v:.0f}" for v in (first, median, worst)]
        print(f"| {name} | {label} | {' | '.join(cells)} | {'' if share is None else f'{share:.1f}'} |")
    print(f"\n| store | page | {args.small} rows, median ms | {args.rows} rows, median ms | ratio | max ms | bytes |")
    print("|---|---|---|---|---|---|---|")
    for name, label, small, median, worst, size in rows:
        ratio = median / small if small == small else float("nan")
        print(f"| {name} | {label} | {small:.1f} | {median:.1f} | {ratio:.2f}x | {worst:.1f} | {size:,} |")


if __name__ == "__main__":
    main()

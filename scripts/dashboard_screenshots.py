"""Screenshots of every dashboard page for docs/img: a store seeded by real short campaigns and
solves (tests/seed.py) at budgets where the networks learn something, served in this process,
photographed in Debian's Chromium.

    .venv/bin/python scripts/dashboard_screenshots.py --out docs/img --adam 400 --lbfgs 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--adam", type=int, default=400)
    parser.add_argument("--lbfgs", type=int, default=300)
    parser.add_argument("--collocation", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from api.app import create_app
    from api.service import Service
    from metalic.pinn.problem import PinnConfig
    from metalic.pinn.trainer import TrainConfig
    from metalic.settings import Settings
    from metalic.store import campaigns, tokens
    from metalic.store import studies as study_store
    from metalic.store import tasks as task_store
    from tests.conftest import LiveServer
    from tests.seed import seed_store

    home = Path(tempfile.mkdtemp(prefix="metalic-shots-"))
    settings = Settings(home=home, poll_seconds=0.05, heartbeat_seconds=0.5, progress_seconds=0.05)
    train = TrainConfig(adam=args.adam, lbfgs=args.lbfgs)
    points = PinnConfig(n_collocation=args.collocation, n_boundary=100)
    url = f"sqlite:///{home / 'metalic.db'}"
    store = seed_store(url, settings, 3600, train, points, args.rounds, extra=("burgers",))
    admin, _ = tokens.create(store, "admin", "admin")
    found = study_store.list_studies(store, campaigns_too=True)
    studies = {(st.study.family, st.study.heuristic): st.study.id for st in found}
    campaign = next(c.id for c in campaigns.list_campaigns(store, 100) if c.family == "advection")
    task = next(t.id for t in task_store.list_tasks(store, limit=1000) if t.campaign_id is None)
    shots = {
        "dashboard-overview": "/dashboard/",
        "dashboard-study": f"/dashboard/studies/{studies[('advection', 'ucb')]}",
        "dashboard-study-heat": f"/dashboard/studies/{studies[('heat', 'ucb')]}?x=a&y=b",
        "dashboard-study-burgers": f"/dashboard/studies/{studies[('burgers', 'ucb')]}",
        "dashboard-tasks": "/dashboard/tasks",
        "dashboard-task": f"/dashboard/tasks/{task}",
        "dashboard-campaigns": "/dashboard/campaigns",
        "dashboard-campaign": f"/dashboard/campaigns/{campaign}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with LiveServer(create_app(Service(settings, store))) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        # bypass_csp: wait_for_function evaluates its predicate with eval, which the policy refuses
        page = browser.new_page(viewport={"width": 1300, "height": 900}, bypass_csp=True)
        page.goto(f"{server.url}/dashboard/login")
        page.screenshot(path=str(args.out / "dashboard-login.png"))
        page.fill("input[name=token]", admin)
        page.click("form button[type=submit]")
        page.wait_for_load_state("load")
        for name, path in shots.items():
            page.goto(server.url + path)
            page.wait_for_function(  # lazy charts are drawn when scrolled near: scroll each into view
                "(document.querySelector('.chart.loading[data-lazy]') || document.body).scrollIntoView(), "
                "document.querySelectorAll('.chart.loading').length === 0",
                timeout=30_000,
            )
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(300)
            page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
            print(args.out / f"{name}.png")
        browser.close()


if __name__ == "__main__":
    main()

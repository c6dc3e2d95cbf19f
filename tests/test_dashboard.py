"""The admin dashboard in a real headless Chromium (Debian's, driven by Playwright; no browser is
downloaded), against a store seeded by real short campaigns and solves (``tests/seed.py``), and
against a real ``metalic serve`` for the live progress of a running task."""

from __future__ import annotations

import csv
import io
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from metalic.store import tokens
from metalic.store.models import CampaignRow, ObservationRow, StudyRow, TaskRow
from tests.conftest import ROOT, LiveServer, free_port

pytestmark = pytest.mark.service

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "out" / "dashboard-screenshots"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A seeded SQLite store served by the API (with the dashboard) in this process."""
    from api.app import create_app
    from api.service import Service
    from metalic.settings import Settings
    from tests.seed import seed_store

    home = tmp_path_factory.mktemp("dash")
    settings = Settings(
        home=home,
        poll_seconds=0.05,
        heartbeat_seconds=0.5,
        progress_seconds=0.05,
        token_cache_seconds=0.0,
        dashboard_poll_seconds=0.5,
    )
    store = seed_store(f"sqlite:///{home / 'metalic.db'}", settings)
    admin, _ = tokens.create(store, "root", "admin")
    user, _ = tokens.create(store, "bob", "user")
    with LiveServer(create_app(Service(settings, store))) as server:
        yield {"url": server.url, "store": store, "admin": admin, "user": user}
    store.dispose()


class Console:
    """The page's console errors (4xx / 5xx answers included), uncaught exceptions and requests
    that failed."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("requestfailed", self._failed)

    def _failed(self, request) -> None:
        if request.failure != "net::ERR_ABORTED":  # a fetch cut short by the test leaving the page
            self.errors.append(f"request failed: {request.url} ({request.failure})")


def log_in(page, url: str, token: str) -> None:
    page.goto(f"{url}/dashboard/login")
    page.fill("input[name=token]", token)
    page.click("form button[type=submit]")
    page.wait_for_load_state("load")


def charts_ready(page) -> list[dict]:
    """Wait until no chart is loading; return each chart's id, trace count and data points."""
    page.wait_for_function("document.querySelectorAll('.chart.loading').length === 0", timeout=20_000)
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('.chart')).map(el => ({
            id: el.id,
            nodata: el.classList.contains('nodata'),
            traces: (el.data || []).length,
            points: (el.data || []).reduce((n, t) => n + (t.z ? t.z.flat().length : (t.y || t.x || []).length), 0),
        }))"""
    )


PAGES = [
    ("overview", "/dashboard/", 2),
    ("study", "/dashboard/studies/{service_study}", 4),
    ("study-campaign", "/dashboard/studies/{ucb_study}", 5),
    ("study-heat-heatmap", "/dashboard/studies/{heat_study}?x=a&y=b&fix_c=0.5", 5),
    ("tasks", "/dashboard/tasks?state=succeeded", 0),
    ("task", "/dashboard/tasks/{task}", 1),
    ("campaigns", "/dashboard/campaigns", 0),
    ("campaign", "/dashboard/campaigns/{campaign}", 4),
]


def _ids(store) -> dict:
    with store.read() as s:
        studies = {(st.family, st.heuristic): st.id for st in s.scalars(select(StudyRow)).all()}
        campaign = s.scalar(select(CampaignRow.id).where(CampaignRow.family == "advection"))
        task = s.scalar(select(TaskRow.id).where(TaskRow.campaign_id.is_(None)).order_by(TaskRow.id.desc()))
    return {
        "service_study": studies[("advection", None)],
        "ucb_study": studies[("advection", "ucb")],
        "heat_study": studies[("heat", "ucb")],
        "campaign": campaign,
        "task": task,
    }


def test_every_page_shows_charts_with_data_and_no_console_errors(seeded, browser):
    ids = _ids(seeded["store"])
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    console = Console(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{seeded['url']}/dashboard/login")
    page.screenshot(path=str(SHOTS / "login.png"))
    log_in(page, seeded["url"], seeded["admin"])
    assert page.url.endswith("/dashboard/")
    for name, path, n_charts in PAGES:
        response = page.goto(seeded["url"] + path.format(**ids))
        assert response.status == 200, (name, response.status)
        assert "/login" not in page.url
        charts = charts_ready(page)
        assert len(charts) == n_charts, (name, charts)
        for chart in charts:
            assert not chart["nodata"] and chart["traces"] > 0 and chart["points"] > 0, (name, chart)
        if name == "task":
            page.wait_for_function("document.getElementById('solution-img').naturalWidth > 0")
        if name == "tasks":
            assert page.locator("table.tasks tbody tr:not(.empty)").count() > 0
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    # the heatmap page shows the chosen slice: two parameters varied, the others fixed
    page.goto(seeded["url"] + PAGES[3][1].format(**ids))
    charts_ready(page)
    kinds = page.evaluate("document.getElementById('landscape-chart').data.map(t => t.type)")
    assert kinds == ["heatmap"]
    assert page.input_value("input[name=fix_c]") == "0.5"
    assert console.errors == []
    context.close()


def test_pages_without_an_admin_session_go_to_the_login_form(seeded, browser):
    ids = _ids(seeded["store"])
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{seeded['url']}/dashboard/tasks/{ids['task']}")
    assert re.search(r"/dashboard/login\?next=/tasks/\d+$", page.url)
    # a forged cookie is no session either
    forged = {"name": "metalic_session", "value": "eyJ0b2tlbiI6ICJ4In0=.forged.sig", "path": "/dashboard"}
    context.add_cookies([{**forged, "domain": "127.0.0.1"}])
    page.goto(f"{seeded['url']}/dashboard/")
    assert "/dashboard/login" in page.url
    # after logging in, the page asked for first
    page.goto(f"{seeded['url']}/dashboard/tasks/{ids['task']}")
    page.fill("input[name=token]", seeded["admin"])
    page.click("form button[type=submit]")
    page.wait_for_load_state("load")
    assert page.url.endswith(f"/dashboard/tasks/{ids['task']}")
    cookie = next(c for c in context.cookies() if c["name"] == "metalic_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    assert page.evaluate("document.cookie") == ""  # not readable from scripts
    context.close()
    # data and CSV answer 401 without a session; the REST API does not take the cookie
    r = httpx.get(f"{seeded['url']}/dashboard/data/overview")
    assert r.status_code == 401
    assert httpx.get(f"{seeded['url']}/dashboard/csv/tasks").status_code == 401


def test_a_user_token_or_a_wrong_one_cannot_log_in(seeded, browser):
    context = browser.new_context()
    page = context.new_page()
    with page.expect_response(lambda r: r.request.method == "POST") as sent:
        log_in(page, seeded["url"], seeded["user"])
    assert sent.value.status == 403
    assert "needs an admin token" in page.inner_text(".error")
    with page.expect_response(lambda r: r.request.method == "POST") as sent:
        log_in(page, seeded["url"], "mtl_not-a-token")
    assert sent.value.status == 401
    assert "unknown or revoked" in page.inner_text(".error")
    page.goto(f"{seeded['url']}/dashboard/")
    assert "/dashboard/login" in page.url
    context.close()


def _client_session(url: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=url)
    form = client.get("/dashboard/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    r = client.post("/dashboard/login", data={"token": token, "csrf": csrf, "next": "/"})
    assert r.status_code == 303
    return client


def test_forms_need_the_csrf_token_and_a_revoked_token_ends_the_session(seeded):
    store = seeded["store"]
    extra, _ = tokens.create(store, "ops", "admin")
    client = _client_session(seeded["url"], extra)
    with store.read() as s:
        before = s.query(CampaignRow).count()
    r = client.post("/dashboard/campaigns", data={"family": "advection", "heuristics": "ucb"})
    assert r.status_code == 403 and "expired" in r.text
    r = client.post("/dashboard/logout", data={"csrf": "wrong"})
    assert r.status_code == 403
    with store.read() as s:
        assert s.query(CampaignRow).count() == before
    assert client.get("/dashboard/data/overview").status_code == 200
    tokens.revoke(store, "ops")
    assert client.get("/dashboard/data/overview").status_code == 401
    assert client.get("/dashboard/", follow_redirects=False).status_code == 303
    client.close()


def test_starting_a_campaign_from_the_form(seeded, browser):
    store = seeded["store"]
    context = browser.new_context()
    page = context.new_page()
    console = Console(page)
    log_in(page, seeded["url"], seeded["admin"])
    with store.read() as s:
        before = s.query(CampaignRow).count()
    page.goto(f"{seeded['url']}/dashboard/campaigns")
    page.select_option("select[name=family]", "reaction")
    page.fill("input[name=rounds]", "-3")
    with page.expect_response(lambda r: r.request.method == "POST") as sent:
        page.click(".campaign-form button[type=submit]")
    assert sent.value.status == 422
    assert "rounds" in page.inner_text("[data-error-for=rounds]")
    assert page.input_value("input[name=rounds]") == "-3"  # the form keeps what was typed
    assert [e for e in console.errors if "422" not in e] == []  # the browser logs the 422 it was sent
    console.errors.clear()
    with store.read() as s:
        assert s.query(CampaignRow).count() == before
    page.fill("input[name=rounds]", "3")
    page.fill("input[name=adam]", "50")
    page.fill("input[name=lbfgs]", "5")
    page.click(".campaign-form button[type=submit]")
    assert re.search(r"/dashboard/campaigns/\d+$", page.url)
    camp_id = int(page.url.rsplit("/", 1)[1])
    with store.read() as s:
        camp = s.get(CampaignRow, camp_id)
        assert (camp.family, camp.config["rounds"], camp.config["train"]["adam"]) == ("reaction", 3, 50)
        assert camp.config["policies"] == ["ucb", "random"] and camp.owner == "root"
    charts_ready(page)  # no trained round yet: every chart says so instead of loading forever
    page.click("text=Cancel the campaign")
    page.wait_for_selector("[data-field='campaign.state']:has-text('cancelled')")
    assert console.errors == []
    context.close()


def _read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_downloads_match_the_database(seeded, browser):
    store, ids = seeded["store"], _ids(seeded["store"])
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    log_in(page, seeded["url"], seeded["admin"])
    page.goto(f"{seeded['url']}/dashboard/tasks?state=succeeded&family=advection")
    with page.expect_download() as download:
        page.click("a.csv")
    rows = _read_csv(Path(download.value.path()).read_text())
    with store.read() as s:
        tasks = s.scalars(
            select(TaskRow)
            .where(TaskRow.state == "succeeded", TaskRow.family == "advection")
            .order_by(TaskRow.id.desc())
        ).all()
        observations = s.scalars(
            select(ObservationRow).where(ObservationRow.study_id == ids["ucb_study"]).order_by(ObservationRow.id)
        ).all()
    assert [int(r["id"]) for r in rows] == [t.id for t in tasks]
    for row, task in zip(rows, tasks, strict=True):
        assert row["state"] == "succeeded" and float(row["rel_l2"]) == pytest.approx(task.rel_l2, rel=1e-12)
        assert float(row["reward"]) == pytest.approx(task.reward, rel=1e-12)
    # a study's observations, and what a chart shows (built in the browser from the chart's data)
    page.goto(f"{seeded['url']}/dashboard/studies/{ids['ucb_study']}")
    with page.expect_download() as download:
        page.click("h2 a.csv")
    rows = _read_csv(Path(download.value.path()).read_text())
    assert [(int(r["task_id"]), float(r["reward"])) for r in rows] == [(o.task_id, o.reward) for o in observations]
    charts_ready(page)
    with page.expect_download() as download:
        page.click("button[data-csv-for=terms-chart]")
    terms = _read_csv(Path(download.value.path()).read_text())
    # nine terms, then the single-network arm (stored as one index: bit i = term i, 512 = one network)
    switches = [[(o.arm_adam >> i) & 1 if o.arm_adam < 512 else 0 for i in range(9)] + [int(o.arm_adam == 512)]
                for o in observations]  # fmt: skip
    on = [sum(sw[i] for sw in switches) / len(observations) for i in range(10)]
    assert [float(r["y"]) for r in terms] == pytest.approx(on, abs=1e-4)
    # a table, as the browser shows it: the overview's studies with their observation counts
    page.goto(f"{seeded['url']}/dashboard/")
    charts_ready(page)
    with page.expect_download() as download:
        page.click("button[data-csv-table=studies-table]")
    shown = _read_csv(Path(download.value.path()).read_text())
    with store.read() as s:
        counts = dict(
            s.execute(
                select(ObservationRow.study_id, func.count())
                .join(StudyRow, StudyRow.id == ObservationRow.study_id)
                .where(StudyRow.campaign_id.is_(None))
                .group_by(ObservationRow.study_id)
            ).all()
        )
    assert {int(r["study"]): int(r["observations"]) for r in shown} == counts
    context.close()


@pytest.fixture
def live_serve(tmp_path, ray_address):
    from tests.test_serve import start

    home, log, port = tmp_path / "home", tmp_path / "serve.log", free_port()
    server = start(home, port, ray_address, log)
    yield {"url": f"http://127.0.0.1:{port}", "token": (home / "admin-token").read_text().strip()}
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)


def test_a_running_tasks_progress_moves_on_the_open_page(live_serve, browser):
    url, h = live_serve["url"], {"Authorization": f"Bearer {live_serve['token']}"}
    body = {
        "params": {"beta": 5.0},
        "arm": "u,flux",
        "budget": {"adam": 50000, "lbfgs": 0},
        "points": {"collocation": 64, "boundary": 16, "interface": 9},
    }
    task_id = httpx.post(f"{url}/v1/families/advection/solve", json=body, headers=h).json()["id"]
    deadline = time.monotonic() + 120
    while (httpx.get(f"{url}/v1/tasks/{task_id}", headers=h).json()["progress"]["iteration"] or 0) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    context = browser.new_context()
    page = context.new_page()
    console = Console(page)
    log_in(page, url, live_serve["token"])
    page.goto(f"{url}/dashboard/tasks/{task_id}")
    page.evaluate("window.__opened = true")  # gone if the page reloads
    page.wait_for_function("document.getElementById('loss-chart').data !== undefined", timeout=20_000)
    first = int(page.inner_text("#iteration"))
    points = page.evaluate("document.getElementById('loss-chart').data[0].x.length")
    # zoom the loss chart: the updates must not reset it
    page.evaluate("Plotly.relayout('loss-chart', {'xaxis.range': [0, 5]})")
    page.wait_for_function(f"Number(document.getElementById('iteration').textContent) > {first}", timeout=30_000)
    page.wait_for_function(f"document.getElementById('loss-chart').data[0].x.length > {points}", timeout=30_000)
    assert page.evaluate("window.__opened") is True
    assert page.evaluate("document.getElementById('loss-chart').layout.xaxis.range") == [0, 5]
    assert httpx.post(f"{url}/v1/tasks/{task_id}/cancel", headers=h).status_code == 200
    page.wait_for_selector("[data-field='task.state']:has-text('cancelled')", timeout=30_000)
    assert console.errors == []
    context.close()

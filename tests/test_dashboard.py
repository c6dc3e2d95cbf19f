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
import numpy as np
import pytest
from sqlalchemy import func, select

from metalic.arms import Arm
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
        yield {"url": server.url, "store": store, "admin": admin, "user": user, "settings": settings}
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


def admin_page(browser, server: dict, **options):
    """A fresh browser context (``options``: its viewport, downloads, ...) with an admin logged in
    to ``server``; returns (context, page)."""
    context = browser.new_context(**options)
    page = context.new_page()
    log_in(page, server["url"], server["admin"])
    return context, page


def wait_until(page, expression: str, seconds: float = 10) -> None:
    """Poll a JavaScript expression until it is true. (Playwright's wait_for_function evaluates its
    predicate with eval inside the page, which the dashboard's Content-Security-Policy refuses: the
    tests run under the real policy.)"""
    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true after {seconds} s: {expression}"
        time.sleep(0.05)


def charts_ready(page) -> list[dict]:
    """Wait until no chart is loading; return each chart's id, trace count and data points."""
    # charts marked data-lazy are drawn when scrolled near: bring each one into view in turn
    wait_until(page, "(document.querySelector('.chart.loading[data-lazy]') || document.body).scrollIntoView(), "
                     "document.querySelectorAll('.chart.loading').length === 0", 20)  # fmt: skip
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('.chart')).map(el => ({
            id: el.id,
            nodata: el.classList.contains('nodata'),
            traces: (el.data || []).length,
            points: (el.data || []).reduce((n, t) => n + (t.z ? t.z.flat().length
                : t.dimensions ? t.dimensions[0].values.length : (t.y || t.x || []).length), 0),
        }))"""
    )


PAGES = [
    ("overview", "/dashboard/", 3),
    ("study", "/dashboard/studies/{service_study}", 8),
    ("study-campaign", "/dashboard/studies/{ucb_study}", 9),
    ("study-heat-heatmap", "/dashboard/studies/{heat_study}?x=a&y=b&fix_c=0.5", 9),
    ("tasks", "/dashboard/tasks?state=succeeded", 0),
    ("task", "/dashboard/tasks/{task}", 2),  # the loss, the error over time
    ("campaigns", "/dashboard/campaigns", 0),
    ("campaign", "/dashboard/campaigns/{campaign}", 4),
]


def _ids(store) -> dict:
    with store.read() as s:
        studies = {(st.family, st.heuristic): st.id for st in s.scalars(select(StudyRow)).all()}
        campaign = s.scalar(select(CampaignRow.id).where(CampaignRow.family == "advection"))
        task = s.scalar(
            select(TaskRow.id)
            .where(TaskRow.campaign_id.is_(None), TaskRow.state == "succeeded")
            .order_by(TaskRow.id.desc())
        )
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
            wait_until(page, "document.getElementById('solution-img').naturalWidth > 0")
        if name == "tasks":
            assert page.locator("table.tasks tbody tr:not(.empty)").count() > 0
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    # the heatmap page shows the chosen slice: two parameters varied, the others fixed
    page.goto(seeded["url"] + PAGES[3][1].format(**ids))
    charts_ready(page)
    kinds = page.evaluate("document.getElementById('landscape-chart').data.map(t => t.type)")
    assert kinds[0] == "heatmap" and set(kinds[1:]) <= {"scatter"}  # the observed points over it
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
    assert "rounds: must be non-negative" in page.inner_text("[data-error-for=rounds]")
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
    assert page.inner_text("dt:has-text('heuristics') + dd") == "ucb, random (single)"
    assert page.inner_text("dt:has-text('budget') + dd") == "50 Adam + 5 L-BFGS"
    page.click("text=Cancel the campaign")
    page.wait_for_selector("[data-field='campaign.state']:has-text('cancelled')")
    assert console.errors == []
    context.close()


def _read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_downloads_match_the_database(seeded, browser):
    store, ids = seeded["store"], _ids(seeded["store"])
    context, page = admin_page(browser, seeded, accept_downloads=True)
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
    assert "params" not in rows[0]  # one column per parameter instead of a JSON string
    for row, task in zip(rows, tasks, strict=True):
        assert float(row["param_beta"]) == task.request["params"]["beta"]
        assert row["state"] == "succeeded" and float(row["rel_l2"]) == pytest.approx(task.rel_l2, rel=1e-12)
        assert float(row["reward"]) == pytest.approx(task.reward, rel=1e-12)
    # a study's observations, and what a chart shows (built in the browser from the chart's data)
    page.goto(f"{seeded['url']}/dashboard/studies/{ids['ucb_study']}")
    with page.expect_download() as download:
        page.click("h2 a.csv")
    rows = _read_csv(Path(download.value.path()).read_text())
    assert [(int(r["task_id"]), float(r["reward"])) for r in rows] == [(o.task_id, o.reward) for o in observations]
    assert [float(r["param_beta"]) for r in rows] == [o.params["beta"] for o in observations]
    charts_ready(page)
    with page.expect_download() as download:
        page.click("button[data-csv-for=terms-chart]")
    terms = _read_csv(Path(download.value.path()).read_text())
    # nine terms, the single-network arm, the causal bit (stored as one index: bit i = term i, 512 =
    # one network, + 513 with the causal bit)
    base = [o.arm_adam % 513 for o in observations]
    switches = [[(b >> i) & 1 if b < 512 else 0 for i in range(9)] + [int(b == 512), int(o.arm_adam >= 513)]
                for b, o in zip(base, observations, strict=True)]  # fmt: skip
    on = [sum(sw[i] for sw in switches) / len(observations) for i in range(11)]
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
    """``metalic serve`` on the session's Ray; its workers do not compile (a CPU compile would hold
    the first progress back by a minute)."""
    from tests.test_serve import start

    home, log, port = tmp_path / "home", tmp_path / "serve.log", free_port()
    server = start(home, port, ray_address, log, compile="off")
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
    wait_until(page, "document.getElementById('loss-chart').data !== undefined", 20)
    first = int(page.inner_text("#iteration"))
    points = page.evaluate("document.getElementById('loss-chart').data[0].x.length")
    # zoom the loss chart: the updates must not reset it
    page.evaluate("Plotly.relayout('loss-chart', {'xaxis.range': [0, 5]})")
    wait_until(page, f"Number(document.getElementById('iteration').textContent) > {first}", 30)
    wait_until(page, f"document.getElementById('loss-chart').data[0].x.length > {points}", 30)
    assert page.evaluate("window.__opened") is True
    assert page.evaluate("document.getElementById('loss-chart').layout.xaxis.range") == [0, 5]
    assert httpx.post(f"{url}/v1/tasks/{task_id}/cancel", headers=h).status_code == 200
    page.wait_for_selector("[data-field='task.state']:has-text('cancelled')", timeout=30_000)
    assert console.errors == []
    context.close()


# ---- the second pass: values that are not there yet, error pages, keys, ranges and headers ---------
@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """A store with nothing trained: one queued solve (no arm, no progress) of a study that was never
    refitted, and no batch in the last 24 h. No trainer: the task stays queued."""
    import migrations
    from api.app import create_app
    from api.service import Service
    from metalic.settings import Settings
    from metalic.store import Store
    from metalic.store import tasks as task_store
    from tests.seed import solve_request

    home = tmp_path_factory.mktemp("bare")
    settings = Settings(home=home, token_cache_seconds=0.0, dashboard_poll_seconds=0.3)
    store = Store(f"sqlite:///{home / 'metalic.db'}")
    migrations.upgrade(store)
    admin, _ = tokens.create(store, "root", "admin")
    task, _ = task_store.submit(store, solve_request("burgers", {"nu": 0.01}, seed=0), owner="root")
    with LiveServer(create_app(Service(settings, store))) as server:
        yield {"url": server.url, "store": store, "admin": admin, "task": task.id, "study": task.study_id}
    store.dispose()


def _polled(page) -> None:
    """Wait until the page has applied one answer of its data endpoint."""
    wait_until(page, "/^updated/.test(document.getElementById('live').textContent)", 20)


def test_values_that_are_not_there_yet_keep_their_placeholders_after_polling(bare, browser):
    context = browser.new_context()
    page = context.new_page()
    console = Console(page)
    log_in(page, bare["url"], bare["admin"])
    page.goto(f"{bare['url']}/dashboard/")
    _polled(page)
    assert page.inner_text("[data-field='throughput.mean_batch_size']") == "–"
    # counts of 0 and 1: whole-number ticks only (Plotly's own choice is 0, 0.2, 0.4, ...)
    charts_ready(page)
    for chart in ("queue-chart", "throughput-chart"):
        assert all(float(v).is_integer() for v in _ticks(page, chart, "yaxis")), chart
    page.goto(f"{bare['url']}/dashboard/studies/{bare['study']}")
    _polled(page)
    assert page.inner_text("dt:has-text('last refit') + dd") == "never"
    page.goto(f"{bare['url']}/dashboard/tasks/{bare['task']}")
    _polled(page)
    assert page.inner_text("dt:has-text('arm, Adam phase') + dd") == "not chosen yet"
    assert page.inner_text("dt:has-text('arm, L-BFGS phase') + dd") == "as Adam"
    assert page.inner_text("dt:has-text('progress') + dd") == "not started"
    assert console.errors == []
    context.close()


def test_pages_that_do_not_poll_say_nothing_about_loading(seeded, browser):
    context, page = admin_page(browser, seeded)
    for path in ("/dashboard/tasks", "/dashboard/campaigns"):
        page.goto(seeded["url"] + path)
        page.wait_for_load_state("networkidle")
        assert "loading" not in page.inner_text("header.top"), path
    page.goto(seeded["url"] + "/dashboard/")
    _polled(page)  # a live page says when it last updated
    context.close()


def test_errors_are_dashboard_pages_and_data_errors_stay_json(seeded, browser):
    ids = _ids(seeded["store"])
    context, page = admin_page(browser, seeded)
    response = page.goto(f"{seeded['url']}/dashboard/studies/{ids['heat_study']}?x=a&y=a")
    assert response.status == 422
    assert page.locator("header.top nav a").count() == 3  # the navigation is there
    assert "y: must be another of" in page.inner_text(".error-list")
    response = page.goto(f"{seeded['url']}/dashboard/tasks/999999")
    assert response.status == 404 and "no task 999999" in page.inner_text(".error-list")
    assert page.locator("header.top nav a").count() == 3
    page.click("text=Back to the overview")
    assert page.url.endswith("/dashboard/")
    context.close()
    admin = _client_session(seeded["url"], seeded["admin"])
    r = admin.get("/dashboard/data/tasks/999999")
    assert r.status_code == 404 and r.json() == {"detail": "no task 999999"}
    admin.close()


def test_every_answer_carries_a_content_security_policy_and_refuses_frames(seeded):
    client = _client_session(seeded["url"], seeded["admin"])
    for path in ("/dashboard/", "/dashboard/login", "/dashboard/data/overview", "/dashboard/tasks/999999"):
        r = client.get(path)
        assert r.headers["x-frame-options"] == "DENY", path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp, path
    client.close()


def test_a_second_visit_asks_the_server_only_for_the_page_and_its_data(seeded, browser):
    """The CSS and scripts are linked by content hash and kept by the browser (no revalidation on
    the next visit); the study page's data is fetched once, by its preload, not again by the script.
    (Its own server polls once a minute: no poll falls inside a visit.)"""
    from api.app import create_app
    from api.dashboard import pages
    from api.service import Service

    ids = _ids(seeded["store"])
    settings = seeded["settings"].model_copy(update={"dashboard_poll_seconds": 60})
    with LiveServer(create_app(Service(settings, seeded["store"]))) as server:
        context, page = admin_page(browser, {"url": server.url, "admin": seeded["admin"]})
        path = f"{server.url}/dashboard/studies/{ids['service_study']}"
        for visit in range(2):
            page.goto(path)
            charts_ready(page)
            entries = page.evaluate(
                "performance.getEntriesByType('resource')"
                ".map(e => [new URL(e.name).pathname, e.initiatorType, e.transferSize])"
            )
            data = [by for name, by, _ in entries if name.startswith("/dashboard/data/studies/")]
            assert data == ["link"], entries  # fetched once, by the preload: the script used its response
            assets = {name: size for name, _, size in entries if name.startswith("/dashboard/static/")}
            assert set(assets) == {f"/dashboard/static/{a}" for a in pages.ASSETS}
            if visit:  # from the browser's cache, without a request (a 304 would have a transfer size)
                assert all(size == 0 for size in assets.values()), assets
        client = _client_session(server.url, seeded["admin"])
        html = client.get(path.removeprefix(server.url)).text
        for asset in re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', html):
            assert re.search(r"\?v=[0-9a-f]{12}$", asset), asset
            assert client.get(asset).headers["cache-control"] == "max-age=86400", asset
        client.close()
        context.close()


def test_the_campaign_form_reports_every_bad_field_at_once(seeded, browser):
    context, page = admin_page(browser, seeded)
    page.goto(f"{seeded['url']}/dashboard/campaigns")
    for box in page.locator("input[name=heuristics]").all():
        box.uncheck()
    page.fill("input[name=rounds]", "-3")
    page.fill("input[name=adam]", "-5")
    page.click(".campaign-form button[type=submit]")
    shown = {e.get_attribute("data-error-for") for e in page.locator("[data-error-for]").all()}
    assert shown == {"heuristics", "rounds", "adam"}
    context.close()


def test_the_loss_chart_draws_l_bfgs_after_adam(seeded, browser):
    ids = _ids(seeded["store"])
    context, page = admin_page(browser, seeded)
    page.goto(f"{seeded['url']}/dashboard/tasks/{ids['task']}")
    charts_ready(page)
    traces = page.evaluate("document.getElementById('loss-chart').data.map(t => ({name: t.name, x: t.x}))")
    assert [t["name"] for t in traces] == ["adam", "lbfgs"]
    assert min(traces[1]["x"]) > max(traces[0]["x"])
    context.close()


def test_a_marching_tasks_loss_chart_draws_its_shares_one_after_another(seeded, browser):
    """A marching training reports Adam and L-BFGS shares in turn (slab by slab), each phase
    counting on from its previous share: every share is drawn after the one before it."""
    from metalic.store import tasks as task_store
    from metalic.store.models import ProgressRow
    from tests.seed import solve_request

    store = seeded["store"]
    task, _ = task_store.submit(store, solve_request("advection", {"beta": 4.0}, 990), owner="alice")
    task_store.cancel(store, task.id)  # off the queue; its points are what the page draws
    points = [("adam", 50), ("adam", 100), ("lbfgs", 50), ("lbfgs", 100), ("adam", 150), ("adam", 200),
              ("lbfgs", 150), ("lbfgs", 200)]  # fmt: skip
    with store.write() as s:
        attempt = s.get(TaskRow, task.id).attempt
        s.add_all(ProgressRow(task_id=task.id, attempt=attempt, phase=ph, iteration=it, loss=1.0 / it)
                  for ph, it in points)  # fmt: skip
    context, page = admin_page(browser, seeded)
    page.goto(f"{seeded['url']}/dashboard/tasks/{task.id}")
    wait_until(page, "document.getElementById('loss-chart').data !== undefined", 10)
    traces = page.evaluate("document.getElementById('loss-chart').data.map(t => ({name: t.name, x: t.x}))")
    assert [t["name"] for t in traces] == ["adam", "lbfgs"]
    assert traces[0]["x"] == [50, 100, None, 250, 300] and traces[1]["x"] == [150, 200, None, 350, 400]
    context.close()


def test_the_task_page_plots_the_error_over_time(seeded, browser):
    """A time-dependent family's task shows e(t) over the reference grid's times; the RMS of e(t)
    is the task's rel. L2 (the same numbers, seen from where in time they come)."""
    ids = _ids(seeded["store"])
    with seeded["store"].read() as s:
        task = s.get(TaskRow, ids["task"])
        rel_l2, over_time = task.result["rel_l2"], task.result["outcome"]["error_over_time"]
    context, page = admin_page(browser, seeded)
    page.goto(f"{seeded['url']}/dashboard/tasks/{ids['task']}")
    charts_ready(page)
    wait_until(page, "document.getElementById('time-chart').data !== undefined", 10)
    trace = page.evaluate("(t => ({x: t.x, y: t.y}))(document.getElementById('time-chart').data[0])")
    assert trace["x"] == over_time["t"] and trace["y"] == over_time["error"]
    assert len(trace["x"]) > 10 and trace["x"][0] == 0.0
    assert float(np.sqrt(np.mean(np.square(trace["y"])))) == pytest.approx(rel_l2, rel=2e-3)
    assert page.is_visible("#over-time")
    context.close()


def _ticks(page, chart: str, axis: str) -> list[float]:
    return page.evaluate(f"document.getElementById('{chart}')._fullLayout.{axis}._vals.map(v => v.x)")


def test_count_axes_colours_and_the_tasks_table_read_at_a_glance(seeded, browser):
    ids = _ids(seeded["store"])
    context, page = admin_page(browser, seeded, viewport={"width": 1400, "height": 900})
    page.goto(f"{seeded['url']}/dashboard/")
    charts_ready(page)
    colours = page.evaluate(
        """() => { const q = document.getElementById('queue-chart').data[0];
                   const t = document.getElementById('throughput-chart').data;
                   return {queue: Object.fromEntries(q.x.map((s, i) => [s, q.marker.color[i]])),
                           failed: t.find(x => x.name === 'failed').marker.color}; }"""
    )
    assert colours["queue"]["failed"] == colours["failed"] != colours["queue"]["running"]
    page.goto(f"{seeded['url']}/dashboard/campaigns/{ids['campaign']}")
    charts_ready(page)
    for chart in ("accumulated-chart", "reward-chart"):
        assert all(float(v).is_integer() for v in _ticks(page, chart, "xaxis")), chart
    page.goto(f"{seeded['url']}/dashboard/studies/{ids['ucb_study']}")
    charts_ready(page)
    assert "per observation" in page.inner_text("figure:has(#rewards-chart) figcaption")
    right = _ticks(page, "rewards-chart", "yaxis2")
    assert right[0] == 0 and len(right) <= 7
    page.goto(f"{seeded['url']}/dashboard/tasks")
    right = page.evaluate("document.querySelector('table.tasks').getBoundingClientRect().right")
    assert right <= page.evaluate("document.documentElement.clientWidth")  # no sideways scrolling
    heights = page.evaluate("Array.from(document.querySelectorAll('table.tasks tbody tr')).map(r => r.offsetHeight)")
    line = page.evaluate("parseFloat(getComputedStyle(document.querySelector('table.tasks td')).lineHeight)")
    assert max(heights) < 2.5 * line + 12, (heights, line)  # at most two lines of text per row
    context.close()


def _observed_log10_range(store, study_id: int) -> list[float]:
    with store.read() as s:
        rewards = s.scalars(select(ObservationRow.reward).where(ObservationRow.study_id == study_id)).all()
    return [-max(rewards), -min(rewards)]


def test_study_charts_show_observations_keys_and_a_fixed_colour_range(seeded, browser):
    ids = _ids(seeded["store"])
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    console = Console(page)
    log_in(page, seeded["url"], seeded["admin"])
    # lines: the legend stands beside the plot, which keeps most of the chart's height
    page.goto(f"{seeded['url']}/dashboard/studies/{ids['ucb_study']}")
    charts_ready(page)
    size = page.evaluate("(() => { const l = document.getElementById('landscape-chart')._fullLayout; "
                         "return {plot: l._size.h, height: l.height}; })()")  # fmt: skip
    assert size["plot"] >= 0.6 * size["height"], size
    observed = page.evaluate(
        "document.getElementById('landscape-chart').data"
        ".filter(t => t.name.startsWith('observed')).map(t => t.x.length)"
    )
    with seeded["store"].read() as s:
        n_obs = s.scalar(select(func.count()).where(ObservationRow.study_id == ids["ucb_study"]))
    assert sum(observed) == min(n_obs, 300)  # the latest 300 over the posterior
    # heatmap: the recommended arms are named in a key; the error's colours span the observed range
    page.goto(f"{seeded['url']}/dashboard/studies/{ids['heat_study']}?x=c&y=d&fix_a=-1.5&fix_b=0.5")
    charts_ready(page)
    best = page.evaluate(
        "(() => { const d = document.getElementById('best-chart').data; "
        "return {codes: new Set(d[0].z.flat()).size, keys: d.slice(1).map(t => t.name)}; })()"
    )
    assert best["keys"] and len(best["keys"]) == best["codes"]
    assert page.evaluate("document.getElementById('best-chart')._fullLayout.showlegend") is True
    heat = page.evaluate("['zmin', 'zmax'].map(k => document.getElementById('landscape-chart').data[0][k])")
    assert heat == pytest.approx(_observed_log10_range(seeded["store"], ids["heat_study"]), abs=1e-3)
    assert console.errors == []
    context.close()


def test_the_analysis_views_show_what_the_database_holds(seeded, browser):
    import numpy as np

    from metalic.store.models import BatchRow

    ids, store = _ids(seeded["store"]), seeded["store"]
    context, page = admin_page(browser, seeded, viewport={"width": 1300, "height": 900})
    page.goto(f"{seeded['url']}/dashboard/studies/{ids['heat_study']}")
    charts_ready(page)
    with store.read() as s:
        rows = s.execute(
            select(ObservationRow.reward, ObservationRow.params)
            .where(ObservationRow.study_id == ids["heat_study"])
            .order_by(ObservationRow.id)
        ).all()
    error = 10.0 ** -np.array([r.reward for r in rows])
    history = page.evaluate("document.getElementById('history-chart').data.map(t => [t.name, t.y])")
    assert [name for name, _ in history] == ["rel. L2", "best so far", "running median"]
    assert history[0][1] == pytest.approx(error.tolist(), rel=1e-4)
    assert history[1][1] == pytest.approx(np.minimum.accumulate(error).tolist(), rel=1e-4)
    # one slice per parameter (Heat: a, b, c, d), every observation once
    slices = page.evaluate("document.getElementById('slices-chart').data.map(t => [t.xaxis, t.x.length])")
    assert sorted({axis for axis, _ in slices}) == ["x", "x2", "x3", "x4"]
    assert all(sum(n for axis, n in slices if axis == a) == len(rows) for a in ("x", "x2", "x3", "x4"))
    dims = page.evaluate("document.getElementById('parcoords-chart').data[0].dimensions.map(d => [d.label, d.values])")
    assert [label for label, _ in dims] == ["a", "b", "c", "d", "arm", "log10 rel. L2"]
    assert dims[0][1] == pytest.approx([r.params["a"] for r in rows], rel=1e-4)  # 5 significant digits
    share = page.evaluate("document.getElementById('importance-chart').data[0].y")
    assert len(share) == 4 and sum(share) == pytest.approx(1, abs=1e-3) and min(share) > 0
    # the overview's timeline: one bar per batch, on the trainer that ran it
    page.goto(f"{seeded['url']}/dashboard/")
    charts_ready(page)
    bars = page.evaluate("document.getElementById('timeline-chart').data.reduce((n, t) => n + t.x.length, 0)")
    with store.read() as s:
        assert bars == min(300, s.scalar(select(func.count()).select_from(BatchRow)))
    context.close()


def _listed(html: str, kind: str) -> list[int]:
    return [int(i) for i in re.findall(rf'<td><a href="[^"]*/{kind}/(\d+)">', html)]


def test_tables_filter_and_sort_by_error_arm_parameter_and_owner(seeded):
    store = seeded["store"]
    client = _client_session(seeded["url"], seeded["admin"])
    with store.read() as s:
        tasks = s.scalars(select(TaskRow).where(TaskRow.state == "succeeded")).all()
    by_error = sorted(tasks, key=lambda t: (t.rel_l2, -t.id))
    page = client.get("/dashboard/tasks", params={"state": "succeeded", "sort": "error"}).text
    assert _listed(page, "tasks") == [t.id for t in by_error][:50]
    arm = Arm.from_index(tasks[0].arm_adam)
    wanted = {t.id for t in tasks if t.arm_adam == arm.index}
    assert (
        set(_listed(client.get("/dashboard/tasks", params={"state": "succeeded", "arm": arm.label}).text, "tasks"))
        == wanted
    )
    # a parameter's range (read from the stored request's JSON) and a rel. L2 range together
    in_range = [t for t in tasks if t.family == "advection" and 5 <= t.request["params"]["beta"] <= 20]
    cut = sorted(t.rel_l2 for t in in_range)[len(in_range) // 2]  # the median: some in, some out
    query = {"family": "advection", "param": "beta", "param_min": 5, "param_max": 20, "error_max": cut}
    wanted = {t.id for t in in_range if t.rel_l2 <= cut}
    assert 0 < len(wanted) < len(in_range)
    assert set(_listed(client.get("/dashboard/tasks", params=query).text, "tasks")) == wanted
    listed = client.get("/dashboard/csv/tasks", params=query).text
    assert {int(r["id"]) for r in _read_csv(listed)} == wanted
    owners = {t.owner for t in tasks}
    assert set(_listed(client.get("/dashboard/tasks", params={"owner": "nobody"}).text, "tasks")) == set()
    for owner in owners - {None}:
        assert set(_listed(client.get("/dashboard/tasks", params={"owner": owner, "state": "succeeded"}).text,
                           "tasks")) == {t.id for t in tasks if t.owner == owner}  # fmt: skip
    # a study's observations, largest error first
    study = _ids(store)["ucb_study"]
    with store.read() as s:
        obs = s.scalars(select(ObservationRow).where(ObservationRow.study_id == study)).all()
    page = client.get(f"/dashboard/studies/{study}", params={"sort": "-error"}).text
    shown = [int(i) for i in re.findall(r'<td><a href="[^"]*/tasks/(\d+)">', page.split('id="observations"')[1])]
    assert shown == [o.task_id for o in sorted(obs, key=lambda o: (-o.rel_l2, -o.id))][:50]
    # bad filters name their field and show a page
    r = client.get("/dashboard/tasks", params={"arm": "flux,nonsense"})
    assert r.status_code == 422 and "arm" in r.text
    r = client.get("/dashboard/tasks", params={"param": "zeta", "param_min": 1})
    assert r.status_code == 422 and "param" in r.text
    client.close()

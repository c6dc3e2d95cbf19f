"""The dashboard with 100,000 tasks and 100,000 observations: the overview, study and task-list
pages (and their data) cost the same number of queries as with a handful of rows, and answer in a
bounded size. Counted through SQLAlchemy's cursor events, not timed (benchmarks/dashboard_load.py
times them)."""

from __future__ import annotations

import csv
import io
import re
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from metalic.settings import Settings
from metalic.store import tokens
from metalic.store.models import ObservationRow, TaskRow
from tests.seed import bulk_seed

pytestmark = pytest.mark.service

BIG = 100_000


class QueryCounter:
    """The queries a request runs. The study page's background engine restore (the
    ``engine-prefetch`` thread, which the page does not wait for) is not counted: it may or may not
    overlap the counted request, which made the count flaky."""

    def __init__(self, engine):
        self.engine, self.count = engine, 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *args) -> None:
        if not threading.current_thread().name.startswith("engine-prefetch"):
            self.count += 1

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


def pages(study_id: int) -> list[str]:
    return [
        "/dashboard/",
        "/dashboard/data/overview",
        f"/dashboard/studies/{study_id}",
        f"/dashboard/data/studies/{study_id}",
        "/dashboard/tasks",
        "/dashboard/tasks?state=failed&family=advection",
        "/dashboard/tasks?param=beta&param_min=2&param_max=9&sort=error&arm=u,flux",
        f"/dashboard/studies/{study_id}?sort=-error&error_max=0.5",
    ]


def measure(client: TestClient, store, study_id: int) -> dict[str, tuple[int, int]]:
    """(queries, response bytes) per page (each asked twice: the second is what polling costs)."""
    out = {}
    for path in pages(study_id):
        assert client.get(path).status_code == 200, path
        counter = QueryCounter(store.engine)
        try:
            r = client.get(path)
        finally:
            counter.close()
        assert r.status_code == 200, path
        out[path] = (counter.count, len(r.content))
    return out


def logged_in(store, tmp_path, cache_seconds: float) -> tuple[TestClient, int]:
    """A dashboard client with an admin session, on a store with 20 bulk-seeded tasks (and the
    seeded study's id)."""
    from api.app import create_app
    from api.service import Service

    settings = Settings(home=tmp_path, token_cache_seconds=60.0, dashboard_cache_seconds=cache_seconds)
    admin, _ = tokens.create(store, "root", "admin")
    study_id = bulk_seed(store, 20, seed=1)
    client = TestClient(create_app(Service(settings, store)))
    form = client.get("/dashboard/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    login = client.post("/dashboard/login", data={"token": admin, "csrf": csrf}, follow_redirects=False)
    assert login.status_code == 303
    return client, study_id


def test_pages_cost_bounded_queries_and_bytes_at_100k_rows(store, tmp_path):
    # no cache of page data here: what is counted is what one build of each page costs
    client, study_id = logged_in(store, tmp_path, cache_seconds=0.0)

    small = measure(client, store, study_id)
    bulk_seed(store, BIG - 20, seed=2)
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(TaskRow)) == BIG
        assert s.scalar(select(func.count()).select_from(ObservationRow)) == BIG
    big = measure(client, store, study_id)
    for path in pages(study_id):
        queries, size = big[path]
        assert queries == small[path][0], (path, small[path], big[path])  # no query per row
        assert queries <= 13, (path, queries)  # the overview: its aggregates and tables, and the batch timeline
        assert size < 200_000, (path, size)
    # a filtered CSV download streams across many keyset chunks of 1,000 rows, each row once
    with store.read() as s:
        owned = s.scalars(select(TaskRow.id).where(TaskRow.owner == "user1").order_by(TaskRow.id.desc())).all()
    r = client.get("/dashboard/csv/tasks", params={"owner": "user1"})
    assert r.status_code == 200
    listed = list(csv.DictReader(io.StringIO(r.text)))
    assert len(owned) > 2_000 and [int(row["id"]) for row in listed] == owned
    assert {row["owner"] for row in listed} == {"user1"}
    client.close()


def test_polling_inside_the_cache_period_costs_no_query(sqlite_store, tmp_path):
    """Open tabs polling the overview or a study share one build per ``dashboard_cache_seconds``:
    a poll inside the period reads nothing from the database (a 304 when the tab has it)."""
    client, study_id = logged_in(sqlite_store, tmp_path, cache_seconds=60.0)
    for path in ("/dashboard/data/overview", f"/dashboard/data/studies/{study_id}"):
        first = client.get(path)
        assert first.status_code == 200
        counter = QueryCounter(sqlite_store.engine)
        try:
            again = client.get(path)
            unchanged = client.get(path, headers={"If-None-Match": first.headers["etag"]})
        finally:
            counter.close()
        assert again.content == first.content and unchanged.status_code == 304, path
        assert counter.count == 0, (path, counter.count)  # (the session is in its own cache too)
    client.close()


def test_an_idle_study_s_poll_after_the_cache_period_reads_its_source_and_does_not_rebuild(sqlite_store, tmp_path):
    """When the period ends and the study's observations, snapshot and campaign read as before,
    the last build serves again (same ETag, a few queries instead of a build's); a new observation
    makes the next poll after the period rebuild."""
    client, study_id = logged_in(sqlite_store, tmp_path, cache_seconds=0.2)
    path = f"/dashboard/data/studies/{study_id}"
    first = client.get(path)
    time.sleep(0.3)
    counter = QueryCounter(sqlite_store.engine)
    try:
        idle = client.get(path, headers={"If-None-Match": first.headers["etag"]})
    finally:
        counter.close()
    assert idle.status_code == 304, idle.status_code
    assert counter.count <= 4, counter.count  # the study's facts and campaign, not the build's queries
    bulk_seed(sqlite_store, 5, seed=3)  # new observations of the same study
    time.sleep(0.3)
    changed = client.get(path, headers={"If-None-Match": first.headers["etag"]})
    assert (
        changed.status_code == 200 and changed.json()["study"]["observations"] > first.json()["study"]["observations"]
    )
    client.close()


def test_the_hourly_counts_read_settled_hours_once_and_the_latest_two_each_time(store):
    """The overview's trainings per hour, kept incrementally, equal a full read; an hour that ended
    more than an hour ago is not read again (a row written there afterwards, which the service
    never does, is seen by a full read only)."""
    from datetime import timedelta

    from sqlalchemy import insert

    from metalic.store import reports
    from metalic.store.models import utc_now

    bulk_seed(store, 500, seed=3)
    hourly = reports.HourlyCounts()
    assert reports.overview(store, hourly=hourly).per_hour == reports.overview(store).per_hour
    with store.read() as s:
        now = s.execute(select(utc_now())).scalar_one()
        newest = s.scalar(select(func.max(TaskRow.id)))
        row = s.get(TaskRow, newest)
        template = {c.name: getattr(row, c.name) for c in TaskRow.__table__.columns if c.name != "id"}
    with store.write() as s:  # a task finishing now, and one written into a settled hour
        s.execute(insert(TaskRow).values(**{**template, "finished_at": now, "idempotency_key": None}))
        s.execute(
            insert(TaskRow).values(**{**template, "finished_at": now - timedelta(hours=5), "idempotency_key": None})
        )
    kept, full = reports.overview(store, hourly=hourly).per_hour, reports.overview(store).per_hour
    current = max(full)
    assert kept[current] == full[current]  # the latest hours are read each time
    assert kept != full  # the settled hour five hours ago was not read again
    assert sum(sum(c.values()) for c in kept.values()) == sum(sum(c.values()) for c in full.values()) - 1

"""Bounded read queries for the dashboard and the metrics: every one costs a fixed number of
queries and rows whatever the size of the tables (aggregates in SQL, keyset pages, bucketed
series), so they stay fast with 100,000 tasks and observations. They return records and plain
values; how they look on a page is ``api/dashboard``'s business.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import String, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from metalic.arms import Arm
from metalic.pinn.evaluate import ERROR_CAP
from metalic.store.models import BatchRow, CampaignRow, ObservationRow, ProgressRow, TaskRow, WorkerRow, utc_now
from metalic.store.records import ObservationRecord, TaskRecord, WorkerRecord, record, utc
from metalic.store.studies import StudySummary, study_summaries
from metalic.store.tasks import state_counts

CHUNK = 1000  # rows per query of a streamed download
TIMELINE = 300  # batches on the overview's timeline


class hour_of(FunctionElement):
    """A timestamp's hour as text 'YYYY-MM-DD HH:00' (a group-by key on both databases)."""

    type = String()
    inherit_cache = True


@compiles(hour_of, "sqlite")
def _hour_sqlite(element, compiler, **kw) -> str:
    return f"strftime('%Y-%m-%d %H:00', {compiler.process(element.clauses, **kw)})"


@compiles(hour_of, "postgresql")
def _hour_postgresql(element, compiler, **kw) -> str:
    return f"to_char(date_trunc('hour', {compiler.process(element.clauses, **kw)}), 'YYYY-MM-DD HH24:00')"


# ---- the service as a whole ------------------------------------------------------------------------
@dataclass(frozen=True)
class Totals:
    """Counters for the metrics scrape: tasks by state, finished batches, their runs and seconds,
    observations."""

    tasks: dict[str, int]
    batches: int
    batch_runs: int
    training_seconds: float
    observations: int


def totals(store) -> Totals:
    with store.read() as s:
        by_state = state_counts(s)
        batches, runs, seconds = s.execute(
            select(
                func.count(), func.coalesce(func.sum(BatchRow.size), 0), func.coalesce(func.sum(BatchRow.seconds), 0.0)
            )
            .select_from(BatchRow)
            .where(BatchRow.state == "done")
        ).one()
        observations = s.scalar(select(func.count()).select_from(ObservationRow))
    return Totals(by_state, int(batches), int(runs), float(seconds), int(observations))


@dataclass(frozen=True)
class Overview:
    """The service at a glance, read in one transaction: tasks by state; the last 24 hours'
    finished tasks per hour and state (``hours``: oldest first), batches, their mean size and
    training seconds, tasks finished in the last hour; the latest failures (id, family, error,
    finished_at) and campaigns (id, family, state, step, steps, created_at); the service studies;
    the workers with the size of the batch each trains."""

    now: datetime
    queue: dict[str, int]
    hours: list[str]
    per_hour: dict[str, Counter]
    batches: int
    mean_batch_size: float | None
    training_seconds: float | None
    finished_last_hour: int
    failed: list[tuple]
    campaigns: list[tuple]
    studies: list[StudySummary]
    workers: list[tuple[WorkerRecord, int | None]]
    timeline: list[tuple]  # the latest batches (``_batch_timeline``)


class HourlyCounts:
    """Finished tasks per clock hour and state over the last 24 hours, kept up incrementally: a
    task's ``finished_at`` is written once, so an hour that ended more than an hour ago no longer
    changes. Such hours are read once and kept; each later read covers only the latest two hours
    (a few thousand rows instead of a day's, about 10x less work at 100,000 tasks)."""

    def __init__(self) -> None:
        self._settled: dict[str, Counter] = {}
        self._lock = threading.Lock()

    def read(self, s: Session, now: datetime) -> tuple[list[str], dict[str, Counter]]:
        """(the 24 hours as 'YYYY-MM-DD HH:00', oldest first; their counts by state)."""
        hours = [(now - timedelta(hours=h)).strftime("%Y-%m-%d %H:00") for h in range(23, -1, -1)]
        with self._lock:
            known = {h: c for h, c in self._settled.items() if h in hours}
        missing = [i for i, h in enumerate(hours[:-2]) if h not in known]
        back = 23 - missing[0] if missing else 1  # hours back to the first hour to read
        since = (now - timedelta(hours=back)).replace(minute=0, second=0, microsecond=0)
        bucket = hour_of(TaskRow.finished_at)
        rows = s.execute(
            select(bucket, TaskRow.state, func.count())
            .where(TaskRow.finished_at >= since)
            .group_by(bucket, TaskRow.state)
        ).all()
        per_hour: dict[str, Counter] = {h: Counter() for h in hours}
        for hour, state, n in rows:
            if hour in per_hour:
                per_hour[hour][state] += int(n)
        for h in hours[:-2]:
            if h in known:
                per_hour[h] = known[h]
        with self._lock:
            self._settled = {h: per_hour[h] for h in hours[:-2]}
        return hours, per_hour


def overview(store, studies: int = 100, hourly: HourlyCounts | None = None) -> Overview:
    """The overview in one read transaction (``hourly``: keep the settled hours' counts there)."""
    with store.read() as s:
        now = s.execute(select(utc_now())).scalar_one()
        day = now - timedelta(hours=24)
        hours, per_hour = (hourly or HourlyCounts()).read(s, now)
        n_batches, mean_size, busy = s.execute(
            select(func.count(), func.avg(BatchRow.size), func.sum(BatchRow.seconds)).where(BatchRow.created_at >= day)
        ).one()
        last_hour = s.scalar(
            select(func.count()).select_from(TaskRow).where(TaskRow.finished_at >= now - timedelta(hours=1))
        )
        failed = s.execute(
            select(TaskRow.id, TaskRow.family, TaskRow.error, TaskRow.finished_at)
            .where(TaskRow.state == "failed")
            .order_by(TaskRow.id.desc())
            .limit(10)
        ).all()
        campaigns = s.execute(
            select(CampaignRow.id, CampaignRow.family, CampaignRow.state, CampaignRow.step, CampaignRow.steps,
                   CampaignRow.created_at).order_by(CampaignRow.id.desc()).limit(10)
        ).all()  # fmt: skip
        queue, summaries, workers = state_counts(s), study_summaries(s, limit=studies), _workers(s, now)
        timeline = _batch_timeline(s, TIMELINE)
    mean = None if mean_size is None else float(mean_size)
    failed, campaigns = [tuple(r) for r in failed], [tuple(r) for r in campaigns]
    return Overview(utc(now), queue, hours, per_hour, int(n_batches or 0), mean, busy, int(last_hour or 0),
                    failed, campaigns, summaries, workers, timeline)  # fmt: skip


def _batch_timeline(s: Session, limit: int) -> list[tuple]:
    """The latest ``limit`` batches, oldest first: (worker id, started, finished or None, runs,
    family, state), times in UTC. One read down the primary key, whatever the table's size."""
    rows = s.execute(
        select(BatchRow.worker_id, BatchRow.created_at, BatchRow.finished_at, BatchRow.size, BatchRow.family,
               BatchRow.state).order_by(BatchRow.id.desc()).limit(limit)
    ).all()  # fmt: skip
    return [(w, utc(start), utc(end), *rest) for w, start, end, *rest in reversed(rows)]


def workers_with_batches(store) -> tuple[datetime, list[tuple[WorkerRecord, int | None]]]:
    """(the database's now, trainers then dispatchers seen in the last hour and not stopped, at most
    200, each with the size of the batch it trains)."""
    with store.read() as s:
        now = s.execute(select(utc_now())).scalar_one()
        return utc(now), _workers(s, now)


def _workers(session: Session, now: datetime, limit: int = 200) -> list[tuple[WorkerRecord, int | None]]:
    rows = session.scalars(
        select(WorkerRow)
        .where(WorkerRow.state != "stopped", WorkerRow.last_seen >= now - timedelta(hours=1))
        .order_by(WorkerRow.kind.desc(), WorkerRow.started_at)
        .limit(limit)
    ).all()
    current = [w.current_batch for w in rows if w.current_batch is not None]
    sizes = {}
    if current:
        sizes = dict(session.execute(select(BatchRow.id, BatchRow.size).where(BatchRow.id.in_(current))).all())
    return [(record(WorkerRecord, w), sizes.get(w.current_batch)) for w in rows]


# ---- tasks ------------------------------------------------------------------------------------------
SORTS = ("newest", "error", "-error")  # id descending; rel. L2 ascending; rel. L2 descending


@dataclass(frozen=True)
class RowFilter:
    """What a task or observation table shows: exact owner and arm (``Arm.index``), a rel. L2
    range, a range of one PDE parameter, and the order (``SORTS``). Empty fields filter nothing."""

    owner: str | None = None
    arm: int | None = None
    error_min: float | None = None
    error_max: float | None = None
    param: str | None = None
    param_min: float | None = None
    param_max: float | None = None
    sort: str = "newest"

    def where(self, row) -> list:
        """Conditions on ``TaskRow`` or ``ObservationRow`` (an observation's owner is its task's)."""
        out = []
        if self.owner:
            owned = TaskRow.owner == self.owner
            out.append(owned if row is TaskRow else row.task_id.in_(select(TaskRow.id).where(owned)))
        if self.arm is not None:
            out.append(row.arm_adam == self.arm)
        if self.error_min is not None:
            out.append(row.rel_l2 >= self.error_min)
        if self.error_max is not None:
            out.append(row.rel_l2 <= self.error_max)
        if self.param and (self.param_min is not None or self.param_max is not None):
            value = (row.request["params"] if row is TaskRow else row.params)[self.param].as_float()
            if self.param_min is not None:
                out.append(value >= self.param_min)
            if self.param_max is not None:
                out.append(value <= self.param_max)
        return out

    def order(self, row) -> list:
        if self.sort == "error":
            return [row.rel_l2.is_(None), row.rel_l2.asc(), row.id.desc()]
        if self.sort == "-error":
            return [row.rel_l2.is_(None), row.rel_l2.desc(), row.id.desc()]
        return [row.id.desc()]


ALL_ROWS = RowFilter()  # no filter, newest first


def _task_filter(state: str | None, family: str | None, campaign_id: int | None, rows: RowFilter) -> list:
    where = rows.where(TaskRow)
    if state:
        where.append(TaskRow.state == state)
    if family:
        where.append(TaskRow.family == family)
    if campaign_id is not None:
        where.append(TaskRow.campaign_id == campaign_id)
    return where


def _page(s: Session, q, row, rows: RowFilter, before: int | None, offset: int, size: int) -> tuple[list, int | None]:
    """One page of ``q``: newest first with a keyset on id (``before``), or sorted by error with an
    ``offset``. Returns (rows, the next page's ``before`` or offset, None at the end)."""
    q = q.order_by(*rows.order(row)).limit(size + 1)
    if rows.sort == "newest":
        found = s.scalars(q if before is None else q.where(row.id < before)).all()
        return found[:size], found[size - 1].id if len(found) > size else None
    found = s.scalars(q.offset(offset)).all()
    return found[:size], offset + size if len(found) > size else None


def task_page(
    store, state: str | None, family: str | None, campaign_id: int | None, before: int | None, size: int,
    rows: RowFilter = ALL_ROWS, offset: int = 0,
) -> tuple[list[TaskRecord], int | None, dict[str, int]]:  # fmt: skip
    """One page of tasks, newest first (keyset on id) or by error (offset): (tasks, the next
    page's ``before`` or offset, tasks by state)."""
    q = select(TaskRow).where(*_task_filter(state, family, campaign_id, rows))
    with store.read() as s:
        found, following = _page(s, q, TaskRow, rows, before, offset, size)
        return [record(TaskRecord, t) for t in found], following, state_counts(s)


def iter_tasks(
    store, state: str | None, family: str | None, campaign_id: int | None, rows: RowFilter = ALL_ROWS
) -> Iterator[TaskRecord]:
    """Every task of a filter, newest first, streamed in keyset chunks (CSV downloads)."""
    before = None
    query = select(TaskRow).where(*_task_filter(state, family, campaign_id, rows)).order_by(TaskRow.id.desc())
    with store.read() as s:
        while True:
            chunk = s.scalars((query if before is None else query.where(TaskRow.id < before)).limit(CHUNK)).all()
            yield from (record(TaskRecord, t) for t in chunk)
            if len(chunk) < CHUNK:
                return
            before = chunk[-1].id
            s.expunge_all()


def task_progress(store, task_id: int, since: int, limit: int) -> tuple[TaskRecord, list[tuple]] | None:
    """A task and its latest attempt's loss points after point id ``since`` (at most ``limit``, the
    newest), as (id, phase, iteration, loss) oldest first; None when there is no such task."""
    with store.read() as s:
        t = s.get(TaskRow, task_id)
        if t is None:
            return None
        points = s.execute(
            select(ProgressRow.id, ProgressRow.phase, ProgressRow.iteration, ProgressRow.loss)
            .where(ProgressRow.task_id == task_id, ProgressRow.attempt == t.attempt, ProgressRow.id > since)
            .order_by(ProgressRow.id.desc())
            .limit(limit)
        ).all()
        return record(TaskRecord, t), [tuple(p) for p in reversed(points)]


# ---- studies ----------------------------------------------------------------------------------------
def arm_counts(store, study_id: int) -> dict[str, list[tuple[Arm, int]]]:
    """How many of the study's observations trained each arm, per phase (``adam``, ``lbfgs``): an
    aggregate over at most 513 arms each."""
    out = {}
    with store.read() as s:
        for phase, column in (("adam", ObservationRow.arm_adam), ("lbfgs", ObservationRow.arm_lbfgs)):
            rows = s.execute(
                select(column, func.count())
                .where(ObservationRow.study_id == study_id, column.is_not(None))
                .group_by(column)
            ).all()
            out[phase] = [(Arm.from_index(i), int(n)) for i, n in rows]
    return out


@dataclass(frozen=True)
class RewardBucket:
    """Consecutive observations averaged: how many, reward mean / min / max, sum of capped errors."""

    count: int
    reward_mean: float | None
    reward_min: float | None
    reward_max: float | None
    error_sum: float


def reward_buckets(store, study_id: int, points: int) -> tuple[list[RewardBucket], int]:
    """The study's rewards in observation order, averaged into at most ``points`` buckets of
    consecutive ids: (buckets, ids per bucket). A diverged or missing error counts the cap."""
    with store.read() as s:
        lo, hi, n = s.execute(
            select(func.min(ObservationRow.id), func.max(ObservationRow.id), func.count()).where(
                ObservationRow.study_id == study_id
            )
        ).one()
        if not n:
            return [], 1
        width = max(1, math.ceil((hi - lo + 1) / points))
        bucket = ((ObservationRow.id - lo) // width).label("b") if width > 1 else ObservationRow.id.label("b")
        err = case(
            (ObservationRow.status == "diverged", ERROR_CAP),
            (ObservationRow.rel_l2.is_(None), ERROR_CAP),
            (ObservationRow.rel_l2 > ERROR_CAP, ERROR_CAP),
            else_=ObservationRow.rel_l2,
        )
        rows = s.execute(
            select(
                bucket,
                func.count(),
                func.avg(ObservationRow.reward),
                func.min(ObservationRow.reward),
                func.max(ObservationRow.reward),
                func.sum(err),
            )
            .where(ObservationRow.study_id == study_id)
            .group_by(bucket)
            .order_by(bucket)
        ).all()
    buckets = [RewardBucket(int(c), avg, mn, mx, float(e or 0.0)) for _, c, avg, mn, mx, e in rows]
    return buckets, width


def observation_page(
    store, study_id: int, before: int | None, size: int, rows: RowFilter = ALL_ROWS, offset: int = 0
) -> tuple[list[ObservationRecord], int | None]:
    """One page of a study's observations, newest first (keyset) or by error (offset):
    (observations, the next page's ``before`` or offset)."""
    q = select(ObservationRow).where(ObservationRow.study_id == study_id, *rows.where(ObservationRow))
    with store.read() as s:
        found, following = _page(s, q, ObservationRow, rows, before, offset, size)
        return [record(ObservationRecord, o) for o in found], following


def iter_observations(store, study_id: int) -> Iterator[ObservationRecord]:
    """Every observation of a study, oldest first, streamed in keyset chunks."""
    after = 0
    with store.read() as s:
        while True:
            rows = s.scalars(
                select(ObservationRow)
                .where(ObservationRow.study_id == study_id, ObservationRow.id > after)
                .order_by(ObservationRow.id)
                .limit(CHUNK)
            ).all()
            yield from (record(ObservationRecord, o) for o in rows)
            if len(rows) < CHUNK:
                return
            after = rows[-1].id
            s.expunge_all()

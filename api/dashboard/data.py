"""What the dashboard shows, as bounded queries: every page costs a fixed number of queries and
rows whatever the size of the tables (aggregates in SQL, keyset pages, bucketed series), so it
stays fast with 100,000 tasks and observations. Everything returned is JSON-ready.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import String, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from metalic.bandit.engine import BanditEngine
from metalic.conditions import SINGLE_NETWORK_LABEL, TERM_NAMES, arm_label
from metalic.families import get_family
from metalic.pinn.evaluate import ERROR_CAP, outcome_error
from metalic.store.models import (
    TASK_STATES,
    Batch,
    Campaign,
    Observation,
    ProgressPoint,
    Study,
    Task,
    Worker,
    utc_now,
)
from metalic.store.studies import arm_of_bits, latest_snapshots, observation_counts
from metalic.store.tasks import counts_by_state
from metalic.store.workers import is_alive

PAGE = 50  # rows of a table page
SERIES = 300  # points of a per-round series (longer series are averaged in buckets)
PROGRESS = 2000  # loss points sent at most per request
LINE_POINTS = 60  # contexts along one parameter
GRID_POINTS = 24  # contexts per axis of a two-parameter heatmap


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


def terms(bits: str | None) -> str | None:
    return None if bits is None else arm_label(arm_of_bits(bits))


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat(sep=" ", timespec="seconds")


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# ---- overview -------------------------------------------------------------------------------------
def queue(s: Session, campaign_id: int | None = None) -> dict[str, int]:
    """Tasks by state, every state present (of one campaign, or of all)."""
    counts = counts_by_state(s, campaign_id)
    return {state: counts.get(state, 0) for state in TASK_STATES}


def studies(s: Session, campaign_id: int | None = None, limit: int = 100) -> list[dict]:
    """Service studies (or one campaign's) with observation counts and their latest snapshot."""
    where = Study.campaign_id.is_(None) if campaign_id is None else Study.campaign_id == campaign_id
    rows = s.scalars(select(Study).where(where).order_by(Study.id).limit(limit)).all()
    ids = [st.id for st in rows]
    counts, snaps = observation_counts(s, ids), latest_snapshots(s, ids)
    out = []
    for st in rows:
        snap = snaps.get(st.id)
        out.append(
            {
                "id": st.id,
                "family": st.family,
                "mode": st.mode,
                "profile": st.profile_key,
                "heuristic": st.heuristic or st.policy,
                "observations": int(counts.get(st.id, 0)),
                "snapshot_version": snap.version if snap else 0,
                "last_refit": _iso(snap.created_at) if snap else None,
            }
        )
    return out


def workers(s: Session, stale_seconds: float, now: datetime) -> list[dict]:
    """Trainers and dispatchers seen in the last hour, not stopped (at most 200)."""
    rows = s.scalars(
        select(Worker)
        .where(Worker.state != "stopped", Worker.last_seen >= now - timedelta(hours=1))
        .order_by(Worker.kind.desc(), Worker.started_at)
        .limit(200)
    ).all()
    current = [w.current_batch for w in rows if w.current_batch is not None]
    sizes = dict(s.execute(select(Batch.id, Batch.size).where(Batch.id.in_(current))).all()) if current else {}
    return [
        {
            "id": w.id,
            "kind": w.kind,
            "host": w.host,
            "device": w.device,
            "state": w.state,
            "current_batch": w.current_batch,
            "batch_size": sizes.get(w.current_batch),
            "last_seen": _iso(w.last_seen),
            "seconds_ago": round((now - w.last_seen).total_seconds(), 1),
            "alive": is_alive(w, now, stale_seconds),
        }
        for w in rows
    ]


def overview(s: Session, stale_seconds: float) -> dict[str, Any]:
    now = s.execute(select(utc_now())).scalar_one()
    day = now - timedelta(hours=24)
    hours = [(now - timedelta(hours=h)).strftime("%Y-%m-%d %H:00") for h in range(23, -1, -1)]
    per_hour: dict[str, Counter] = {h: Counter() for h in hours}
    bucket = hour_of(Task.finished_at)
    for hour, state, n in s.execute(
        select(bucket, Task.state, func.count()).where(Task.finished_at >= day).group_by(bucket, Task.state)
    ).all():
        if hour in per_hour:
            per_hour[hour][state] += int(n)
    n_batches, mean_size, busy = s.execute(
        select(func.count(), func.avg(Batch.size), func.sum(Batch.seconds)).where(Batch.created_at >= day)
    ).one()
    last_hour = s.scalar(select(func.count()).select_from(Task).where(Task.finished_at >= now - timedelta(hours=1)))
    failed = s.execute(
        select(Task.id, Task.family, Task.error, Task.finished_at)
        .where(Task.state == "failed")
        .order_by(Task.id.desc())
        .limit(10)
    ).all()
    campaigns = s.execute(
        select(Campaign.id, Campaign.family, Campaign.state, Campaign.step, Campaign.steps, Campaign.created_at)
        .order_by(Campaign.id.desc())
        .limit(10)
    ).all()
    return {
        "now": _iso(now),
        "queue": queue(s),
        "throughput": {
            "hours": hours,
            "succeeded": [per_hour[h]["succeeded"] for h in hours],
            "failed": [per_hour[h]["failed"] for h in hours],
            "cancelled": [per_hour[h]["cancelled"] for h in hours],
            "finished_last_hour": int(last_hour or 0),
            "finished_last_day": sum(sum(c.values()) for c in per_hour.values()),
            "batches_last_day": int(n_batches or 0),
            "mean_batch_size": _num(float(mean_size)) if mean_size is not None else None,
            "training_seconds_last_day": _num(busy),
        },
        "studies": studies(s),
        "workers": workers(s, stale_seconds, now),
        "failed": [{"id": i, "family": f, "error": (e or "")[:200], "finished_at": _iso(t)} for i, f, e, t in failed],
        "campaigns": [
            {"id": i, "family": f, "state": st, "step": a, "steps": b, "created_at": _iso(t)}
            for i, f, st, a, b, t in campaigns
        ],
    }


# ---- tasks ------------------------------------------------------------------------------------------
TASK_COLUMNS = (
    "id",
    "family",
    "params",
    "state",
    "arm_adam",
    "arm_lbfgs",
    "attempt",
    "progress",
    "rel_l2",
    "reward",
    "owner",
    "campaign_id",
    "created_at",
    "finished_at",
    "error",
)


def task_row(t: Task) -> dict[str, Any]:
    progress = None
    if t.progress_phase is not None:
        progress = f"{t.progress_phase} {t.progress_iteration}/{t.progress_total}"
    return {
        "id": t.id,
        "family": t.family,
        "params": t.request.get("params", {}),
        "state": t.state,
        "arm_adam": terms(t.arm_adam),
        "arm_lbfgs": terms(t.arm_lbfgs),
        "attempt": t.attempt,
        "progress": progress,
        "rel_l2": _num(t.rel_l2),
        "reward": _num(t.reward),
        "owner": t.owner,
        "campaign_id": t.campaign_id,
        "created_at": _iso(t.created_at),
        "finished_at": _iso(t.finished_at),
        "error": (t.error or "")[:300] or None,
    }


def _task_filter(state: str | None, family: str | None, campaign_id: int | None) -> list:
    where = []
    if state:
        where.append(Task.state == state)
    if family:
        where.append(Task.family == family)
    if campaign_id is not None:
        where.append(Task.campaign_id == campaign_id)
    return where


def task_page(
    s: Session, state: str | None, family: str | None, campaign_id: int | None, before: int | None
) -> dict[str, Any]:
    """One page of tasks, newest first (keyset on id), and the count of each state."""
    q = select(Task).where(*_task_filter(state, family, campaign_id)).order_by(Task.id.desc()).limit(PAGE + 1)
    if before is not None:
        q = q.where(Task.id < before)
    rows = s.scalars(q).all()
    return {
        "rows": [task_row(t) for t in rows[:PAGE]],
        "next_before": rows[PAGE - 1].id if len(rows) > PAGE else None,
        "queue": queue(s),
    }


def iter_tasks(s: Session, state: str | None, family: str | None, campaign_id: int | None) -> Iterator[dict]:
    """Every task of a filter, newest first, streamed in keyset chunks (CSV downloads)."""
    before = None
    while True:
        q = select(Task).where(*_task_filter(state, family, campaign_id)).order_by(Task.id.desc()).limit(1000)
        if before is not None:
            q = q.where(Task.id < before)
        rows = s.scalars(q).all()
        yield from (task_row(t) for t in rows)
        if len(rows) < 1000:
            return
        before = rows[-1].id
        s.expunge_all()


def task_detail(s: Session, task_id: int, since: int = 0) -> dict[str, Any] | None:
    """A task's state and the loss points after point id ``since`` (the latest attempt's)."""
    t = s.get(Task, task_id)
    if t is None:
        return None
    points = s.execute(
        select(ProgressPoint.id, ProgressPoint.phase, ProgressPoint.iteration, ProgressPoint.loss)
        .where(ProgressPoint.task_id == task_id, ProgressPoint.attempt == t.attempt, ProgressPoint.id > since)
        .order_by(ProgressPoint.id.desc())
        .limit(PROGRESS)
    ).all()
    points = list(reversed(points))
    row = task_row(t)
    result = t.result or {}
    outcome = result.get("outcome") or {}
    row.update(
        {
            "progress_phase": t.progress_phase,
            "progress_iteration": t.progress_iteration,
            "progress_total": t.progress_total,
            "progress_loss": _num(t.progress_loss),
            "batch_id": t.batch_id,
            "worker_id": t.worker_id,
            "started_at": _iso(t.started_at),
            "max_abs": _num(result.get("max_abs")),
            "status": result.get("status"),
            "seconds": _num(result.get("seconds")),
            "lbfgs_stop": outcome.get("lbfgs_stop"),
            "reward_phase0": _num(result.get("reward_phase0")),
            "mode": t.request.get("mode"),
        }
    )
    return {
        "task": row,
        "points": {
            "id": [p.id for p in points],
            "phase": [p.phase for p in points],
            "iteration": [p.iteration for p in points],
            "loss": [_num(p.loss) for p in points],
        },
        "cursor": points[-1].id if points else since,
    }


# ---- studies ----------------------------------------------------------------------------------------
def study_meta(s: Session, study_id: int) -> dict[str, Any] | None:
    st = s.get(Study, study_id)
    if st is None:
        return None
    snap = latest_snapshots(s, [study_id]).get(study_id)
    count = observation_counts(s, [study_id]).get(study_id, 0)
    return {
        "id": st.id,
        "family": st.family,
        "mode": st.mode,
        "profile": st.profile,
        "profile_key": st.profile_key,
        "policy": st.policy,
        "heuristic": st.heuristic,
        "campaign_id": st.campaign_id,
        "observations": int(count or 0),
        "snapshot_version": snap.version if snap else 0,
        "snapshot_observations": snap.observation_count if snap else 0,
        "last_refit": _iso(snap.created_at) if snap else None,
        "fit_seconds": _num(snap.fit_seconds) if snap else None,
    }


def hyperparameters(engine: BanditEngine) -> list[dict]:
    """The fitted GP hyper-parameters per phase, as (phase, name, value) rows in natural units:
    a length-scale per parameter (unit-cube units), the Hamming length-scale of the arm kernel,
    the noise variance (reward units squared) and the outcome standardisation."""
    out = []
    phases = [("phase 0" if engine.mode == "sequential" else "reward", engine.phase0, [])]
    if engine.phase1 is not None:
        phases.append(("phase 1 (L-BFGS)", engine.phase1, ["phase-0 reward"]))
    for label, phase, extra in phases:
        fitted = phase.gp.fitted_values() if phase.ready else None
        if fitted is None:
            continue
        names = extra + list(engine.family.param_names)
        for name, value in zip(names, fitted["lengthscales"], strict=True):
            out.append({"phase": label, "name": f"length-scale {name}", "value": f"{value:.4g}"})
        rows = (
            ("length-scale arms (Hamming)", f"{fitted['hamming_lengthscale']:.4g}"),
            ("noise variance", f"{fitted['noise']:.4g}"),
            ("reward mean / std (standardisation)", f"{fitted['y_mean']:.4g} / {fitted['y_std']:.4g}"),
        )
        out.extend({"phase": label, "name": n, "value": v} for n, v in rows)
    return out


def term_frequency(s: Session, study_id: int) -> dict[str, Any]:
    """How often each interface term (and the single-network arm) was on, per phase (an aggregate
    over at most 513 arms each)."""
    names = [*TERM_NAMES, SINGLE_NETWORK_LABEL]
    out: dict[str, Any] = {"terms": names}
    for label, column in (("adam", Observation.arm_adam), ("lbfgs", Observation.arm_lbfgs)):
        counts = s.execute(
            select(column, func.count()).where(Observation.study_id == study_id, column.is_not(None)).group_by(column)
        ).all()
        total = sum(int(n) for _, n in counts)
        if total == 0:
            continue
        on = np.zeros(len(names))
        for bits, n in counts:
            on += np.array([int(b) for b in bits.ljust(len(names), "0")]) * int(n)
        out[label] = (on / total).round(4).tolist()
        out[f"{label}_n"] = total
    return out


def reward_series(s: Session, study_id: int) -> dict[str, Any]:
    """Reward per observation in order (averaged in at most SERIES buckets of consecutive ids) and
    the accumulated error (sum of capped rel. L2)."""
    lo, hi, n = s.execute(
        select(func.min(Observation.id), func.max(Observation.id), func.count()).where(Observation.study_id == study_id)
    ).one()
    if not n:
        return {"round": [], "reward": [], "reward_min": [], "reward_max": [], "accumulated_error": []}
    width = max(1, math.ceil((hi - lo + 1) / SERIES))
    bucket = ((Observation.id - lo) // width).label("b") if width > 1 else Observation.id.label("b")
    err = case(
        (Observation.status == "diverged", ERROR_CAP),
        (Observation.rel_l2.is_(None), ERROR_CAP),
        (Observation.rel_l2 > ERROR_CAP, ERROR_CAP),
        else_=Observation.rel_l2,
    )
    rows = s.execute(
        select(
            bucket,
            func.count(),
            func.avg(Observation.reward),
            func.min(Observation.reward),
            func.max(Observation.reward),
            func.sum(err),
        )
        .where(Observation.study_id == study_id)
        .group_by(bucket)
        .order_by(bucket)
    ).all()
    rounds, mean, low, high, acc, seen, total = [], [], [], [], [], 0, 0.0
    for _, count, avg, mn, mx, err_sum in rows:
        seen += int(count)
        total += float(err_sum or 0.0)
        rounds.append(seen)
        mean.append(_num(avg))
        low.append(_num(mn))
        high.append(_num(mx))
        acc.append(round(total, 6))
    return {
        "round": rounds,
        "reward": mean,
        "reward_min": low,
        "reward_max": high,
        "accumulated_error": acc,
        "bucket": width,
    }


def observations_page(s: Session, study_id: int, before: int | None) -> dict[str, Any]:
    q = select(Observation).where(Observation.study_id == study_id).order_by(Observation.id.desc()).limit(PAGE + 1)
    if before is not None:
        q = q.where(Observation.id < before)
    rows = s.scalars(q).all()
    return {
        "rows": [observation_row(o) for o in rows[:PAGE]],
        "next_before": rows[PAGE - 1].id if len(rows) > PAGE else None,
    }


def observation_row(o: Observation) -> dict[str, Any]:
    return {
        "id": o.id,
        "task_id": o.task_id,
        "context": o.context,
        "arm_adam": terms(o.arm_adam),
        "arm_lbfgs": terms(o.arm_lbfgs),
        "reward": _num(o.reward),
        "reward_phase0": _num(o.reward_phase0),
        "rel_l2": _num(o.rel_l2),
        "status": o.status,
        "created_at": _iso(o.created_at),
    }


def iter_observations(s: Session, study_id: int) -> Iterator[dict]:
    after = 0
    while True:
        rows = s.scalars(
            select(Observation)
            .where(Observation.study_id == study_id, Observation.id > after)
            .order_by(Observation.id)
            .limit(1000)
        ).all()
        yield from (observation_row(o) for o in rows)
        if len(rows) < 1000:
            return
        after = rows[-1].id
        s.expunge_all()


class SliceError(ValueError):
    """A bad parameter slice (names the query field)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def parse_slice(family_name: str, x: str | None, y: str | None, fixed: Mapping[str, str]) -> dict[str, Any]:
    """Which parameters vary (``x``, optionally ``y``) and the values of the others (their
    defaults unless given). SliceError names the bad field."""
    family = get_family(family_name)
    names = list(family.param_names)
    x = x or names[0]
    if x not in names:
        raise SliceError("x", f"x: must be one of {', '.join(names)}")
    if y in ("", None):
        y = None
    elif y not in names or y == x:
        raise SliceError("y", f"y: must be another of {', '.join(names)}")
    values = {}
    for p in family.params:
        if p.name in (x, y):
            continue
        raw = fixed.get(p.name)
        value = p.default
        if raw not in (None, ""):
            try:
                value = float(raw)
            except ValueError:
                raise SliceError(p.name, f"{p.name}: not a number: {raw!r}") from None
            if not (p.lo <= value <= p.hi) or not math.isfinite(value):
                raise SliceError(p.name, f"{p.name}: must lie in [{p.lo}, {p.hi}]")
        values[p.name] = value
    return {"x": x, "y": y, "fixed": values}


def landscape(engine: BanditEngine, cut: Mapping[str, Any], top: int = 5) -> dict[str, Any]:
    """The posterior over a slice: lines (one parameter) or heatmaps (two); errors = 10^-reward."""
    family = engine.family
    params = {p.name: p for p in family.params}
    px = params[cut["x"]]
    n = GRID_POINTS if cut["y"] else LINE_POINTS
    xs = np.linspace(px.lo, px.hi, n)
    if cut["y"] is None:
        contexts = [{**cut["fixed"], px.name: float(v)} for v in xs]
        land = engine.landscape(contexts, top)
        mean, std = land.mean.numpy(), land.std.numpy()
        return {
            "kind": "lines",
            "x_name": px.name,
            "x": xs.round(6).tolist(),
            "arms": land.arms,
            "error": (10**-mean).T.tolist(),
            "error_low": (10 ** -(mean + 1.96 * std)).T.tolist(),
            "error_high": (10 ** -(mean - 1.96 * std)).T.tolist(),
            "best": land.best,
            "best_error": (10 ** -land.best_mean.numpy()).tolist(),
            "fixed": cut["fixed"],
        }
    py = params[cut["y"]]
    ys = np.linspace(py.lo, py.hi, n)
    contexts = [{**cut["fixed"], px.name: float(a), py.name: float(b)} for b in ys for a in xs]
    land = engine.landscape(contexts, top)
    best_names = list(dict.fromkeys(land.best))
    code = np.array([best_names.index(b) for b in land.best]).reshape(n, n)
    return {
        "kind": "heatmap",
        "x_name": px.name,
        "y_name": py.name,
        "x": xs.round(6).tolist(),
        "y": ys.round(6).tolist(),
        "log10_best_error": (-land.best_mean.numpy()).reshape(n, n).round(4).tolist(),
        "best_code": code.tolist(),
        "best_arms": best_names,
        "best": np.array(land.best, dtype=object).reshape(n, n).tolist(),
        "fixed": cut["fixed"],
    }


# ---- campaigns -------------------------------------------------------------------------------------
def campaign_charts(rows: list) -> dict[str, Any]:
    """A campaign's figures from its round rows: accumulated online error and reward per round for
    each heuristic, test errors, term frequency."""
    heuristics = list(dict.fromkeys(r.heuristic for r in rows))
    out: dict[str, Any] = {"heuristics": heuristics, "accumulated": {}, "reward": {}, "test": {}, "terms": {}}
    names = [*TERM_NAMES, SINGLE_NETWORK_LABEL]
    out["term_names"] = names
    for h in heuristics:
        online = [r for r in rows if r.heuristic == h and r.stage != "test"]
        test = [r for r in rows if r.heuristic == h and r.stage == "test"]
        out["accumulated"][h] = {
            "round": [r.round for r in online],
            "error": np.cumsum([outcome_error(r.rel_l2, r.status) for r in online]).round(6).tolist(),
        }
        out["reward"][h] = {"round": [r.round for r in online], "reward": [_num(r.reward) for r in online]}
        out["test"][h] = [outcome_error(r.rel_l2, r.status) for r in test]
        chosen = [r for r in online if r.stage == "online"]
        if chosen:
            on = np.zeros(len(names))
            for r in chosen:
                arm = set(r.arm.split(",")) if r.arm not in ("none", "") else set()
                on += np.array([name in arm for name in names], dtype=float)
            out["terms"][h] = (on / len(chosen)).round(4).tolist()
    return out


def campaign_state(s: Session, campaign_id: int) -> dict[str, Any] | None:
    camp = s.get(Campaign, campaign_id)
    if camp is None:
        return None
    return {
        "id": camp.id,
        "name": camp.name,
        "family": camp.family,
        "state": camp.state,
        "step": camp.step,
        "steps": camp.steps,
        "config": camp.config,
        "error": camp.error,
        "created_at": _iso(camp.created_at),
        "finished_at": _iso(camp.finished_at),
        "tasks": queue(s, campaign_id),
    }


def campaign_page(s: Session, before: int | None) -> dict[str, Any]:
    q = select(Campaign).order_by(Campaign.id.desc()).limit(PAGE + 1)
    if before is not None:
        q = q.where(Campaign.id < before)
    rows = s.scalars(q).all()
    return {
        "rows": [
            {
                "id": c.id,
                "name": c.name,
                "family": c.family,
                "state": c.state,
                "step": c.step,
                "steps": c.steps,
                "heuristics": ", ".join(c.config.get("heuristics", [])),
                "created_at": _iso(c.created_at),
                "finished_at": _iso(c.finished_at),
            }
            for c in rows[:PAGE]
        ],
        "next_before": rows[PAGE - 1].id if len(rows) > PAGE else None,
    }

"""What the dashboard shows: the store's bounded reports (``metalic.store.reports``) made into
JSON-ready values (labels for arms, ISO times, finite numbers or None), and the posterior over a
parameter slice from a study's engine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import numpy as np

from metalic.arms import SWITCHES, Arm
from metalic.bandit.engine import BanditEngine
from metalic.campaign import CampaignConfig, RoundRow, switch_frequency
from metalic.conditions import TERM_NAMES
from metalic.families import get_family
from metalic.pinn.evaluate import outcome_error
from metalic.store import campaigns as campaign_store
from metalic.store import reports
from metalic.store import studies as study_store
from metalic.store.models import TASK_STATES
from metalic.store.records import CampaignRecord, ObservationRecord, TaskRecord
from metalic.store.studies import StudySummary
from metalic.store.tasks import counts_by_state
from metalic.store.workers import is_alive

PAGE = 50  # rows of a table page
SERIES = 300  # points of a per-round series (longer series are averaged in buckets)
PROGRESS = 2000  # loss points sent at most per request
LINE_POINTS = 60  # parameter points along one parameter
ANALYSIS = 2000  # latest observations behind a study's history, slices and parallel coordinates
MEDIAN_WINDOW = 15  # observations in the history's running median
GRID_POINTS = 24  # parameter points per axis of a two-parameter heatmap


def _label(arm) -> str | None:
    return None if arm is None else arm.label


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat(sep=" ", timespec="seconds")


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# ---- overview -------------------------------------------------------------------------------------
def queue(store, campaign_id: int | None = None) -> dict[str, int]:
    """Tasks by state, every state present (of one campaign, or of all)."""
    counts = counts_by_state(store, campaign_id)
    return {state: counts.get(state, 0) for state in TASK_STATES}


def study_row(summary: StudySummary) -> dict[str, Any]:
    st, snap = summary.study, summary.snapshot
    return {
        "id": st.id,
        "family": st.family,
        "mode": st.mode,
        "profile": st.profile_key,
        "heuristic": st.heuristic or st.policy,
        "observations": summary.observations,
        "snapshot_version": snap.version if snap else 0,
        "last_refit": _iso(snap.created_at) if snap else None,
    }


def studies(store, campaign_id: int | None = None, limit: int = 100) -> list[dict]:
    """Service studies (or one campaign's) with observation counts and their latest snapshot."""
    return [study_row(st) for st in study_store.list_studies(store, campaign_id=campaign_id, limit=limit)]


def workers(store, stale_seconds: float) -> list[dict]:
    """Trainers and dispatchers seen in the last hour, not stopped (at most 200)."""
    return worker_rows(*reports.workers_with_batches(store), stale_seconds)


def worker_rows(now: datetime, rows: list, stale_seconds: float) -> list[dict]:
    return [
        {
            "id": w.id,
            "kind": w.kind,
            "host": w.host,
            "device": w.device,
            "state": w.state,
            "current_batch": w.current_batch,
            "batch_size": size,
            "last_seen": _iso(w.last_seen),
            "seconds_ago": round((now - w.last_seen).total_seconds(), 1),
            "alive": is_alive(w, now, stale_seconds),
        }
        for w, size in rows
    ]


def overview(store, stale_seconds: float, hourly: reports.HourlyCounts | None = None) -> dict[str, Any]:
    day = reports.overview(store, hourly=hourly)
    hours, per_hour = day.hours, day.per_hour
    return {
        "now": _iso(day.now),
        "queue": {state: day.queue.get(state, 0) for state in TASK_STATES},
        "throughput": {
            "hours": hours,
            "succeeded": [per_hour[h]["succeeded"] for h in hours],
            "failed": [per_hour[h]["failed"] for h in hours],
            "cancelled": [per_hour[h]["cancelled"] for h in hours],
            "finished_last_hour": day.finished_last_hour,
            "finished_last_day": sum(sum(c.values()) for c in per_hour.values()),
            "batches_last_day": day.batches,
            "mean_batch_size": _num(day.mean_batch_size),
            "training_seconds_last_day": _num(day.training_seconds),
        },
        "studies": [study_row(st) for st in day.studies],
        "workers": worker_rows(day.now, day.workers, stale_seconds),
        "failed": [
            {"id": i, "family": f, "error": (e or "")[:200], "finished_at": _iso(t)} for i, f, e, t in day.failed
        ],
        "campaigns": [
            {"id": i, "family": f, "state": st, "step": a, "steps": b, "created_at": _iso(t)}
            for i, f, st, a, b, t in day.campaigns
        ],
        "timeline": timeline(day.timeline, day.now),
    }


def timeline(rows: list[tuple], now: datetime) -> dict[str, list]:
    """The latest batches on their trainers (a Gantt chart of trainer use): one bar per batch from
    its start to its end (to now while it runs)."""
    return {
        "worker": [w or "?" for w, *_ in rows],
        "start": [_iso(start) for _, start, *_ in rows],
        "ms": [round(((end or now) - start).total_seconds() * 1000) for _, start, end, *_ in rows],
        "runs": [size for *_, size, _, _ in rows],
        "family": [family for *_, family, _ in rows],
        "state": [state for *_, state in rows],
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


def task_row(t: TaskRecord) -> dict[str, Any]:
    progress = None
    if t.progress_phase is not None:
        progress = f"{t.progress_phase} {t.progress_iteration}/{t.progress_total}"
    return {
        "id": t.id,
        "family": t.family,
        "params": t.request.get("params", {}),
        "state": t.state,
        "arm_adam": _label(t.arm_adam),
        "arm_lbfgs": _label(t.arm_lbfgs),
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


def task_page(
    store, state: str | None, family: str | None, campaign_id: int | None, before: int | None,
    rows: reports.RowFilter = reports.ALL_ROWS, offset: int = 0,
) -> dict:  # fmt: skip
    """One page of tasks (newest first, or by error), the next page's start and each state's count."""
    found, following, counts = reports.task_page(store, state, family, campaign_id, before, PAGE, rows, offset)
    return {
        "rows": [task_row(t) for t in found],
        "next_before": following,
        "queue": {st: counts.get(st, 0) for st in TASK_STATES},
    }


def iter_tasks(
    store, state: str | None, family: str | None, campaign_id: int | None, rows: reports.RowFilter = reports.ALL_ROWS
) -> Iterator[dict]:
    """Every task of a filter, newest first, streamed (CSV downloads)."""
    return (task_row(t) for t in reports.iter_tasks(store, state, family, campaign_id, rows))


def task_detail(store, task_id: int, since: int = 0) -> dict[str, Any] | None:
    """A task's state and the loss points after point id ``since`` (the latest attempt's)."""
    found = reports.task_progress(store, task_id, since, PROGRESS)
    if found is None:
        return None
    t, points = found
    row = task_row(t)
    result = t.result or {}
    outcome = result.get("outcome") or {}
    reward_adam = result.get("reward_adam", result.get("reward_phase0"))
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
            "lbfgs_rejected": outcome.get("lbfgs_rejected", 0),
            "reward_adam": _num(reward_adam),
            "mode": t.request.get("mode"),
        }
    )
    return {
        "task": row,
        "points": {
            "id": [p[0] for p in points],
            "phase": [p[1] for p in points],
            "iteration": [p[2] for p in points],
            "loss": [_num(p[3]) for p in points],
        },
        "cursor": points[-1][0] if points else since,
        "over_time": outcome.get("error_over_time"),
        "causal": outcome.get("causal"),
    }


# ---- studies ----------------------------------------------------------------------------------------
def study_meta(store, study_id: int) -> dict[str, Any] | None:
    found = study_store.list_studies(store, study_id=study_id)
    if not found:
        return None
    st, snap = found[0].study, found[0].snapshot
    return {
        "id": st.id,
        "family": st.family,
        "mode": st.mode,
        "profile": st.profile,
        "profile_key": st.profile_key,
        "policy": st.policy,
        "heuristic": st.heuristic,
        "campaign_id": st.campaign_id,
        "prior": st.prior,
        "prior_study": study_store.study_of_prior(st.prior),  # (id, version) when it stands on a study
        "observations": found[0].observations,
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
    phases = [("Adam phase" if engine.mode == "sequential" else "reward", engine.adam, [])]
    if engine.lbfgs is not None:
        phases.append(("L-BFGS phase", engine.lbfgs, ["Adam-phase reward"]))
    for label, phase, extra in phases:
        fitted = phase.predictor.fitted_values() if phase.ready else None
        if fitted is None:
            continue
        names = extra + list(engine.family.param_names)
        for name, value in zip(names, fitted["lengthscales"], strict=True):
            out.append({"phase": label, "name": f"length-scale {name}", "value": f"{value:.4g}"})
        if fitted.get("arm_variances"):  # the additive term kernel: how much each term's own effect varies
            v_h, v_0, *v_terms = fitted["arm_variances"]
            out.append(
                {"phase": label, "name": "arm kernel variance: Hamming / constant", "value": f"{v_h:.4g} / {v_0:.4g}"}
            )
            out.extend(
                {"phase": label, "name": f"arm kernel variance: {term}", "value": f"{v:.4g}"}
                for term, v in zip(TERM_NAMES, v_terms, strict=True)
            )
        rows = (
            ("length-scale arms (Hamming)", f"{fitted['hamming_lengthscale']:.4g}"),
            ("noise variance", f"{fitted['noise']:.4g}"),
            ("reward mean / std (standardisation)", f"{fitted['y_mean']:.4g} / {fitted['y_std']:.4g}"),
        )
        out.extend({"phase": label, "name": n, "value": v} for n, v in rows)
    return out


def analysis(store, study_id: int, family_name: str) -> dict[str, Any]:
    """The study's latest ``ANALYSIS`` observations, oldest first, for its analysis views: the
    error per observation (10^-reward, the capped error the bandit saw) with the best so far and
    a running median over ``MEDIAN_WINDOW``; each parameter's values (slice plots, parallel
    coordinates); the arm of each."""
    rows, _ = reports.observation_page(store, study_id, None, ANALYSIS)
    rows = rows[::-1]
    error = np.array([10.0**-o.reward for o in rows])
    half = MEDIAN_WINDOW // 2
    median = [float(np.median(error[max(0, i - half) : i + half + 1])) for i in range(len(error))]
    names = get_family(family_name).param_names
    labels = [_label(o.arm_adam) for o in rows]
    arms = list(dict.fromkeys(labels))  # each arm's label once; observations carry its position
    position = {a: i for i, a in enumerate(arms)}
    return {
        "count": len(rows),
        "error": _sig(error),
        "best": _sig(np.minimum.accumulate(error)) if len(error) else [],
        "median": _sig(np.array(median)),
        "arms": arms,
        "arm_code": [position[a] for a in labels],
        "params": {n: _sig(np.array([o.params.get(n) for o in rows], dtype=float)) for n in names},
    }


def importance(engine: BanditEngine) -> dict[str, Any] | None:
    """Parameter importance from the fitted GP: 1 / length-scale of each PDE parameter (unit-cube
    units; a short length-scale means the reward changes fast along it), normalised to sum 1."""
    fitted = engine.adam.predictor.fitted_values() if engine.adam.ready else None
    if fitted is None:
        return None
    inverse = 1.0 / np.array(fitted["lengthscales"][-len(engine.family.param_names) :])
    return {"names": list(engine.family.param_names), "importance": _sig(inverse / inverse.sum())}


def _sig(values: np.ndarray) -> list[float]:
    """Five significant digits (a chart's resolution; keeps the JSON small)."""
    return [float(f"{v:.5g}") for v in values]


def term_frequency(store, study_id: int) -> dict[str, Any]:
    """How often each interface term (and the single-network arm) was on, per phase."""
    out: dict[str, Any] = {"terms": list(SWITCHES)}
    for phase, counts in reports.arm_counts(store, study_id).items():
        total = sum(n for _, n in counts)
        if total == 0:
            continue
        on = np.zeros(len(SWITCHES))
        for arm, n in counts:
            on += np.array(arm.switches) * n
        out[phase] = (on / total).round(4).tolist()
        out[f"{phase}_n"] = total
    return out


def reward_series(store, study_id: int) -> dict[str, Any]:
    """Reward per observation in order (averaged in at most SERIES buckets of consecutive ids) and
    the accumulated error (sum of capped rel. L2)."""
    buckets, width = reports.reward_buckets(store, study_id, SERIES)
    if not buckets:
        return {"round": [], "reward": [], "reward_min": [], "reward_max": [], "accumulated_error": []}
    rounds, seen, acc, total = [], 0, [], 0.0
    for b in buckets:
        seen += b.count
        total += b.error_sum
        rounds.append(seen)
        acc.append(round(total, 6))
    return {
        "round": rounds,
        "reward": [_num(b.reward_mean) for b in buckets],
        "reward_min": [_num(b.reward_min) for b in buckets],
        "reward_max": [_num(b.reward_max) for b in buckets],
        "accumulated_error": acc,
        "bucket": width,
    }


def observations_page(
    store, study_id: int, before: int | None, rows: reports.RowFilter = reports.ALL_ROWS, offset: int = 0
) -> dict[str, Any]:
    found, following = reports.observation_page(store, study_id, before, PAGE, rows, offset)
    return {"rows": [observation_row(o) for o in found], "next_before": following}


def observation_row(o: ObservationRecord) -> dict[str, Any]:
    return {
        "id": o.id,
        "task_id": o.task_id,
        "params": o.params,
        "arm_adam": _label(o.arm_adam),
        "arm_lbfgs": _label(o.arm_lbfgs),
        "reward": _num(o.reward),
        "reward_adam": _num(o.reward_adam),
        "rel_l2": _num(o.rel_l2),
        "status": o.status,
        "created_at": _iso(o.created_at),
    }


def iter_observations(store, study_id: int) -> Iterator[dict]:
    return (observation_row(o) for o in reports.iter_observations(store, study_id))


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


def error_range(log10_errors: list[float]) -> list[float]:
    """[low, high] of log10 errors for a colour scale, at least 0.1 decades wide. The heatmap's
    colours span the study's observed range, so a colour step means what it means in the data (not
    a rescaled 0.3%)."""
    lo, hi = (min(log10_errors), max(log10_errors)) if log10_errors else (-3.0, 0.0)
    if hi - lo < 0.1:  # one value, or nearly: a range of 0.1 decades around it
        lo, hi = (lo + hi) / 2 - 0.05, (lo + hi) / 2 + 0.05
    return [round(lo, 4), round(hi, 4)]


# ---- campaigns -------------------------------------------------------------------------------------
def campaign_charts(rows: list[RoundRow]) -> dict[str, Any]:
    """A campaign's figures from its round rows: accumulated online error and reward per round for
    each policy, test errors, term frequency."""
    policies = list(dict.fromkeys(r.policy for r in rows))
    out: dict[str, Any] = {"heuristics": policies, "accumulated": {}, "reward": {}, "test": {}, "terms": {}}
    out["term_names"] = list(SWITCHES)
    for p in policies:
        online = [r for r in rows if r.policy == p and r.stage != "test"]
        test = [r for r in rows if r.policy == p and r.stage == "test"]
        out["accumulated"][p] = {
            "round": [r.round for r in online],
            "error": np.cumsum([outcome_error(r.rel_l2, r.status) for r in online]).round(6).tolist(),
        }
        out["reward"][p] = {"round": [r.round for r in online], "reward": [_num(r.reward) for r in online]}
        out["test"][p] = [outcome_error(r.rel_l2, r.status) for r in test]
        chosen = [Arm.parse(r.arm) for r in online if r.stage == "online"]
        if chosen:
            out["terms"][p] = np.round(switch_frequency(chosen), 4).tolist()
    return out


def campaign_row(c: CampaignRecord) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "family": c.family,
        "state": c.state,
        "step": c.step,
        "steps": c.steps,
        "heuristics": ", ".join(CampaignConfig.from_dict(c.config).policies),
        "created_at": _iso(c.created_at),
        "finished_at": _iso(c.finished_at),
    }


def campaign_state(store, campaign_id: int) -> dict[str, Any] | None:
    camp = campaign_store.get(store, campaign_id)
    if camp is None:
        return None
    return campaign_row(camp) | {
        "config": CampaignConfig.from_dict(camp.config).to_dict(),  # today's names, also for older rows
        "error": camp.error,
        "tasks": queue(store, campaign_id),
    }


def campaign_page(store, before: int | None) -> dict[str, Any]:
    rows = campaign_store.list_campaigns(store, PAGE + 1, before)
    return {
        "rows": [campaign_row(c) for c in rows[:PAGE]],
        "next_before": rows[PAGE - 1].id if len(rows) > PAGE else None,
    }

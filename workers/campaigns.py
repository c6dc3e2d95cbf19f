"""Campaigns as tasks: the campaign plan executed step by step through the task queue.

``campaigns.step`` counts the steps submitted. ``advance`` waits until the tasks of the last
submitted step have all finished, then in one transaction: the heuristics' engines (restored from
their snapshots) observe that step and are refitted, the next step's trainings are planned with
them and queued as tasks, the engines are written as the next snapshot version, and the step
counter moves on (a guarded update). A campaign killed at any point therefore resumes exactly
where it was: finished trainings are kept, the step in flight is requeued by the dispatcher, and
the same engines plan the same arms.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select, update

from metalic.bandit.campaign import SINGLE_DOMAIN, CampaignConfig, CampaignPlan, PlannedRun, RoundRow
from metalic.bandit.engine import BanditEngine
from metalic.jobs import SolveResult
from metalic.store.models import CANCELLED, FAILED, FINISHED, RUNNING, SUCCEEDED, Campaign, Study, Task, utc_now
from metalic.store.studies import add_snapshot, arm_of_bits, bits, get_or_create_study, latest_snapshot
from metalic.store.tasks import new_task

log = logging.getLogger(__name__)


def create(store, config: CampaignConfig, name: str | None = None, owner: str | None = None) -> Campaign:
    """A new campaign with one study per group (shared warm-up, each heuristic). Its first step is
    queued by the next ``advance``."""
    plan = CampaignPlan(config)  # validates
    with store.write() as s:
        camp = Campaign(
            name=name,
            owner=owner,
            family=config.family,
            config=config.to_dict(),
            state=RUNNING,
            step=0,
            steps=len(plan.steps()),
        )
        s.add(camp)
        s.flush()
        for group in plan.groups():
            request = config.request({}, (0,) * 9, seed=0, single_domain=group == SINGLE_DOMAIN)
            get_or_create_study(
                s,
                key=f"campaign/{camp.id}/{group}",
                family=config.family,
                mode=request.mode,
                profile_key=request.profile_key(),
                profile=request.profile(),
                policy=group,
                campaign_id=camp.id,
                heuristic=group,
            )
        return camp


def advance_all(store) -> bool:
    """Advance every running campaign; True when one of them moved."""
    with store.read() as s:
        ids = s.scalars(select(Campaign.id).where(Campaign.state == RUNNING).order_by(Campaign.id)).all()
    moved = False
    for cid in ids:
        try:
            moved |= advance(store, cid)
        except Exception as exc:  # a campaign that cannot go on fails; the others go on
            log.exception("campaign %s failed", cid)
            _finish(store, cid, FAILED, f"{type(exc).__name__}: {exc}")
            moved = True
    return moved


def _finish(store, campaign_id: int, state: str, error: str | None = None) -> None:
    with store.write() as s:
        s.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id, Campaign.state == RUNNING)
            .values(state=state, error=error, finished_at=utc_now())
        )


def _studies(session, campaign_id: int) -> dict[str, Study]:
    rows = session.scalars(select(Study).where(Study.campaign_id == campaign_id)).all()
    return {st.heuristic: st for st in rows}


def planned_run(task: Task, group: str) -> PlannedRun:
    req = task.request
    return PlannedRun(
        group=group,
        stage=task.campaign_stage,
        round=task.campaign_round,
        context=req["params"],
        seed=req["seed"],
        arm_adam=arm_of_bits(task.arm_adam),
        arm_lbfgs=arm_of_bits(task.arm_lbfgs),
        lbfgs_policy=task.lbfgs_policy,
        single_domain=group == SINGLE_DOMAIN,
    )


def _step_tasks(session, campaign_id: int, step: int) -> Sequence[Task]:
    return session.scalars(
        select(Task).where(Task.campaign_id == campaign_id, Task.campaign_step == step).order_by(Task.id)
    ).all()


def advance(store, campaign_id: int) -> bool:
    """Submit the campaign's next step once its current one has finished (see the module
    docstring). True when something changed."""
    with store.read() as s:
        camp = s.get(Campaign, campaign_id)
        if camp is None or camp.state != RUNNING:
            return False
        k = camp.step
        config = CampaignConfig.from_dict(camp.config)
        studies = _studies(s, campaign_id)
        by_study = {st.id: g for g, st in studies.items()}
        previous = _step_tasks(s, campaign_id, k - 1) if k > 0 else []
        if any(t.state not in FINISHED for t in previous):
            return False
        bad = [t for t in previous if t.state != SUCCEEDED]
        snaps = {g: latest_snapshot(s, st.id) for g, st in studies.items()}
    if bad:
        state = CANCELLED if all(t.state == CANCELLED for t in bad) else FAILED
        _finish(store, campaign_id, state, f"task {bad[0].id} {bad[0].state}: {bad[0].error}")
        return True
    plan = CampaignPlan(config)
    engines = plan.new_engines()
    for g in engines:
        if snaps.get(g) is not None:
            engines[g] = BanditEngine.from_snapshot(snaps[g].engine)
    if previous:
        runs = [planned_run(t, by_study[t.study_id]) for t in previous]
        results = [SolveResult.from_summary(t.result) for t in previous]
        plan.observe(engines, runs, results)
    steps = plan.steps()
    next_runs = plan.runs(steps[k], engines) if k < len(steps) else []
    with store.write() as s:
        guard = (Campaign.id == campaign_id, Campaign.step == k, Campaign.state == RUNNING)
        values = {"step": k + 1} if k < len(steps) else {"state": SUCCEEDED, "finished_at": utc_now()}
        if s.execute(update(Campaign).where(*guard).values(**values)).rowcount != 1:
            return False  # another stepper got there first
        owner = s.get(Campaign, campaign_id).owner
        for g, engine in engines.items():
            add_snapshot(s, studies[g], engine, None, 0.0, version=k + 1)
        for run in next_runs:
            training = run.training(config)
            task = new_task(
                training.request,
                studies[run.group].id,
                owner=owner,
                campaign_id=campaign_id,
                campaign_step=k,
                campaign_stage=run.stage,
                campaign_round=run.round,
            )
            task.arm_adam, task.arm_lbfgs = bits(run.arm_adam), bits(run.arm_lbfgs)
            task.lbfgs_policy = run.lbfgs_policy
            task.arm_policy = run.group
            s.add(task)
    return True


def rows(store, campaign_id: int) -> list[RoundRow]:
    """The campaign's rounds so far, from its succeeded tasks (as ``run_campaign`` returns them)."""
    with store.read() as s:
        camp = s.get(Campaign, campaign_id)
        plan = CampaignPlan(CampaignConfig.from_dict(camp.config))
        by_study = {st.id: g for g, st in _studies(s, campaign_id).items()}
        done = s.scalars(
            select(Task).where(Task.campaign_id == campaign_id, Task.state == SUCCEEDED).order_by(Task.id)
        ).all()
        runs = [planned_run(t, by_study[t.study_id]) for t in done]
        results = [SolveResult.from_summary(t.result) for t in done]
    return plan.order(plan.rows(runs, results))


def engines(store, campaign_id: int) -> dict[str, BanditEngine]:
    """Each heuristic's engine as of its latest snapshot."""
    with store.read() as s:
        out = {}
        for g, st in _studies(s, campaign_id).items():
            snap = latest_snapshot(s, st.id)
            if snap is not None and g in CampaignConfig.from_dict(s.get(Campaign, campaign_id).config).heuristics:
                out[g] = BanditEngine.from_snapshot(snap.engine)
    return out


def find(store, name: str) -> Campaign | None:
    with store.read() as s:
        return s.scalar(select(Campaign).where(Campaign.name == name))


def get(store, campaign_id: int) -> Campaign | None:
    with store.read() as s:
        return s.get(Campaign, campaign_id)


def cancel(store, campaign_id: int) -> None:
    """Stop a campaign: its queued and running tasks are cancelled."""
    with store.write() as s:
        s.execute(
            update(Task)
            .where(Task.campaign_id == campaign_id, Task.state.in_(("queued", "running")))
            .values(state=CANCELLED, finished_at=utc_now(), error="campaign cancelled")
        )
        s.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id, Campaign.state == RUNNING)
            .values(state=CANCELLED, finished_at=utc_now(), error="cancelled")
        )

"""The campaign stepper: the campaign plan executed step by step through the task queue.

``campaigns.step`` counts the steps submitted. ``advance`` waits until the tasks of the last
submitted step have all finished, then the policies' engines (restored from their snapshots)
observe that step and are refitted, the next step's runs are planned with them, and
``store.campaigns.submit_step`` queues them, writes the engines as the next snapshot version and
moves the step counter on, in one guarded transaction. A campaign killed at any point therefore
resumes exactly where it was: finished trainings are kept, the step in flight is requeued by the
dispatcher, and the same engines plan the same arms.
"""

from __future__ import annotations

import logging

from metalic.bandit.engine import BanditEngine
from metalic.campaign import WARMUP, CampaignPlan, CampaignRun, RoundRow
from metalic.jobs import SolveResult
from metalic.store import campaigns as campaign_store
from metalic.store.models import CANCELLED, FAILED, FINISHED, SUCCEEDED
from metalic.store.records import TaskRecord

log = logging.getLogger(__name__)


def advance_all(store) -> bool:
    """Advance every running campaign; True when one of them moved."""
    moved = False
    for cid in campaign_store.running_ids(store):
        try:
            moved |= advance(store, cid)
        except Exception as exc:  # a campaign that cannot go on fails; the others go on
            log.exception("campaign %s failed", cid)
            campaign_store.finish(store, cid, FAILED, f"{type(exc).__name__}: {exc}")
            moved = True
    return moved


def campaign_run(task: TaskRecord, owner: str, plan: CampaignPlan) -> CampaignRun:
    """The campaign run a task trained."""
    return CampaignRun(
        owner=owner,
        stage=task.campaign_stage,
        round=task.campaign_round,
        params=task.params,
        seed=task.request["seed"],
        arm_adam=task.arm_adam,
        arm_lbfgs=task.arm_lbfgs,
        lbfgs_policy=task.lbfgs_policy,
        single_domain=owner != WARMUP and not plan.policies[owner].has_engine,
    )


def advance(store, campaign_id: int) -> bool:
    """Submit the campaign's next step once its current one has finished (see the module
    docstring). True when something changed."""
    state = campaign_store.step_state(store, campaign_id)
    if state is None or any(t.state not in FINISHED for t in state.previous):
        return False
    bad = [t for t in state.previous if t.state != SUCCEEDED]
    if bad:
        ended = CANCELLED if all(t.state == CANCELLED for t in bad) else FAILED
        campaign_store.finish(store, campaign_id, ended, f"task {bad[0].id} {bad[0].state}: {bad[0].error}")
        return True
    plan = CampaignPlan(state.config)
    engines = plan.new_engines()
    for who in engines:
        if who in state.engines:
            engines[who] = BanditEngine.from_snapshot(state.engines[who])
    if state.previous:
        runs = [campaign_run(t, state.owner_of(t), plan) for t in state.previous]
        plan.observe(engines, runs, [SolveResult.from_summary(t.result) for t in state.previous])
    k, steps = state.campaign.step, plan.steps()
    next_runs = plan.runs(steps[k], engines) if k < len(steps) else []
    return campaign_store.submit_step(store, campaign_id, k, k >= len(steps), engines, next_runs, state.config)


def rows(store, campaign_id: int) -> list[RoundRow]:
    """The campaign's rounds so far, from its succeeded tasks (as ``run_campaign`` returns them)."""
    config, done = campaign_store.succeeded_tasks(store, campaign_id)
    plan = CampaignPlan(config)
    runs = [campaign_run(t, who, plan) for who, t in done]
    return plan.order(plan.rows(runs, [SolveResult.from_summary(t.result) for _, t in done]))


def engines(store, campaign_id: int) -> dict[str, BanditEngine]:
    """Each policy's engine as of its latest snapshot."""
    return {who: BanditEngine.from_snapshot(e) for who, e in campaign_store.latest_engines(store, campaign_id).items()}

"""Campaigns in the store: the campaign row, one study per owner of runs (the shared warm-up and
each policy), and the step-by-step submission of its runs as tasks.

``submit_step`` is the one guarded write of a campaign: the step counter moves from k to k + 1
(or the campaign succeeds) only if it is still at k, and in the same transaction the engines are
written as snapshot version k + 1 and the next step's runs are queued. A second stepper that
raced it changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select, update

from metalic.bandit.engine import BanditEngine
from metalic.campaign import CampaignConfig, CampaignPlan, CampaignRun
from metalic.store.models import CANCELLED, RUNNING, SUCCEEDED, CampaignRow, StudyRow, TaskRow, utc_now
from metalic.store.records import CampaignRecord, StudyRecord, TaskRecord, record
from metalic.store.studies import add_snapshot, get_or_create_study, latest_snapshot
from metalic.store.tasks import cancel_campaign_tasks, new_task


def create(store, config: CampaignConfig, name: str | None = None, owner: str | None = None) -> CampaignRecord:
    """A new campaign with one study per owner of runs. Its first step is queued by the stepper."""
    plan = CampaignPlan(config)  # validates
    with store.write() as s:
        camp = CampaignRow(name=name, owner=owner, family=config.family, config=config.to_dict(), state=RUNNING,
                           step=0, steps=len(plan.steps()))  # fmt: skip
        s.add(camp)
        s.flush()
        for who in plan.owners():
            request = plan.example_request(who)
            learner = who in plan.policies and plan.policies[who].has_engine
            learns = {"learns": list(config.learns)} if learner and config.learns else {}
            if learner and config.arm_kernel != "hamming":
                learns["arm_kernel"] = config.arm_kernel
            get_or_create_study(
                s,
                key=f"campaign/{camp.id}/{who}",
                family=config.family,
                mode=request.mode,
                profile_key=request.profile_key(),
                profile={**request.profile(), **learns},  # learns: the recipe bits its engine chooses; its kernel
                policy=who,
                campaign_id=camp.id,
                heuristic=who,
                prior=config.prior if learner else None,
            )
        return record(CampaignRecord, camp)


def get(store, campaign_id: int) -> CampaignRecord | None:
    with store.read() as s:
        row = s.get(CampaignRow, campaign_id)
        return None if row is None else record(CampaignRecord, row)


def find(store, name: str) -> CampaignRecord | None:
    with store.read() as s:
        row = s.scalar(select(CampaignRow).where(CampaignRow.name == name))
        return None if row is None else record(CampaignRecord, row)


def list_campaigns(store, limit: int = 20, before: int | None = None) -> list[CampaignRecord]:
    """Newest first (ids below ``before``)."""
    q = select(CampaignRow).order_by(CampaignRow.id.desc()).limit(limit)
    if before is not None:
        q = q.where(CampaignRow.id < before)
    with store.read() as s:
        return [record(CampaignRecord, c) for c in s.scalars(q).all()]


def running_ids(store) -> list[int]:
    with store.read() as s:
        return list(s.scalars(select(CampaignRow.id).where(CampaignRow.state == RUNNING).order_by(CampaignRow.id)))


def finish(store, campaign_id: int, state: str, error: str | None = None) -> None:
    """End a running campaign (succeeded, failed or cancelled); one that already ended stays."""
    with store.write() as s:
        _finish(s, campaign_id, state, error)


def _finish(session, campaign_id: int, state: str, error: str | None) -> None:
    session.execute(
        update(CampaignRow)
        .where(CampaignRow.id == campaign_id, CampaignRow.state == RUNNING)
        .values(state=state, error=error, finished_at=utc_now())
    )


def cancel(store, campaign_id: int) -> None:
    """Stop a campaign: its queued and running tasks are cancelled."""
    with store.write() as s:
        cancel_campaign_tasks(s, campaign_id)
        _finish(s, campaign_id, CANCELLED, "cancelled")


@dataclass(frozen=True)
class StepState:
    """What the stepper needs to go from step ``campaign.step`` to the next: the config, each
    owner's study and latest engine JSON, and the tasks of the last submitted step."""

    campaign: CampaignRecord
    config: CampaignConfig
    studies: dict[str, StudyRecord]  # by owner
    engines: dict[str, Mapping]  # by owner: the latest snapshot's engine JSON
    previous: list[TaskRecord]  # the tasks of step ``campaign.step - 1``

    def owner_of(self, task: TaskRecord) -> str:
        return next(who for who, st in self.studies.items() if st.id == task.study_id)


def step_state(store, campaign_id: int) -> StepState | None:
    """None when there is no such campaign or it is not running."""
    with store.read() as s:
        camp = s.get(CampaignRow, campaign_id)
        if camp is None or camp.state != RUNNING:
            return None
        studies = _studies(s, campaign_id)
        previous = []
        if camp.step > 0:
            previous = s.scalars(
                select(TaskRow)
                .where(TaskRow.campaign_id == campaign_id, TaskRow.campaign_step == camp.step - 1)
                .order_by(TaskRow.id)
            ).all()
        snaps = {who: latest_snapshot(s, st.id) for who, st in studies.items()}
        return StepState(
            record(CampaignRecord, camp),
            CampaignConfig.from_dict(camp.config),
            {who: record(StudyRecord, st) for who, st in studies.items()},
            {who: snap.engine for who, snap in snaps.items() if snap is not None},
            [record(TaskRecord, t) for t in previous],
        )


def _studies(session, campaign_id: int) -> dict[str, StudyRow]:
    rows = session.scalars(select(StudyRow).where(StudyRow.campaign_id == campaign_id)).all()
    return {st.heuristic: st for st in rows}


def submit_step(
    store,
    campaign_id: int,
    step: int,
    last: bool,
    engines: Mapping[str, BanditEngine],
    runs: Sequence[CampaignRun],
    config: CampaignConfig,
) -> bool:
    """Move the campaign from ``step`` to ``step + 1`` (``last``: it succeeds instead), write the
    engines as snapshot ``step + 1`` and queue ``runs`` as tasks, in one transaction guarded on the
    step. False when another stepper got there first (nothing written)."""
    with store.write() as s:
        guard = (CampaignRow.id == campaign_id, CampaignRow.step == step, CampaignRow.state == RUNNING)
        values = {"state": SUCCEEDED, "finished_at": utc_now()} if last else {"step": step + 1}
        if s.execute(update(CampaignRow).where(*guard).values(**values)).rowcount != 1:
            return False
        owner = s.get(CampaignRow, campaign_id).owner
        studies = _studies(s, campaign_id)
        for who, engine in engines.items():
            add_snapshot(s, studies[who], engine, None, 0.0, version=step + 1)
        for run in runs:
            s.add(_campaign_task(run, config, studies[run.owner].id, owner, campaign_id, step))
    return True


def _campaign_task(
    run: CampaignRun, config: CampaignConfig, study_id: int, owner: str | None, campaign_id: int, step: int
) -> TaskRow:
    task = new_task(run.run(config).request, study_id, owner=owner, campaign_id=campaign_id, campaign_step=step,
                    campaign_stage=run.stage, campaign_round=run.round, arm_policy=run.owner)  # fmt: skip
    task.arm_adam = run.arm_adam.index
    task.arm_lbfgs = None if run.arm_lbfgs is None else run.arm_lbfgs.index
    task.lbfgs_policy = run.lbfgs_policy
    return task


def succeeded_tasks(store, campaign_id: int) -> tuple[CampaignConfig, list[tuple[str, TaskRecord]]] | None:
    """The campaign's config and its succeeded tasks with their owners, in order (None: no campaign)."""
    with store.read() as s:
        camp = s.get(CampaignRow, campaign_id)
        if camp is None:
            return None
        owners = {st.id: who for who, st in _studies(s, campaign_id).items()}
        done = s.scalars(
            select(TaskRow).where(TaskRow.campaign_id == campaign_id, TaskRow.state == SUCCEEDED).order_by(TaskRow.id)
        ).all()
        return CampaignConfig.from_dict(camp.config), [(owners[t.study_id], record(TaskRecord, t)) for t in done]


def latest_engines(store, campaign_id: int) -> dict[str, Mapping]:
    """Each policy's latest engine JSON (not the shared warm-up's)."""
    with store.read() as s:
        camp = s.get(CampaignRow, campaign_id)
        policies = CampaignConfig.from_dict(camp.config).policies
        out = {}
        for who, st in _studies(s, campaign_id).items():
            snap = latest_snapshot(s, st.id)
            if snap is not None and who in policies:
                out[who] = snap.engine
        return out

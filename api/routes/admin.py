"""Admin: campaigns (start, follow, cancel), studies (what each bandit has learned), workers."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.auth import Admin
from api.schemas import CampaignBody, CampaignOut, Id, Problem, StudyOut, WorkerOut
from metalic.arms import warmup_labels
from metalic.campaign import CampaignConfig, summarise
from metalic.pinn.causal import CausalSchedule
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import TrainConfig
from metalic.store import campaigns as campaign_store
from metalic.store import studies as study_store
from metalic.store import workers as worker_store
from metalic.store.records import CampaignRecord
from metalic.store.studies import StudySummary
from metalic.store.tasks import counts_by_state
from workers import campaigns

router = APIRouter(tags=["admin"], responses={401: {"model": Problem}, 403: {"model": Problem}})
NOT_FOUND = {404: {"model": Problem}}


def campaign_out(store, camp: CampaignRecord, with_summary: bool = False) -> CampaignOut:
    by_state = counts_by_state(store, camp.id)
    summary = summarise(campaigns.rows(store, camp.id)) if with_summary and camp.state == "succeeded" else None
    return CampaignOut(**asdict(camp), tasks=by_state, summary=summary)


BODY_PLACES = {
    "adam": ("budget", "adam"),
    "lbfgs": ("budget", "lbfgs"),
    "collocation": ("points", "collocation"),
    "boundary": ("points", "boundary"),
    "interface_points": ("points", "interface"),
    "heuristic": ("heuristics",),
}


def _campaign_error(exc: ValueError) -> RequestValidationError:
    """The first problem of a campaign body, at its place in the body."""
    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        field, message, kind = (e["loc"][0] if e["loc"] else "body"), e["msg"].removeprefix("Value error, "), e["type"]
    else:
        message, kind = str(exc), "value_error"
        head = message.split(":", 1)[0]
        field = head if ":" in message and " " not in head else "family"
    where = BODY_PLACES.get(field, (field,))
    return RequestValidationError([{"loc": ("body", *where), "msg": message, "type": kind}])


def create_campaign(service, body: CampaignBody, owner: str) -> CampaignRecord:
    """Validate a campaign body (RequestValidationError at the body's field) and queue it."""
    try:
        config = CampaignConfig(
            family=body.family,
            policies=tuple(body.heuristics),
            mode=body.mode,
            warmup=body.warmup,
            rounds=body.rounds,
            test=body.test,
            batch=body.batch,
            seed=body.seed,
            train=TrainConfig(
                adam=body.budget.adam,
                lbfgs=body.budget.lbfgs,
                causal=CausalSchedule(eps=body.recipe.eps),
                march=body.recipe.march,
            ),
            pinn=PinnConfig(
                n_collocation=body.points.collocation,
                n_boundary=body.points.boundary,
                n_interface=body.points.interface,
                subdomains=body.subdomains,
                causal_chunks=body.recipe.chunks,
            ),
            dtype=body.dtype,
            prior=body.prior,
            learns=tuple(body.learns),
            arm_kernel=body.arm_kernel,
            warmup_arms=warmup_labels(body.warmup_arms),
        )
        if body.recipe.causal:
            raise ValueError("recipe: a campaign's causal runs are its arms' (learns: [causal]), not every run's")
        config.validate()
        if body.warmup + body.rounds + body.test > 10_000:
            raise ValueError("warmup: warm-up, online and test rounds together are at most 10000")
    except ValueError as exc:  # pydantic's ValidationError included
        raise _campaign_error(exc) from None
    camp = campaign_store.create(service.store, config, owner=owner)
    service.wake()
    return camp


@router.post("/campaigns", status_code=202, response_model=CampaignOut, responses={422: {"model": Problem}})
def start_campaign(body: CampaignBody, who: Admin, request: Request) -> CampaignOut:
    """Start a METALIC campaign; the dispatcher runs it step by step through the task queue."""
    service = request.app.state.service
    camp = create_campaign(service, body, who.name)
    return campaign_out(service.store, camp)


@router.get("/campaigns", response_model=list[CampaignOut])
def list_campaigns(_: Admin, request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> list[CampaignOut]:
    store = request.app.state.service.store
    return [campaign_out(store, c) for c in campaign_store.list_campaigns(store, limit)]


@router.get("/campaigns/{campaign_id}", response_model=CampaignOut, responses=NOT_FOUND)
def get_campaign(campaign_id: Id, _: Admin, request: Request) -> CampaignOut:
    """Progress (steps, tasks by state) and, once finished, each heuristic's accumulated error."""
    store = request.app.state.service.store
    camp = campaign_store.get(store, campaign_id)
    if camp is None:
        raise HTTPException(404, f"no campaign {campaign_id}")
    return campaign_out(store, camp, with_summary=True)


@router.post("/campaigns/{campaign_id}/cancel", response_model=CampaignOut, responses=NOT_FOUND)
def cancel_campaign(campaign_id: Id, _: Admin, request: Request) -> CampaignOut:
    store = request.app.state.service.store
    if campaign_store.get(store, campaign_id) is None:
        raise HTTPException(404, f"no campaign {campaign_id}")
    campaign_store.cancel(store, campaign_id)
    return campaign_out(store, campaign_store.get(store, campaign_id))


def study_out(summary: StudySummary) -> StudyOut:
    snap = summary.snapshot
    return StudyOut(
        **asdict(summary.study),
        observations=summary.observations,
        snapshot_version=snap.version if snap else 0,
        last_refit=snap.created_at if snap else None,
        hyperparameters=snap.engine.get("hyperparameters") if snap else None,
    )


@router.get("/studies", response_model=list[StudyOut])
def list_studies(_: Admin, request: Request, family: str | None = None, campaigns_too: bool = False) -> list[StudyOut]:
    """Every service study (and campaign studies with ``campaigns_too``)."""
    found = study_store.list_studies(
        request.app.state.service.store, family=family, campaigns_too=campaigns_too, with_engine=True
    )
    return [study_out(st) for st in found]


@router.get("/studies/{study_id}", response_model=StudyOut, responses=NOT_FOUND)
def get_study(study_id: Id, _: Admin, request: Request) -> StudyOut:
    """Observation count, snapshot version, GP hyper-parameters and the last refit's time."""
    found = study_store.list_studies(request.app.state.service.store, study_id=study_id, with_engine=True)
    if not found:
        raise HTTPException(404, f"no study {study_id}")
    return study_out(found[0])


@router.get("/workers", response_model=list[WorkerOut])
def list_workers(_: Admin, request: Request, stopped: bool = False) -> list[WorkerOut]:
    """Trainers and dispatchers with their heartbeats (``alive`` false: stale or stopped)."""
    service = request.app.state.service
    stale = 3 * service.settings.heartbeat_seconds + 5
    now, rows = worker_store.list_workers(service.store, stopped, limit=10_000)
    return [WorkerOut(**asdict(w), alive=worker_store.is_alive(w, now, stale)) for w in rows]

"""GET /v1/families/{family}/recommendation: ranked arms, with intervals and where they come from.

The context is given as query parameters named after the family's parameters (``?nu=0.01``);
missing ones take their defaults, and a query parameter that is neither one of them nor one of the
route's is refused at its name (a misspelt parameter would otherwise answer for the default). The
budget asked about (``adam``, ``lbfgs``, ``collocation``; a solve's defaults where not given)
picks the study, and before there is one the installed prior, built nearest to it. The answer
comes from the study's latest snapshot (its engine is restored once per version and cached),
never from a fit in the request. Before a study has a snapshot it comes from the prior the study
starts from, and before there is a study from the family's installed prior built nearest to the
budget asked (``source``: ``prior``); a family with neither answers an empty ranking that says
so (``source``: ``none``), never a 404.
"""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from api.auth import User
from api.routes.families import family_or_404
from api.schemas import MAX_ID, ArmOut, Mode, Problem, RecommendationOut
from metalic import priors
from metalic.bandit.engine import R_ADAM_SCALE, RANKINGS, BanditEngine, Recommendation, prior_engine
from metalic.jobs import SolveRequest
from metalic.store import studies as study_store
from metalic.store.records import StudyRecord

DEFAULT = {k: SolveRequest.model_fields[k].default for k in priors.BUDGET_KEYS}  # a solve's budget
Budget = tuple[int | None, int | None, int | None]  # as priors.BUDGET_KEYS: Adam, L-BFGS, collocation points
router = APIRouter(tags=["recommendations"], responses={401: {"model": Problem}})


def _arm(r: Recommendation) -> ArmOut:
    return ArmOut(
        terms=r.terms,
        bits=r.arm.bits,
        recipe=list(r.arm.recipe_flags),
        predicted_error=r.predicted_error,
        error_interval=r.error_interval,
        reward_mean=r.reward_mean,
        reward_std=r.reward_std,
        observations=r.observations,
        prior_observations=r.prior_observations,
    )


def pick_study(
    store, family: str, mode: str, study_id: int | None, budget: Budget = (None, None, None)
) -> StudyRecord | None:
    """The study asked for, else the service study of (family, mode) nearest to ``budget`` (if
    given) with the most observations (None: nothing of the family and mode has been solved)."""
    if study_id is not None:
        study = study_store.get_study(store, study_id)
        if study is None or study.family != family or study.mode != mode:
            raise HTTPException(404, f"no {mode} study {study_id} of {family}")
        return study
    return study_store.pick_study(store, family, mode, dict(zip(priors.BUDGET_KEYS, budget, strict=True)))


@dataclass(frozen=True)
class Policy:
    """The engine a (family, mode, study) question is answered with, and when that was checked.
    ``source``: ``snapshot`` (the study's own, ``version``), ``prior`` (``prior`` names it) or
    ``none``."""

    checked: float
    study: StudyRecord | None
    version: int
    engine: BanditEngine
    source: str
    prior: str | None


def latest_policy(service, family: str, mode: str, study_id: int | None, budget: Budget = (None, None, None)) -> Policy:
    """The chosen study's latest snapshot, its engine restored once per version (thread pool);
    before a snapshot, the study's prior; before a study, the family's prior built at the budget
    nearest to the one asked (a solve's default budget when none is)."""
    store = service.store
    chosen = service.studies.get(
        (family, mode, study_id, budget), lambda: pick_study(store, family, mode, study_id, budget)
    )
    version = 0 if chosen is None else study_store.latest_version(store, chosen.id)
    if version:
        _, engine = service.engines.get(chosen.id, version)
        return Policy(time.monotonic(), chosen, version, engine, "snapshot", engine.prior and engine.prior.ref)
    if chosen is not None:
        ref = chosen.prior
    else:
        wanted = dict(DEFAULT) | {k: v for k, v in zip(priors.BUDGET_KEYS, budget, strict=True) if v is not None}
        shipped = priors.for_budget(family, mode, wanted)  # the one built at the nearest budget
        ref = None if shipped is None else shipped.ref
    if ref is None:
        return Policy(time.monotonic(), chosen, 0, BanditEngine(family, mode), "none", None)
    with store.read() as s:  # no fit: a prior's engine is restored once (a study prior's from this store)
        engine = BanditEngine(family, mode, prior=study_store.resolve_prior(s, ref))
    return Policy(time.monotonic(), chosen, 0, engine, "prior", ref)


def _context(fam, request: Request) -> dict[str, float]:
    names = {p.name for p in fam.params}
    for name in request.query_params:
        if name not in names and name not in ROUTE_QUERY:
            known = ", ".join([*(p.name for p in fam.params), *ROUTE_QUERY])
            msg = f"unknown query parameter; {fam.name} takes {known}"
            raise RequestValidationError([{"loc": ("query", name), "msg": msg, "type": "extra_forbidden"}])
    raw = {p.name: request.query_params[p.name] for p in fam.params if p.name in request.query_params}
    context = {}
    for name, value in raw.items():
        try:
            context[name] = float(value)
        except ValueError:
            raise RequestValidationError(
                [{"loc": ("query", name), "msg": f"{value!r} is not a number", "type": "float_parsing"}]
            ) from None
    try:
        return fam.validate_params(context)
    except ValueError as exc:
        name = next((n for n in raw if f"{n}=" in str(exc)), "params")
        raise RequestValidationError([{"loc": ("query", name), "msg": str(exc), "type": "value_error"}]) from None


@router.get(
    "/families/{family}/recommendation",
    response_model=RecommendationOut,
    responses={
        403: {"model": Problem, "description": "a study chosen without an admin token"},
        404: {"model": Problem, "description": "unknown family, or no policy yet"},
    },
)
async def recommendation(
    family: str,
    who: User,
    request: Request,
    mode: Mode = "single",
    top: Annotated[int, Query(ge=1, le=512)] = 5,
    study: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="a study id (admins only, as /v1/studies; default: most data)")
    ] = None,
    reward_phase0: Annotated[
        float | None, Query(ge=-2, le=20, description="sequential: the Adam phase's reward, -log10(rel. L2)")
    ] = None,
    rank: Annotated[
        Literal[RANKINGS],
        Query(description="lcb: by the upper end of the error's 95% interval (default); mean: by the predicted error"),
    ] = "lcb",
    adam: Annotated[
        int | None, Query(ge=0, description="the budget asked about: the study nearest to it answers")
    ] = None,
    lbfgs: Annotated[int | None, Query(ge=0, description="(with or without adam) L-BFGS iterations")] = None,
    collocation: Annotated[
        int | None, Query(ge=1, description="collocation points per subdomain of the budget asked about")
    ] = None,
) -> Response:
    """Arms ranked at the context by the upper end of their error's 95% interval (an arm tried
    nowhere near does not win on its prior mean alone), with predicted error, interval and the
    trainings behind each (per phase in sequential mode). Context: ``?<parameter>=<value>``.

    The latest snapshot version is looked up at most every ``snapshot_check_seconds``; between
    lookups, and always for the posterior itself, nothing touches the database."""
    fam = family_or_404(family)
    if study is not None and not who.is_admin:  # studies are an admin's view, as /v1/studies
        raise HTTPException(403, "choosing a study needs an admin token")
    context = _context(fam, request)
    service = request.app.state.service
    budget = (adam, lbfgs, collocation)
    policy = await service.policies.get(
        (fam.name, mode, study, budget), lambda: latest_policy(service, fam.name, mode, study, budget)
    )
    engine = policy.engine
    arms, arms_lbfgs, r0 = [], None, None
    if engine.adam.ready:
        arms = [_arm(r) for r in engine.recommend(context, top=top, rank=rank)]
        if mode == "sequential":
            r0 = reward_phase0
            if r0 is None:  # the median Adam-phase reward seen so far (by the study, else by its prior)
                seen = engine.lbfgs.x or (prior_engine(engine.prior).lbfgs.x if engine.prior else [])
                r0 = statistics.median(float(x[0]) * R_ADAM_SCALE for x in seen) if seen else 0.0
            arms_lbfgs = [_arm(r) for r in engine.recommend(context, top=top, reward_adam=r0, rank=rank)]
    out = RecommendationOut(
        family=fam.name,
        mode=mode,
        context=context,
        source=policy.source,
        prior=policy.prior,
        detail=_detail(policy, engine),
        study_id=None if policy.study is None else policy.study.id,
        profile=None if policy.study is None else policy.study.profile,
        snapshot_version=policy.version,
        observations=engine.n_observations,
        rank=rank,
        arms=arms,
        arms_lbfgs=arms_lbfgs,
        assumed_reward_phase0=r0 if mode == "sequential" and reward_phase0 is None else None,
    )
    # Built and checked once here; FastAPI would validate it a second time against the model.
    return Response(out.model_dump_json(), media_type="application/json")


# The route's own query parameters (beside the family's), read from its signature.
ROUTE_QUERY = tuple(p for p in inspect.signature(recommendation).parameters if p not in ("family", "who", "request"))


def _detail(policy: Policy, engine: BanditEngine) -> str:
    if policy.source == "snapshot":
        on = f", on prior {policy.prior}" if policy.prior else ""
        p = policy.study.profile
        study = f"study {policy.study.id} ({p.get('adam')} Adam + {p.get('lbfgs')} L-BFGS)"
        return f"{study}: snapshot v{policy.version}, {engine.n_observations} observations{on}"
    if policy.source == "prior":
        p = engine.prior
        whose = "no study yet" if policy.study is None else f"study {policy.study.id} has no snapshot yet"
        return f"{whose}: prior {p.ref}, learned from {p.trainings} trainings ({p.provenance.get('date', '?')})"
    if engine.n_observations:
        return f"study {policy.study.id} has {engine.n_observations} observation(s) and no prior: it needs two"
    return "nothing learned yet: no prior is installed for this family and mode, and nothing has been solved"

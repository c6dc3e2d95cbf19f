"""GET /v1/families/{family}/recommendation: ranked arms from the latest policy snapshot.

The context is given as query parameters named after the family's parameters (``?nu=0.01``);
missing ones take their defaults. The answer comes from the study's latest snapshot (its engine is
restored once per version and cached), never from a fit in the request.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from api.auth import User
from api.routes.families import family_or_404
from api.schemas import MAX_ID, ArmOut, Mode, Problem, RecommendationOut
from metalic.bandit.engine import R_ADAM_SCALE, BanditEngine, Recommendation
from metalic.store import studies as study_store
from metalic.store.records import StudyRecord

router = APIRouter(tags=["recommendations"], responses={401: {"model": Problem}})


def _arm(r: Recommendation) -> ArmOut:
    return ArmOut(
        terms=r.terms,
        bits=r.arm.bits,
        predicted_error=r.predicted_error,
        error_interval=r.error_interval,
        reward_mean=r.reward_mean,
        reward_std=r.reward_std,
    )


def pick_study(store, family: str, mode: str, study_id: int | None) -> StudyRecord:
    """The study asked for, else the service study of (family, mode) with the most observations."""
    if study_id is not None:
        study = study_store.get_study(store, study_id)
        if study is None or study.family != family or study.mode != mode:
            raise HTTPException(404, f"no {mode} study {study_id} of {family}")
        return study
    study = study_store.pick_study(store, family, mode)
    if study is None:
        raise HTTPException(404, f"no learned policy for {family} ({mode}) yet: nothing has been solved")
    return study


@dataclass(frozen=True)
class Policy:
    """The engine a (family, mode, study) question is answered with, and when that was checked."""

    checked: float
    study: StudyRecord
    version: int
    engine: BanditEngine


def latest_policy(service, family: str, mode: str, study_id: int | None) -> Policy:
    """The chosen study's latest snapshot, its engine restored once per version (thread pool)."""
    store = service.store
    chosen = service.studies.get((family, mode, study_id), lambda: pick_study(store, family, mode, study_id))
    version = study_store.latest_version(store, chosen.id)
    if version == 0:
        raise HTTPException(404, f"no learned policy for {family} ({mode}) yet: its first refit is pending")
    _, engine = service.engines.get(chosen.id, version)
    return Policy(time.monotonic(), chosen, version, engine)


def _context(fam, request: Request) -> dict[str, float]:
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
) -> Response:
    """Arms ranked by posterior mean reward at the context, with predicted error and 95% interval
    (per phase in sequential mode). Context: ``?<parameter>=<value>`` for the family's parameters.

    The latest snapshot version is looked up at most every ``snapshot_check_seconds``; between
    lookups, and always for the posterior itself, nothing touches the database."""
    fam = family_or_404(family)
    if study is not None and not who.is_admin:  # studies are an admin's view, as /v1/studies
        raise HTTPException(403, "choosing a study needs an admin token")
    context = _context(fam, request)
    service = request.app.state.service
    policy = await service.policies.get((fam.name, mode, study), lambda: latest_policy(service, fam.name, mode, study))
    engine = policy.engine
    if engine.n_observations < 2:
        raise HTTPException(404, f"no learned policy for {fam.name} ({mode}) yet: it needs two observations")
    arms = [_arm(r) for r in engine.recommend(context, top=top)]
    arms_lbfgs, r0 = None, None
    if mode == "sequential":
        r0 = reward_phase0
        if r0 is None:  # the median Adam-phase reward seen so far
            r0 = statistics.median(float(x[0]) * R_ADAM_SCALE for x in engine.lbfgs.x)
        arms_lbfgs = [_arm(r) for r in engine.recommend(context, top=top, reward_adam=r0)]
    out = RecommendationOut(
        family=fam.name,
        mode=mode,
        context=context,
        study_id=policy.study.id,
        profile=policy.study.profile,
        snapshot_version=policy.version,
        observations=engine.n_observations,
        arms=arms,
        arms_lbfgs=arms_lbfgs,
        assumed_reward_phase0=r0 if mode == "sequential" and reward_phase0 is None else None,
    )
    # Built and checked once here; FastAPI would validate it a second time against the model.
    return Response(out.model_dump_json(), media_type="application/json")

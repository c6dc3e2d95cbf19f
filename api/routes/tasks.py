"""Solving: POST /v1/families/{family}/solve, and a task's state, list, cancel, solution, predict, plot.

A user sees only the tasks of their token's name; another user's task answers 404, exactly as a
task that does not exist, so ids do not leak.
"""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.auth import Principal, User
from api.routes.families import family_or_404
from api.schemas import (
    MAX_ID,
    Id,
    PredictBody,
    PredictOut,
    Problem,
    ProgressOut,
    ResultOut,
    SolutionOut,
    SolveBody,
    TaskOut,
    TaskPage,
)
from metalic.families import get_family
from metalic.jobs import SolveRequest, SolveResult, read_solution
from metalic.pinn.artefact import TrainedModel
from metalic.plotting import plot_solution_npz
from metalic.store import tasks as task_store
from metalic.store import workers as worker_store
from metalic.store.models import TASK_STATES
from metalic.store.records import ArtefactRecord, TaskRecord

router = APIRouter(tags=["tasks"], responses={401: {"model": Problem}})
NOT_FOUND = {404: {"model": Problem, "description": "no such task (or not yours)"}}
NPZ = "application/x-npz"


def _label(arm) -> str | None:
    return None if arm is None else arm.label


def result_out(summary: dict) -> ResultOut:
    """A task's result as the API answers it (``reward_phase0`` / ``rel_l2_phase0``: after Adam)."""
    r = SolveResult.from_summary(summary)
    o = r.outcome
    return ResultOut(
        status=r.status,
        rel_l2=r.rel_l2,
        max_abs=r.max_abs,
        reward=r.reward,
        reward_phase0=r.reward_adam,
        rel_l2_phase0=r.rel_l2_adam,
        adam_iterations=o["adam_iterations"],
        lbfgs_iterations=o["lbfgs_iterations"],
        lbfgs_stop=o["lbfgs_stop"],
        lbfgs_rejected=o.get("lbfgs_rejected", 0),
        loss=o["loss"],
        seconds=r.seconds,
        batch_size=r.batch_size,
        device=r.device,
        error_over_time=o.get("error_over_time"),
        causal=o.get("causal"),
    )


def task_out(task: TaskRecord) -> TaskOut:
    req = task.request
    result = None if task.result is None else result_out(task.result)
    base = f"/v1/tasks/{task.id}"
    arm_lbfgs = task.arm_lbfgs if task.arm_lbfgs is not None else task.arm_adam if req["mode"] == "single" else None
    return TaskOut(
        id=task.id,
        state=task.state,
        family=task.family,
        params=req["params"],
        mode=req["mode"],
        arm_requested=req["arm"],
        arm_lbfgs_requested=req.get("arm_lbfgs"),
        arm_adam=_label(task.arm_adam),
        arm_lbfgs=_label(arm_lbfgs),
        arm_policy=task.arm_policy,
        owner=task.owner,
        campaign_id=task.campaign_id,
        attempt=task.attempt,
        progress=ProgressOut(
            phase=task.progress_phase,
            iteration=task.progress_iteration,
            total=task.progress_total,
            loss=task.progress_loss,
        ),
        result=result,
        error=task.error,
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        links={
            "self": base,
            "cancel": f"{base}/cancel",
            "solution": f"{base}/solution",
            "predict": f"{base}/predict",
            "plot": f"{base}/plot.png",
        },
    )


def _mapped(exc: ValidationError) -> RequestValidationError:
    """SolveRequest's errors at the places of the body where the fields were given."""
    errors = []
    for e in exc.errors():
        field, rest = (e["loc"][0], tuple(e["loc"][1:])) if e["loc"] else ("body", ())
        where = SolveBody.LOCATIONS.get(field, (field,))
        errors.append(
            {"loc": ("body", *where, *rest), "msg": e["msg"].removeprefix("Value error, "), "type": e["type"]}
        )
    return RequestValidationError(errors)


@router.post(
    "/families/{family}/solve",
    status_code=202,
    response_model=TaskOut,
    responses={
        **NOT_FOUND,
        404: {"model": Problem, "description": "unknown family"},
        409: {"model": Problem, "description": "Idempotency-Key reused for another request"},
        413: {"model": Problem},
        429: {"model": Problem, "description": "you have as many queued and running tasks as one user may"},
    },
)
async def solve(
    family: str,
    body: SolveBody,
    who: User,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> TaskOut:
    """Queue a solve; poll ``links.self`` until ``state`` is succeeded / failed / cancelled.
    An ``Idempotency-Key`` header makes a retry return the task of the first call. A device class
    that no trainer of the cluster serves is refused (422 at ``device``)."""
    fam = family_or_404(family)
    try:
        req = body.request(fam.name)
    except ValidationError as exc:
        raise _mapped(exc) from None
    service = request.app.state.service
    _check_servable(service, req.device)
    try:
        task, created = await service.submitter.submit(req, who.name, idempotency_key)
    except task_store.QueueFull as exc:
        raise HTTPException(429, str(exc)) from None
    if not created:
        if task.request != req.model_dump(mode="json"):
            raise HTTPException(409, "Idempotency-Key was already used for a different request")
        response.headers["Idempotent-Replayed"] = "true"
    service.wake()
    response.headers["Location"] = f"/v1/tasks/{task.id}"
    return task_out(task)


def _check_servable(service, device: str) -> None:
    """422 at ``device`` when the live trainers serve other device classes only (when no trainer
    is alive yet nothing is refused: a queued task that stays unservable fails after a timeout)."""
    if device == "auto":
        return
    stale = 3 * service.settings.heartbeat_seconds + 5
    served = service.servable.get("devices", lambda: worker_store.servable_devices(service.store, stale))
    if served is not None and device not in served:
        message = f"no trainer of this cluster serves {device} (it serves: {', '.join(sorted(served))})"
        raise RequestValidationError([{"loc": ("body", "device"), "msg": message, "type": "value_error"}])


def _task(request: Request, task_id: Id, who: Principal) -> TaskRecord:
    task = task_store.get_task(request.app.state.service.store, task_id, who.owner_filter())
    if task is None:
        raise HTTPException(404, f"no task {task_id}")
    return task


@router.get("/tasks/{task_id}", response_model=TaskOut, responses=NOT_FOUND)
def get_task(task_id: Id, who: User, request: Request) -> TaskOut:
    """State, progress, arms per phase, errors and timings."""
    return task_out(_task(request, task_id, who))


@router.get("/tasks", response_model=TaskPage)
def list_tasks(
    who: User,
    request: Request,
    state: Annotated[str | None, Query(description=f"one of {', '.join(TASK_STATES)}")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="tasks with a smaller id (the next page)")] = None,
) -> TaskPage:
    """Your tasks (every task for admins), newest first."""
    if state is not None and state not in TASK_STATES:
        raise RequestValidationError(
            [{"loc": ("query", "state"), "msg": f"must be one of {', '.join(TASK_STATES)}", "type": "value_error"}]
        )
    rows = task_store.list_tasks(request.app.state.service.store, who.owner_filter(), state, limit + 1, before)
    items = [task_out(t) for t in rows[:limit]]
    nxt = None
    if len(rows) > limit:
        nxt = f"/v1/tasks?limit={limit}&before={rows[limit - 1].id}" + (f"&state={state}" if state else "")
    return TaskPage(items=items, next=nxt)


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=TaskOut,
    responses={**NOT_FOUND, 409: {"model": Problem, "description": "already finished"}},
)
def cancel_task(task_id: Id, who: User, request: Request) -> TaskOut:
    """Cancel a queued task (it never runs) or a running one (it stops at its next progress point)."""
    before = _task(request, task_id, who)
    if before.state not in ("queued", "running"):
        raise HTTPException(409, f"task {task_id} already {before.state}")
    return task_out(task_store.cancel(request.app.state.service.store, task_id, who.owner_filter()))


def _artefact(request: Request, task_id: Id, who: Principal) -> tuple[TaskRecord, ArtefactRecord]:
    task = _task(request, task_id, who)
    if task.state != "succeeded":
        raise HTTPException(409, f"task {task_id} is {task.state}: it has no solution")
    artefact = task_store.get_artefact(request.app.state.service.store, task_id)
    if artefact is None:
        raise HTTPException(404, f"task {task_id} kept no artefact")
    return task, artefact


SOLUTION_RESPONSES = {
    **NOT_FOUND,
    409: {"model": Problem, "description": "not succeeded"},
    200: {"content": {NPZ: {}}, "description": "JSON, or the .npz file with Accept: application/x-npz"},
}


@router.get("/tasks/{task_id}/solution", response_model=SolutionOut, responses=SOLUTION_RESPONSES)
def solution(task_id: Id, who: User, request: Request, accept: Annotated[str | None, Header()] = None):
    """The solution on the reference grid: prediction and reference (JSON), or the ``.npz`` file."""
    _, artefact = _artefact(request, task_id, who)
    if accept and (NPZ in accept or "application/octet-stream" in accept):
        return Response(
            artefact.solution,
            media_type=NPZ,
            headers={"Content-Disposition": f'attachment; filename="task-{task_id}.npz"'},
        )
    grid = read_solution(artefact.solution)
    return SolutionOut(
        coords=[str(c) for c in grid["coords"]],
        axis0=grid["axis0"].tolist(),
        axis1=grid["axis1"].tolist(),
        prediction=grid["prediction"].astype(float).tolist(),
        reference=grid["reference"].astype(float).tolist(),
    )


@router.post(
    "/tasks/{task_id}/predict",
    response_model=PredictOut,
    responses={**NOT_FOUND, 409: {"model": Problem}, 413: {"model": Problem}},
)
def predict(task_id: Id, body: PredictBody, who: User, request: Request) -> PredictOut:
    """The trained model's u at ``points`` (at most ``max_predict_points``, inside the domain)."""
    service = request.app.state.service
    limit = service.settings.max_predict_points
    if len(body.points) > limit:
        raise RequestValidationError(
            [{"loc": ("body", "points"), "msg": f"at most {limit} points (server cap)", "type": "too_long"}]
        )
    _, artefact = _artefact(request, task_id, who)  # the task first: none, not yours, not done -> 404 / 409
    if not body.points:
        return PredictOut(values=[])
    model = service.models.get(task_id, lambda: TrainedModel.from_bytes(artefact.model))
    try:
        values = model.predict(np.asarray(body.points, dtype=float))
    except ValueError as exc:
        raise RequestValidationError([{"loc": ("body", "points"), "msg": str(exc), "type": "value_error"}]) from None
    return PredictOut(values=[float(v) for v in values])


@router.get(
    "/tasks/{task_id}/plot.png",
    response_class=Response,
    responses={**NOT_FOUND, 409: {"model": Problem}, 200: {"content": {"image/png": {}}}},
)
def plot(task_id: Id, who: User, request: Request) -> Response:
    """Prediction, reference and error, with the interfaces drawn."""
    task, artefact = _artefact(request, task_id, who)
    return Response(plot_png(request.app.state.service, task, artefact), media_type="image/png")


def plot_png(service, task: TaskRecord, artefact: ArtefactRecord) -> bytes:
    """The solution figure of a succeeded task (PNG bytes), drawn once per task."""

    def draw() -> bytes:
        req = SolveRequest.model_validate(task.request, context={"trusted": True})
        family = get_family(req.family)
        r = task.result
        title = f"{family.name} {req.params}  arm {_label(task.arm_adam)}  rel L2 {r['rel_l2'] or float('nan'):.2e}"
        buffer = io.BytesIO()
        plot_solution_npz(
            family, family.decomposition(req.subdomains), read_solution(artefact.solution), buffer, title, dpi=80
        )
        return buffer.getvalue()

    return service.plots.get(task.id, draw)

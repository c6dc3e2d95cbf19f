"""Probes and metrics: GET /healthz (the process answers), /readyz (database and Ray reachable),
/metrics (Prometheus text). No token: they are meant for the orchestrator and the scraper, so they
say which check failed in fixed words, never with URLs, hosts or process ids."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

import migrations
from api import metrics

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: see the checks"}})
def readyz(request: Request) -> JSONResponse:
    service = request.app.state.service
    checks: dict[str, str] = {}
    try:
        service.store.ping()
    except Exception as exc:  # the reason (which may name the server) is the log's, not an anonymous caller's
        log.warning("readiness: the database did not answer: %s", exc)
        checks["database"] = "unreachable"
    else:
        try:
            migrations.check(service.store)
            checks["database"] = "ok"
        except migrations.SchemaError:
            checks["database"] = "not at the newest schema: run `metalic db upgrade`"
    if service.started:
        from workers.cluster import reachable

        if service.dispatcher_error:
            checks["ray"] = service.dispatcher_error
        elif service.dispatcher is None:
            checks["ray"] = "starting"
        else:
            checks["ray"] = "ok" if reachable() else "unreachable"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def prometheus(request: Request) -> Response:
    return Response(metrics.render(request.app.state.service.store), media_type="text/plain; version=0.0.4")

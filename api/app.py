"""The FastAPI application: versioned routes under ``/v1``, OpenAPI at ``/openapi.json``, docs at
``/docs``, probes and Prometheus metrics at the root.

Bad input never writes: bodies are validated (field-level 422s; SolveRequest's family-specific
checks are mapped back to the body's fields) before any store call; bodies over the size cap are
refused (413) before they are read.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

import metalic
from api import metrics
from api.routes import admin, families, ops, recommend, tasks
from api.service import Service


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413: by Content-Length before reading, or,
    for a streamed body, by reading at most ``limit`` bytes before the app sees any of it."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        messages, size = [], 0
        while True:  # a streamed body: buffer it (it is small, or it is refused)
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = [{"loc": ["body"], "msg": f"request body larger than {self.limit} bytes", "type": "too_large"}]
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


@asynccontextmanager
async def lifespan(app: FastAPI):
    """On shutdown (after the server stopped accepting and answered what was in flight): the
    service's own shutdown, e.g. draining the trainers (``metalic serve``)."""
    yield
    service: Service = app.state.service
    if service.on_shutdown is not None:
        await run_in_threadpool(service.on_shutdown)


def create_app(service: Service) -> FastAPI:
    app = FastAPI(
        lifespan=lifespan,
        title="metalic",
        version=metalic.__version__,
        description=(
            "Solve parametric PDE instances with multi-domain PINNs, and ask which interface conditions "
            "(learned by a METALIC contextual bandit) to use. Authenticate with `Authorization: Bearer <token>` "
            "(`metalic token create`)."
        ),
    )
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.observe_request(
            request.method, getattr(route, "path", "unmatched"), response.status_code, time.perf_counter() - start
        )
        return response

    for module in (families, tasks, recommend, admin):
        app.include_router(module.router, prefix="/v1")
    app.include_router(ops.router)
    app.add_middleware(BodyLimit, limit=service.settings.max_body_bytes)
    return app

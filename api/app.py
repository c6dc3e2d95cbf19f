"""The FastAPI application: versioned routes under ``/v1``, OpenAPI at ``/openapi.json``, docs at
``/docs``, probes and Prometheus metrics at the root.

Bad input never writes: bodies are validated (field-level 422s; SolveRequest's family-specific
checks are mapped back to the body's fields) before any store call; bodies over the size cap are
refused (413) before they are read.
"""

from __future__ import annotations

import gc
import time
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

import metalic
from api import metrics
from api.dashboard import create_dashboard
from api.errors import invalid_request
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


class Observe:
    """Request latency by method, route template and status, for /metrics (plain ASGI: cheaper
    than a BaseHTTPMiddleware on every request)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            # the route's template, below its mount (/dashboard/tasks/{task_id}): bounded labels
            path = scope.get("root_path", "") + route.path if hasattr(route, "path") else "unmatched"
            metrics.observe_request(scope["method"], path, status, time.perf_counter() - start)


@asynccontextmanager
async def lifespan(app: FastAPI):
    """On shutdown (after the server stopped accepting and answered what was in flight): the
    service's own shutdown, e.g. draining the trainers (``metalic serve``)."""
    yield
    service: Service = app.state.service
    if service.on_shutdown is not None:
        await run_in_threadpool(service.on_shutdown)


def create_app(service: Service) -> FastAPI:
    # Requests run in a thread pool; torch ops inside them (posterior means) are small, and an
    # OpenMP team per request thread oversubscribes the cores: one intra-op thread here (the
    # trainers are other processes).
    torch.set_num_threads(1)
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

    app.add_exception_handler(RequestValidationError, invalid_request)

    for module in (families, tasks, recommend, admin):
        app.include_router(module.router, prefix="/v1")
    app.include_router(ops.router)
    app.mount("/dashboard", create_dashboard(service))
    app.add_middleware(BodyLimit, limit=service.settings.max_body_bytes)
    app.add_middleware(Observe)
    return app


def from_settings() -> FastAPI:
    """An API-only app on the settings' store (no trainers): for API replicas beside one
    ``metalic dispatcher``, e.g. ``uvicorn --factory api.app:from_settings --workers 4``."""
    import migrations
    from metalic.settings import get_settings
    from metalic.store import open_store

    store = open_store()
    migrations.check(store)
    app = create_app(Service(get_settings(), store))
    tune_gc()
    return app


def tune_gc() -> None:
    """For a long-running server: move what start-up created (torch, the app) out of the cyclic
    collector's reach, and collect the young generation less often; a request allocates many
    short-lived objects and the default threshold (700) runs the collector every few requests."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)

"""The dashboard's routes: pages (HTML), their data (JSON, with ETags so that polling transfers
only what changed) and CSV downloads, all for a logged-in admin.

Pages: ``/`` overview, ``/studies/{id}``, ``/tasks``, ``/tasks/{id}``, ``/campaigns``,
``/campaigns/{id}``; ``/login`` and ``/logout``. Data: ``/data/...`` (401 without a session,
where pages redirect to the login form). CSV: ``/csv/...``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from pydantic import ValidationError
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.sessions import SessionMiddleware

from api.auth import Principal
from api.dashboard import data
from api.dashboard.session import (
    COOKIE,
    LoginRequired,
    csrf_ok,
    csrf_token,
    current_admin,
    log_in,
    log_out,
    secret_key,
)
from api.errors import invalid_request
from api.routes.admin import create_campaign
from api.routes.tasks import plot_png
from api.schemas import MAX_ID, CampaignBody
from api.service import LRU, Service, TTLCache
from metalic.arms import Arm
from metalic.bandit.policies import POLICIES, FixedArm
from metalic.families import FAMILIES, get_family
from metalic.store import campaigns as campaign_store
from metalic.store import reports
from metalic.store import studies as study_store
from metalic.store import tasks as task_store
from metalic.store.models import TASK_STATES

HERE = FilePath(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
# Pages link the dashboard's CSS and scripts as ``?v=<content hash>``: a browser keeps them for a day
# without asking again (a revalidation held up every page's script by 10-20 ms), and a changed file
# is a new address. Plotly is the project's partial build (scripts/plotly_bundle/build.sh).
ASSETS = ("dashboard.css", "dashboard.js", "vendor/plotly.min.js")
templates.env.globals["asset_v"] = hashlib.sha256(
    b"".join((HERE / "static" / a).read_bytes() for a in ASSETS)
).hexdigest()[:12]
# an ISO time in UTC as a table shows it: "2026-12-02 05:01:34" (the JSON keeps the full ISO form)
templates.env.filters["when"] = lambda iso: iso[:19].replace("T", " ") if iso else ""
# a long arm label may wrap after its commas (<wbr>: the copied text stays the same)
templates.env.filters["breakable"] = lambda label: Markup(",<wbr>").join(escape(label or "").split(","))
Admin = Annotated[Principal, Depends(current_admin)]
PageId = Annotated[int, Path(ge=1, le=MAX_ID)]


def create_dashboard(service: Service) -> FastAPI:
    """The dashboard as an app of its own (mounted at ``/dashboard``): its session cookie never
    touches the REST API's requests."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.landscapes = LRU(64)  # (study, snapshot version, slice) -> posterior over the slice
    app.state.campaign_charts = LRU(32)  # (campaign, succeeded tasks) -> its figures' data
    app.state.views = TTLCache(service.settings.dashboard_cache_seconds)  # page data -> (JSON, ETag)
    app.state.builds = LRU(32)  # (page data, what it was built from) -> (JSON, ETag): see cached_json
    app.state.overview = TTLCache(service.settings.dashboard_cache_seconds)  # the overview's data
    app.state.hourly = reports.HourlyCounts()  # settled hours of the overview's throughput chart
    app.state.prefetch = ThreadPoolExecutor(1, thread_name_prefix="engine-prefetch")  # see study_page
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key(service.settings),
        session_cookie=COOKIE,
        max_age=int(service.settings.session_hours * 3600),
        path="/dashboard",
        same_site="strict",
        https_only=service.settings.cookie_secure,
    )
    app.add_middleware(GZipMiddleware, minimum_size=2000)
    app.mount("/static", CachedStaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        base = request.scope.get("root_path", "")
        path = request.url.path.removeprefix(base)
        if path.startswith(("/data/", "/csv/")) or request.method != "GET":
            return JSONResponse({"detail": "log in to the dashboard with an admin token"}, status_code=401)
        target = path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{base}/login?next={quote(target)}", status_code=303)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if not _is_page(request):
            return await invalid_request(request, exc)
        messages = [f"{e['loc'][-1]}: {str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors()]
        return await _error_page(request, 422, messages)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if not _is_page(request):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return await _error_page(request, exc.status_code, [str(exc.detail)])

    @app.middleware("http")
    async def _security_headers(request: Request, call_next) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    for route in ROUTES:
        app.add_api_route(*route[:2], methods=route[2], include_in_schema=False)
    return app


# ---- helpers ----------------------------------------------------------------------------------------
class CachedStaticFiles(StaticFiles):
    """The dashboard's CSS and JS, kept by browsers for a day (pages link them by content hash)."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "max-age=86400"
        return response


# Only the dashboard's own scripts run (no inline script, no eval); Plotly sets inline styles.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _is_page(request: Request) -> bool:
    """A browser page (GET, not a data, CSV or asset address): its errors are dashboard pages."""
    path = request.url.path.removeprefix(request.scope.get("root_path", ""))
    return request.method == "GET" and not path.startswith(("/data/", "/csv/", "/static/"))


async def _error_page(request: Request, status: int, messages: list[str]) -> HTMLResponse:
    """The error as a dashboard page, with the navigation when an admin is logged in."""
    try:
        who = await current_admin(request)
    except LoginRequired:
        who = None
    titles = {404: "Not found", 422: "Not a valid address"}
    title = titles.get(status, "Error")
    return render(request, "error.html", status, who=who, code=status, title=title, messages=messages)


def _store(request: Request):
    return request.app.state.service.store


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    base = request.scope.get("root_path", "")
    settings = request.app.state.service.settings
    return templates.TemplateResponse(
        request,
        name,
        {"base": base, "csrf": csrf_token(request), "poll_ms": int(settings.dashboard_poll_seconds * 1000), **context},
        status_code=status,
    )


def etag_json(request: Request, payload: Any) -> Response:
    """JSON with an ETag; 304 when the client already has this exact payload."""
    return _answer(request, *_encoded(payload))


def _encoded(payload: Any) -> tuple[bytes, str]:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False, default=str).encode()
    return body, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def cached_json(
    request: Request, key: tuple, build: Callable[[], Any], source: Callable[[], str] | None = None
) -> Response:
    """``etag_json`` of a payload that may be ``dashboard_cache_seconds`` old: open tabs polling
    the same page share one build (and its queries) per period, and a poll inside the period
    costs a dictionary lookup (a 304 when the tab has it already). ``source``: a cheap reading of
    what the payload is built from; when a period ends and it reads as before, the last build
    serves another period (an idle study's poll: one query, not a rebuild of ~300 ms)."""
    state = request.app.state

    def make() -> tuple[bytes, str]:
        if source is None or not state.views.seconds:  # no cache: every request builds
            return _encoded(build())
        return state.builds.get((key, source()), lambda: _encoded(build()))

    body, tag = state.views.get(key, make)
    return _answer(request, body, tag)


def _answer(request: Request, body: bytes, tag: str) -> Response:
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def csv_response(name: str, columns: list[str], rows: Iterator[dict]) -> StreamingResponse:
    """Rows as CSV, streamed (nested values as JSON)."""

    def lines() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        for i, row in enumerate(rows):
            writer.writerow([_cell(row.get(c)) for c in columns])
            if i % 200 == 199:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return StreamingResponse(
        lines(), media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}.csv"'}
    )


def param_columns(families: list[str]) -> list[str]:
    """One CSV column per PDE parameter of these families (``param_<name>``; KdV's and Heat's
    ``c`` share one column, told apart by the family column)."""
    names = dict.fromkeys(n for f in families for n in get_family(f).param_names)
    return [f"param_{n}" for n in names]


def flat_params(rows: Iterator[dict]) -> Iterator[dict]:
    """Rows with their ``params`` mapping spread into ``param_<name>`` cells."""
    for row in rows:
        params = row.get("params") or {}
        yield row | {f"param_{k}": v for k, v in params.items()}


def with_params(columns: list[str] | tuple[str, ...], families: list[str]) -> list[str]:
    """``columns`` with ``params`` replaced by one column per parameter."""
    at = columns.index("params")
    return [*columns[:at], *param_columns(families), *columns[at + 1 :]]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _state(state: str | None) -> str | None:
    if state in (None, "", "all"):
        return None
    if state not in TASK_STATES:
        raise RequestValidationError(
            [{"loc": ("query", "state"), "msg": f"must be one of {', '.join(TASK_STATES)}", "type": "value_error"}]
        )
    return state


def _family(family: str | None) -> str | None:
    if family in (None, ""):
        return None
    if family not in list(FAMILIES):
        raise RequestValidationError(
            [{"loc": ("query", "family"), "msg": f"unknown family {family!r}", "type": "value_error"}]
        )
    return family


def _safe_next(target: str | None, base: str) -> str:
    """Where to go after logging in: a path inside the dashboard, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return f"{base}/"
    return base + target


# ---- login ------------------------------------------------------------------------------------------
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return render(request, "login.html", next=next or "/", error=None)


async def login(request: Request) -> Response:
    form = await request.form()
    target = str(form.get("next") or "/")
    if not csrf_ok(request, form.get("csrf")):
        return render(request, "login.html", 403, next=target, error="the form expired: please try again")
    who = await run_in_threadpool(log_in, request, str(form.get("token") or ""))
    if who is None:
        return render(request, "login.html", 401, next=target, error="unknown or revoked token")
    if not who.is_admin:
        return render(request, "login.html", 403, next=target, error="the dashboard needs an admin token")
    return RedirectResponse(_safe_next(target, request.scope.get("root_path", "")), status_code=303)


async def logout(request: Request) -> Response:
    form = await request.form()
    if not csrf_ok(request, form.get("csrf")):
        raise HTTPException(403, "CSRF token missing or wrong")
    await run_in_threadpool(log_out, request)
    return RedirectResponse(f"{request.scope.get('root_path', '')}/login", status_code=303)


# ---- overview ---------------------------------------------------------------------------------------
def _stale(request: Request) -> float:
    return 3 * request.app.state.service.settings.heartbeat_seconds + 5


def _overview(request: Request) -> dict:
    """The overview's data, at most ``dashboard_cache_seconds`` old (the page and its polls)."""
    hourly = request.app.state.hourly
    return request.app.state.overview.get("overview", lambda: data.overview(_store(request), _stale(request), hourly))


def overview_page(request: Request, who: Admin) -> HTMLResponse:
    return render(request, "overview.html", who=who, view=_overview(request))


def overview_data(request: Request, who: Admin) -> Response:
    return etag_json(request, _overview(request))


WORKER_COLUMNS = [
    *("id", "kind", "host", "device", "state"),
    *("current_batch", "batch_size", "last_seen", "seconds_ago", "alive"),
]


def workers_csv(request: Request, who: Admin) -> StreamingResponse:
    rows = data.workers(_store(request), _stale(request))
    return csv_response("workers", WORKER_COLUMNS, iter(rows))


# ---- table filters ----------------------------------------------------------------------------------
ALL_PARAMS = list(dict.fromkeys(n for f in FAMILIES for n in get_family(f).param_names))
Bound = Annotated[float | None, Query(ge=-1e12, le=1e12)]


def row_filter(
    owner: Annotated[str | None, Query(max_length=100)] = None,
    arm: Annotated[str | None, Query(max_length=200)] = None,
    error_min: Annotated[float | None, Query(ge=0)] = None,
    error_max: Annotated[float | None, Query(ge=0)] = None,
    param: Annotated[str | None, Query(max_length=40)] = None,
    param_min: Bound = None,
    param_max: Bound = None,
    sort: Literal[reports.SORTS] = "newest",
) -> reports.RowFilter:
    """The task and observation tables' filters from the query (422 naming a bad one)."""
    arm_index = None
    if arm not in (None, ""):
        try:
            arm_index = Arm.parse(arm, "arm").index
        except ValueError as exc:
            raise RequestValidationError([{"loc": ("query", "arm"), "msg": str(exc), "type": "value_error"}]) from None
    if param not in (None, "") and param not in ALL_PARAMS:
        msg = f"must be one of {', '.join(ALL_PARAMS)}"
        raise RequestValidationError([{"loc": ("query", "param"), "msg": msg, "type": "value_error"}])
    return reports.RowFilter(owner or None, arm_index, error_min, error_max, param or None, param_min, param_max, sort)


Rows = Annotated[reports.RowFilter, Depends(row_filter)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]
FILTER_KEYS = ("owner", "arm", "error_min", "error_max", "param", "param_min", "param_max", "sort")


def _kept(request: Request, keys: tuple[str, ...]) -> dict[str, str]:
    """The query's values of ``keys`` that are set (for the form and the next page's link)."""
    return {k: request.query_params[k] for k in keys if request.query_params.get(k)}


# ---- tasks ------------------------------------------------------------------------------------------
def tasks_page(
    request: Request,
    who: Admin,
    rows: Rows,
    state: str | None = None,
    family: str | None = None,
    campaign: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    offset: Offset = 0,
) -> HTMLResponse:
    state, family = _state(state), _family(family)
    page = data.task_page(_store(request), state, family, campaign, before, rows, offset)
    filters = {"state": state or "", "family": family or "", "campaign": campaign or ""}
    filters |= _kept(request, FILTER_KEYS)
    return render(
        request,
        "tasks.html",
        who=who,
        page=page,
        filters=filters,
        states=TASK_STATES,
        families=list(FAMILIES),
        params=get_family(family).param_names if family else ALL_PARAMS,
        query=urlencode({k: v for k, v in filters.items() if v}),
        next_key="before" if rows.sort == "newest" else "offset",
    )


def tasks_csv(
    request: Request,
    who: Admin,
    rows: Rows,
    state: str | None = None,
    family: str | None = None,
    campaign: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> StreamingResponse:
    state, family = _state(state), _family(family)
    columns = with_params(list(data.TASK_COLUMNS), [family] if family else list(FAMILIES))
    found = data.iter_tasks(_store(request), state, family, campaign, rows)
    return csv_response("tasks", columns, flat_params(found))


def _task_or_404(store, task_id: int) -> dict:
    found = data.task_detail(store, task_id)
    if found is None:
        raise HTTPException(404, f"no task {task_id}")
    return found


def task_page(request: Request, task_id: PageId, who: Admin) -> HTMLResponse:
    view = _task_or_404(_store(request), task_id)
    return render(request, "task.html", who=who, view=view, task=view["task"])


def task_data(
    request: Request, task_id: PageId, who: Admin, since: Annotated[int, Query(ge=0, le=MAX_ID)] = 0
) -> Response:
    found = data.task_detail(_store(request), task_id, since)
    if found is None:
        raise HTTPException(404, f"no task {task_id}")
    return etag_json(request, found)


def task_plot(request: Request, task_id: PageId, who: Admin) -> Response:
    store = _store(request)
    task, artefact = task_store.get_task(store, task_id), task_store.get_artefact(store, task_id)
    if task is None or task.state != "succeeded" or artefact is None or artefact.solution is None:
        raise HTTPException(404, f"task {task_id} has no solution figure")
    return Response(plot_png(request.app.state.service, task, artefact), media_type="image/png")


def progress_csv(request: Request, task_id: PageId, who: Admin) -> StreamingResponse:
    p = _task_or_404(_store(request), task_id)["points"]
    rows = (
        {"phase": ph, "iteration": it, "loss": lo}
        for ph, it, lo in zip(p["phase"], p["iteration"], p["loss"], strict=True)
    )
    return csv_response(f"task-{task_id}-loss", ["phase", "iteration", "loss"], rows)


async def cancel_task(request: Request, task_id: PageId, who: Admin) -> Response:
    form = await request.form()
    if not csrf_ok(request, form.get("csrf")):
        raise HTTPException(403, "CSRF token missing or wrong")
    await run_in_threadpool(task_store.cancel, _store(request), task_id, None)
    return RedirectResponse(f"{request.scope.get('root_path', '')}/tasks/{task_id}", status_code=303)


# ---- studies ----------------------------------------------------------------------------------------
def _slice(request: Request, family: str) -> dict:
    q = request.query_params
    fixed = {k[len("fix_") :]: v for k, v in q.items() if k.startswith("fix_")}
    try:
        return data.parse_slice(family, q.get("x"), q.get("y"), fixed)
    except data.SliceError as exc:
        raise RequestValidationError([{"loc": ("query", exc.field), "msg": str(exc), "type": "value_error"}]) from None


def _study_view(request: Request, study_id: int, charts: bool) -> dict:
    """The study's facts; with ``charts``, its hyper-parameters and the data of its charts too
    (the page's JSON twin). The HTML page neither restores the engine nor draws a chart, so it
    answers at once even when the engine of a new snapshot is still to be restored."""
    service = request.app.state.service
    store = service.store
    meta = data.study_meta(store, study_id)
    if meta is None:
        raise HTTPException(404, f"no study {study_id}")
    cut = _slice(request, meta["family"])
    view: dict[str, Any] = {"study": meta, "slice": cut, "landscape": None, "hyperparameters": []}
    if not charts:
        return view
    engine = None
    if meta["snapshot_version"]:
        version, engine = service.engines.get(study_id, meta["snapshot_version"])
        view["hyperparameters"] = data.hyperparameters(engine)
    view["terms"] = data.term_frequency(store, study_id)
    view["analysis"] = data.analysis(store, study_id, meta["family"])
    view["importance"] = None if engine is None else data.importance(engine)
    view["rewards"] = data.reward_series(store, study_id)
    if engine is not None and engine.adam.ready:
        key = (study_id, version, json.dumps(cut, sort_keys=True))
        landscape = request.app.state.landscapes.get(key, lambda: data.landscape(engine, cut))
        rewards = view["rewards"]  # colours over every observation's error, not only the snapshot's
        observed = [-min(rewards["reward_min"]), -max(rewards["reward_max"])] if rewards["reward_min"] else []
        view["landscape"] = landscape | {"log10_error_range": data.error_range(observed)}
    if meta["campaign_id"] is not None:
        view["campaign"] = data.campaign_state(store, meta["campaign_id"])
        view["campaign_charts"] = _campaign_charts(request, view["campaign"])
    return view


def _campaign_charts(request: Request, campaign: dict) -> dict:
    """A campaign's figures, rebuilt only when another of its tasks has succeeded (its rows are
    those tasks' results): polling an open page does not re-read every round each time."""
    from workers import campaigns

    key = (campaign["id"], campaign["tasks"]["succeeded"])
    return request.app.state.campaign_charts.get(
        key, lambda: data.campaign_charts(campaigns.rows(_store(request), campaign["id"]))
    )


def study_page(
    request: Request,
    study_id: PageId,
    who: Admin,
    rows: Rows,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    offset: Offset = 0,
) -> HTMLResponse:
    view = _study_view(request, study_id, charts=False)
    if view["study"]["snapshot_version"]:  # restore the engine while the browser loads the page
        service = request.app.state.service
        request.app.state.prefetch.submit(service.engines.get, study_id, view["study"]["snapshot_version"])
    observations = data.observations_page(_store(request), study_id, before, rows, offset)
    family = get_family(view["study"]["family"])
    kept = _kept(request, (*FILTER_KEYS, "x", "y", *(f"fix_{n}" for n in family.param_names)))
    return render(
        request,
        "study.html",
        who=who,
        view=view,
        study=view["study"],
        family=family,
        observations=observations,
        filters=kept,
        query=urlencode(kept),
        next_key="before" if rows.sort == "newest" else "offset",
        data_query=urlencode({k: v for k, v in kept.items() if k not in FILTER_KEYS}),
    )


def study_data(request: Request, study_id: PageId, who: Admin) -> Response:
    key = ("study", study_id, str(request.url.query))
    return cached_json(
        request, key, lambda: _study_view(request, study_id, charts=True), lambda: _study_source(request, study_id)
    )


def _study_source(request: Request, study_id: int) -> str:
    """What a study's data is built from, read cheaply: its facts (observation count, snapshot
    version, ...) and its campaign's state (the campaign charts show the other heuristics too)."""
    store = _store(request)
    meta = data.study_meta(store, study_id)
    campaign = None if meta is None or meta["campaign_id"] is None else data.campaign_state(store, meta["campaign_id"])
    return json.dumps([meta, campaign], sort_keys=True, default=str)


def observations_csv(request: Request, study_id: PageId, who: Admin) -> StreamingResponse:
    store = _store(request)
    study = study_store.get_study(store, study_id)
    if study is None:
        raise HTTPException(404, f"no study {study_id}")
    columns = with_params(OBSERVATION_COLUMNS, [study.family])
    return csv_response(f"study-{study_id}-observations", columns, flat_params(data.iter_observations(store, study_id)))


OBSERVATION_COLUMNS = [
    "id",
    "task_id",
    "params",
    "arm_adam",
    "arm_lbfgs",
    "reward",
    "reward_adam",
    "rel_l2",
    "status",
    "created_at",
]


# ---- campaigns --------------------------------------------------------------------------------------
FORM_DEFAULTS = {
    "family": "advection",
    "heuristics": ["ucb", "random"],
    "mode": "single",
    "warmup": 5,
    "rounds": 20,
    "test": 10,
    "batch": 4,
    "seed": 0,
    "adam": 500,
    "lbfgs": 500,
    "collocation": 1000,
    "boundary": 100,
    "dtype": "float32",
}


def _campaigns_view(request: Request, who, before: int | None, form: dict, errors: dict, status: int = 200):
    page = data.campaign_page(_store(request), before)
    return render(
        request,
        "campaigns.html",
        status,
        who=who,
        page=page,
        form=form,
        errors=errors,
        families=list(FAMILIES),
        heuristics=[name for name in POLICIES if name != FixedArm.name],
    )


def campaigns_page(
    request: Request, who: Admin, before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None
) -> HTMLResponse:
    return _campaigns_view(request, who, before, dict(FORM_DEFAULTS), {})


def _campaign_body(form) -> dict:
    """The form's fields as a campaign body (empty fields: the defaults)."""

    def number(name: str) -> Any:
        value = str(form.get(name) or "").strip()
        return value if value else FORM_DEFAULTS.get(name)

    heuristics = [str(h) for h in form.getlist("heuristics")]
    heuristics += [h.strip() for h in str(form.get("fixed") or "").split(";") if h.strip()]
    return {
        "family": str(form.get("family") or ""),
        "heuristics": heuristics,
        "mode": str(form.get("mode") or "single"),
        "warmup": number("warmup"),
        "rounds": number("rounds"),
        "test": number("test"),
        "batch": number("batch"),
        "seed": number("seed"),
        "budget": {"adam": number("adam"), "lbfgs": number("lbfgs")},
        "points": {"collocation": number("collocation"), "boundary": number("boundary")},
        "dtype": str(form.get("dtype") or "float32"),
    }


FIELD_OF = {("budget", "adam"): "adam", ("budget", "lbfgs"): "lbfgs"}


async def start_campaign(request: Request, who: Admin) -> Response:
    form = await request.form()
    shown = {k: form.get(k) for k in FORM_DEFAULTS} | {"heuristics": form.getlist("heuristics")}
    shown["fixed"] = form.get("fixed") or ""
    if not csrf_ok(request, form.get("csrf")):
        return _campaigns_view(request, who, None, shown, {"form": "the form expired: please send it again"}, 403)
    body = _campaign_body(form)
    # every bad field at once: the body's own errors and a missing heuristic together
    errors = {} if body["heuristics"] else {"heuristics": "choose at least one heuristic"}
    if not body["heuristics"]:
        body["heuristics"] = ["random"]  # a stand-in, so that the other fields are still checked
    try:
        parsed = CampaignBody.model_validate(body)
        if not errors:
            camp = await run_in_threadpool(create_campaign, request.app.state.service, parsed, who.name)
    except (ValidationError, RequestValidationError) as exc:
        errors |= _field_errors(exc.errors())
    if errors:
        return _campaigns_view(request, who, None, shown, errors, 422)
    return RedirectResponse(f"{request.scope.get('root_path', '')}/campaigns/{camp.id}", status_code=303)


def _field_errors(found: list[dict]) -> dict[str, str]:
    """Validation errors by form field (the first message of each field)."""
    errors: dict[str, str] = {}
    for e in found:
        loc = tuple(str(p) for p in e["loc"] if p != "body")
        name = FIELD_OF.get(loc[:2], loc[-1] if loc else "form")
        if name.isdigit() and loc:  # a list item (heuristics.0)
            name = loc[0]
        errors.setdefault(name, str(e["msg"]).removeprefix("Value error, "))
    return errors


def _campaign_view(request: Request, campaign_id: int, charts: bool) -> dict:
    store = _store(request)
    state = data.campaign_state(store, campaign_id)
    if state is None:
        raise HTTPException(404, f"no campaign {campaign_id}")
    state["studies"] = data.studies(store, campaign_id)
    return {"campaign": state, "charts": _campaign_charts(request, state) if charts else None}


def campaign_page(request: Request, campaign_id: PageId, who: Admin) -> HTMLResponse:
    view = _campaign_view(request, campaign_id, charts=False)
    return render(request, "campaign.html", who=who, view=view, campaign=view["campaign"])


def campaign_data(request: Request, campaign_id: PageId, who: Admin) -> Response:
    return etag_json(request, _campaign_view(request, campaign_id, charts=True))


def rounds_csv(request: Request, campaign_id: PageId, who: Admin) -> StreamingResponse:
    from workers import campaigns

    if campaign_store.get(_store(request), campaign_id) is None:
        raise HTTPException(404, f"no campaign {campaign_id}")
    rows = (r.record() for r in campaigns.rows(_store(request), campaign_id))
    columns = ["heuristic", "stage", "round", "context", "arm", "arm_lbfgs", "rel_l2", "reward", "status", "seconds"]
    return csv_response(f"campaign-{campaign_id}-rounds", columns, rows)


async def cancel_campaign(request: Request, campaign_id: PageId, who: Admin) -> Response:
    form = await request.form()
    if not csrf_ok(request, form.get("csrf")):
        raise HTTPException(403, "CSRF token missing or wrong")
    await run_in_threadpool(campaign_store.cancel, _store(request), campaign_id)
    return RedirectResponse(f"{request.scope.get('root_path', '')}/campaigns/{campaign_id}", status_code=303)


ROUTES = [
    ("/login", login_form, ["GET"]),
    ("/login", login, ["POST"]),
    ("/logout", logout, ["POST"]),
    ("/", overview_page, ["GET"]),
    ("/data/overview", overview_data, ["GET"]),
    ("/csv/workers", workers_csv, ["GET"]),
    ("/tasks", tasks_page, ["GET"]),
    ("/csv/tasks", tasks_csv, ["GET"]),
    ("/tasks/{task_id}", task_page, ["GET"]),
    ("/data/tasks/{task_id}", task_data, ["GET"]),
    ("/tasks/{task_id}/plot.png", task_plot, ["GET"]),
    ("/csv/tasks/{task_id}/loss", progress_csv, ["GET"]),
    ("/tasks/{task_id}/cancel", cancel_task, ["POST"]),
    ("/studies/{study_id}", study_page, ["GET"]),
    ("/data/studies/{study_id}", study_data, ["GET"]),
    ("/csv/studies/{study_id}/observations", observations_csv, ["GET"]),
    ("/campaigns", campaigns_page, ["GET"]),
    ("/campaigns", start_campaign, ["POST"]),
    ("/campaigns/{campaign_id}", campaign_page, ["GET"]),
    ("/data/campaigns/{campaign_id}", campaign_data, ["GET"]),
    ("/csv/campaigns/{campaign_id}/rounds", rounds_csv, ["GET"]),
    ("/campaigns/{campaign_id}/cancel", cancel_campaign, ["POST"]),
]

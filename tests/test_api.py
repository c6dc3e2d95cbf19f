"""The REST API over a real uvicorn server: solving end to end, tokens and roles, bad input."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from api.app import create_app
from api.service import Service
from metalic.store import tokens as token_store
from metalic.store.models import Base, TaskRow
from tests.conftest import LiveServer

TINY = {"budget": {"adam": 50, "lbfgs": 20}, "points": {"collocation": 200, "boundary": 50, "interface": 21}}


def rows(store) -> dict[str, int]:
    with store.read() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in Base.__subclasses__()}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def wait_for(client: httpx.Client, ids: list[int], headers: dict, timeout: float = 240) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        tasks = [client.get(f"/v1/tasks/{i}", headers=headers).json() for i in ids]
        if all(t["state"] in ("succeeded", "failed", "cancelled") for t in tasks):
            return tasks
        assert time.monotonic() < deadline, [t["state"] for t in tasks]
        time.sleep(0.25)


@pytest.mark.service
def test_twenty_solves_end_to_end_with_solution_predict_plot_and_a_recommendation(store, api_settings, ray_address):
    from workers.dispatcher import Dispatcher
    from workers.executors import RayExecutor

    token, _ = token_store.create(store, "ann", "user")
    dispatcher = Dispatcher(store, RayExecutor(store.url, api_settings), api_settings).start()
    service = Service(api_settings, store, dispatcher)
    try:
        with LiveServer(create_app(service)) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            ids = []
            for i in range(20):
                body = {**TINY, "params": {"beta": 1 + 1.4 * i}, "seed": i}
                r = client.post("/v1/families/advection/solve", json=body, headers=bearer(token))
                assert r.status_code == 202, r.text
                assert r.headers["Location"] == f"/v1/tasks/{r.json()['id']}" and r.json()["state"] == "queued"
                ids.append(r.json()["id"])
            tasks = wait_for(client, ids, bearer(token))
            assert [t["state"] for t in tasks] == ["succeeded"] * 20
            for t in tasks:
                assert t["result"]["status"] == "ok" and t["result"]["rel_l2"] > 0 and t["arm_adam"]
                sol = client.get(t["links"]["solution"], headers=bearer(token)).json()
                pred = np.asarray(sol["prediction"])
                assert pred.shape == (len(sol["axis0"]), len(sol["axis1"]))
                ref = np.asarray(sol["reference"])
                assert np.linalg.norm(pred - ref) / np.linalg.norm(ref) == pytest.approx(
                    t["result"]["rel_l2"], rel=1e-3
                )
                at = [[sol["axis0"][3], sol["axis1"][7]], [sol["axis0"][50], sol["axis1"][20]]]
                values = client.post(t["links"]["predict"], json={"points": at}, headers=bearer(token)).json()["values"]
                np.testing.assert_allclose(values, [pred[3, 7], pred[50, 20]], rtol=1e-4, atol=1e-5)
                png = client.get(t["links"]["plot"], headers=bearer(token))
                assert png.headers["content-type"] == "image/png"
                assert Image.open(io.BytesIO(png.content)).size[0] > 600
            npz = client.get(tasks[0]["links"]["solution"], headers={**bearer(token), "Accept": "application/x-npz"})
            assert set(np.load(io.BytesIO(npz.content)).files) >= {"prediction", "reference", "axis0", "axis1"}
            dispatcher.wait_idle()
            rec = client.get(
                "/v1/families/advection/recommendation", params={"beta": 7.5, "top": 3}, headers=bearer(token)
            )
            assert rec.status_code == 200, rec.text
            body = rec.json()
            assert body["observations"] >= 20 and body["snapshot_version"] >= 1 and len(body["arms"]) == 3
            for arm in body["arms"]:
                lo, hi = arm["error_interval"]
                assert lo < arm["predicted_error"] < hi
            assert body["source"] == "snapshot" and body["prior"] is None and body["rank"] == "lcb"
            # ranked by the upper end of the error's interval, with the trainings behind each arm
            assert body["arms"][0]["error_interval"][1] <= body["arms"][1]["error_interval"][1]
            assert sum(a["observations"] for a in body["arms"]) <= body["observations"]
            page = client.get("/v1/tasks", params={"state": "succeeded", "limit": 15}, headers=bearer(token)).json()
            assert len(page["items"]) == 15 and page["next"]
            rest = client.get(page["next"], headers=bearer(token)).json()
            assert len(rest["items"]) == 5 and rest["next"] is None
            assert {t["id"] for t in page["items"] + rest["items"]} == set(ids)
            metrics = client.get("/metrics").text
            assert 'metalic_tasks{state="succeeded"} 20.0' in metrics
            assert client.get("/readyz").json()["status"] == "ready"
    finally:
        dispatcher.stop()


@pytest.fixture
def api(sqlite_store, api_settings):
    """A served app without trainers (tasks stay queued): for security and bad-input checks."""
    service = Service(api_settings, sqlite_store)
    with LiveServer(create_app(service)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client, sqlite_store


def test_tokens_and_roles(api):
    client, store = api
    ann, _ = token_store.create(store, "ann", "user")
    bob, _ = token_store.create(store, "bob", "user")
    root, _ = token_store.create(store, "root", "admin")
    assert client.get("/v1/families").status_code == 401
    assert client.get("/v1/families", headers=bearer("mtl_nope")).status_code == 401
    assert client.get("/v1/families", headers={"Authorization": f"Basic {ann}"}).status_code == 401
    for path in ("/v1/workers", "/v1/studies", "/v1/campaigns"):
        assert client.get(path, headers=bearer(ann)).status_code == 403
        assert client.get(path, headers=bearer(root)).status_code == 200
    assert client.post("/v1/campaigns", json={"family": "heat"}, headers=bearer(ann)).status_code == 403
    task = client.post("/v1/families/heat/solve", json=TINY, headers=bearer(ann)).json()
    assert task["owner"] == "ann"
    base = f"/v1/tasks/{task['id']}"
    for method, path in (
        ("GET", base),
        ("POST", base + "/cancel"),
        ("GET", base + "/solution"),
        ("POST", base + "/predict"),
        ("GET", base + "/plot.png"),
    ):
        body = {"points": [[0.1, 0.1]]} if path.endswith("predict") else None
        other = client.request(method, path, json=body, headers=bearer(bob))
        missing = client.request(method, "/v1/tasks/999999" + path[len(base) :], json=body, headers=bearer(bob))
        assert other.status_code == missing.status_code == 404  # not 403: ids do not leak
    assert client.get("/v1/tasks", headers=bearer(bob)).json()["items"] == []
    assert client.get(base, headers=bearer(root)).status_code == 200  # admins see every task
    assert client.get(base, headers=bearer(ann)).json()["state"] == "queued"
    assert token_store.revoke(store, "ann") == 1
    assert client.get(base, headers=bearer(ann)).status_code == 401


@pytest.mark.parametrize(
    ("path", "payload", "status", "loc", "message"),
    [
        ("/v1/families/burgers/solve", {"params": {"nu": 0.5}}, 422, ["body", "params"], "nu=0.5 is outside"),
        ("/v1/families/burgers/solve", {"params": {"mu": 0.1}}, 422, ["body", "params"], "unknown parameter 'mu'"),
        ("/v1/families/navier/solve", {}, 404, None, "unknown family 'navier'"),
        ("/v1/families/burgers/solve", {"arm": "u,jump"}, 422, ["body", "arm"], "unknown interface term 'jump'"),
        ("/v1/families/burgers/solve", {"budget": {"adam": 10**7}}, 422, ["body", "budget", "adam"], "at most 50000"),
        (
            "/v1/families/burgers/solve",
            {"points": {"collocation": 10**7}},
            422,
            ["body", "points", "collocation"],
            "at most 20000",
        ),
        ("/v1/families/burgers/solve", {"seed": "abc"}, 422, ["body", "seed"], "valid integer"),
        ("/v1/families/burgers/solve", {"params": {"nu": "thick"}}, 422, ["body", "params", "nu"], "valid number"),
        (
            "/v1/families/burgers/solve",
            {"budget": {"adam": -1}},
            422,
            ["body", "budget", "adam"],
            "greater than or equal",
        ),
        ("/v1/families/burgers/solve", {"colour": "red"}, 422, ["body", "colour"], "Extra inputs"),
        ("/v1/families/burgers/solve", {"arm_lbfgs": "u"}, 422, ["body", "arm_lbfgs"], "sequential"),
        ("/v1/families/poisson/solve", {"final_time_data": True}, 422, ["body", "final_time_data"], "time-dependent"),
        ("/v1/families/burgers/solve", {"side_data": True}, 422, ["body", "side_data"], "periodic family"),
        ("/v1/families/poisson/solve", {"recipe": {"causal": True}}, 422, ["body", "recipe", "causal"], "steady"),
        ("/v1/families/burgers/solve", {"recipe": {"march": True}}, 422, ["body", "recipe", "march"], "along x"),
        (
            "/v1/families/kdv/solve",
            {"recipe": {"causal": True, "eps": [10, 1]}},
            422,
            ["body", "recipe", "eps"],
            "must not decrease",
        ),
        ("/v1/families/kdv/solve", {"recipe": {"chunks": 0}}, 422, ["body", "recipe", "chunks"], "greater than"),
        (
            "/v1/families/burgers/solve",
            {"mode": "sequential", "arm": "single-domain", "arm_lbfgs": "u,flux"},
            422,
            ["body", "arm_lbfgs"],
            "goes on as one network",
        ),
        ("/v1/campaigns", {"family": "heat", "heuristics": ["greedy"]}, 422, ["body", "heuristics"], "greedy"),
        ("/v1/campaigns", {"family": "heat", "batch": 0}, 422, ["body", "batch"], "at least 1"),
        ("/v1/campaigns", {"family": "navier"}, 422, ["body", "family"], "unknown family"),
        ("/v1/campaigns", {"family": "poisson", "learns": ["causal"]}, 422, ["body", "learns"], "steady"),
        ("/v1/campaigns", {"family": "heat", "learns": ["march"]}, 422, ["body", "learns"], "recipe bits are"),
        ("/v1/campaigns", {"family": "heat", "recipe": {"causal": True}}, 422, ["body", "recipe"], "learns"),
        ("/v1/campaigns", {"family": "heat", "arm_kernel": "linear"}, 422, ["body", "arm_kernel"], "hamming"),
        ("/v1/campaigns", {"family": "heat", "warmup_arms": ["u", "nope"]}, 422, ["body", "warmup_arms"], "'nope'"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(api, path, payload, status, loc, message):
    client, store = api
    root, _ = token_store.create(store, "root", "admin")
    before = rows(store)
    r = client.post(path, json=payload, headers=bearer(root))
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    if loc is None:
        assert message in detail
    else:
        assert detail[0]["loc"] == loc and message in detail[0]["msg"], detail
    assert rows(store) == before


def test_malformed_json_oversized_bodies_and_too_many_points_are_refused(api):
    client, store = api
    root, _ = token_store.create(store, "root", "admin")
    task = client.post("/v1/families/heat/solve", json=TINY, headers=bearer(root)).json()
    before = rows(store)
    h = {**bearer(root), "Content-Type": "application/json"}
    bad = client.post("/v1/families/heat/solve", content=b'{"params": {"a": 1.0,', headers=h)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][0] == "body"
    assert "JSON" in bad.json()["detail"][0]["msg"]
    big = {"params": {"a": 1.0}, "arm": "u" + ",u" * 20_000}
    huge = client.post("/v1/families/heat/solve", json=big, headers=bearer(root))
    assert huge.status_code == 413 and "larger than 20000 bytes" in huge.json()["detail"][0]["msg"]
    chunks = (b"u," * 1000 if i else b'{"arm": "' for i in range(16))  # no Content-Length: streamed
    streamed = client.post("/v1/families/heat/solve", content=chunks, headers=h)
    assert streamed.status_code == 413
    many = client.post(f"/v1/tasks/{task['id']}/predict", json={"points": [[0.1, 0.2]] * 501}, headers=bearer(root))
    assert many.status_code == 422 and many.json()["detail"][0]["loc"] == ["body", "points"]
    assert "at most 500 points" in many.json()["detail"][0]["msg"]
    assert client.get("/v1/tasks", params={"state": "done"}, headers=bearer(root)).status_code == 422
    assert rows(store) == before


def test_idempotency_key_returns_the_same_task(api):
    client, store = api
    token, _ = token_store.create(store, "ann", "user")
    h = {**bearer(token), "Idempotency-Key": "order-17"}
    first = client.post("/v1/families/heat/solve", json=TINY, headers=h)
    again = client.post("/v1/families/heat/solve", json=TINY, headers=h)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/v1/families/heat/solve", json={**TINY, "seed": 9}, headers=h)
    assert other.status_code == 409
    assert rows(store)["tasks"] == 1


def test_families_docs_and_cancel(api):
    client, store = api
    token, _ = token_store.create(store, "ann", "user")
    families = client.get("/v1/families", headers=bearer(token)).json()
    assert {f["name"] for f in families} >= {"poisson", "heat", "advection", "reaction", "burgers", "kdv"}
    burgers = client.get("/v1/families/burgers", headers=bearer(token)).json()
    assert burgers["params"][0] == {"name": "nu", "lo": 0.001, "hi": 0.05, "default": 0.01, "description": "viscosity"}
    assert len(burgers["terms"]) == 9 and burgers["default_budget"] == {"adam": 1000, "lbfgs": 1000}
    assert client.get("/openapi.json").json()["info"]["title"] == "metalic"
    assert "swagger" in client.get("/docs").text.lower()
    task = client.post("/v1/families/heat/solve", json=TINY, headers=bearer(token)).json()
    cancelled = client.post(f"/v1/tasks/{task['id']}/cancel", headers=bearer(token))
    assert cancelled.json()["state"] == "cancelled"
    assert client.post(f"/v1/tasks/{task['id']}/cancel", headers=bearer(token)).status_code == 409
    assert client.get(f"/v1/tasks/{task['id']}/solution", headers=bearer(token)).status_code == 409
    none_yet = client.get("/v1/families/kdv/recommendation", headers=bearer(token))  # priors are off here
    assert none_yet.status_code == 200 and none_yet.json()["source"] == "none" and none_yet.json()["arms"] == []
    assert "nothing learned yet" in none_yet.json()["detail"]
    with store.read() as s:
        assert s.get(TaskRow, task["id"]).state == "cancelled"

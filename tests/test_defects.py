"""The probe's defects D2-D12, each as the behaviour a user or an operator meets (each of these
failed on the tree before the fix: cb049e0)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.service import Service
from metalic.campaign import CampaignConfig
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import TrainConfig
from metalic.settings import Settings
from metalic.store import Store
from metalic.store import campaigns as campaign_store
from metalic.store import tokens as token_store
from metalic.store import workers as worker_store

TINY = {"budget": {"adam": 5, "lbfgs": 5}, "points": {"collocation": 20, "boundary": 10, "interface": 5}}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def app(sqlite_store, tmp_path):
    settings = Settings(home=tmp_path / "home", token_cache_seconds=0.0, heartbeat_seconds=0.05, max_body_bytes=20_000)
    service = Service(settings, sqlite_store)
    client = TestClient(create_app(service))
    user, _ = token_store.create(sqlite_store, "ann", "user")
    admin, _ = token_store.create(sqlite_store, "root", "admin")
    return client, sqlite_store, service, user, admin


def _utc(value: str) -> bool:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).utcoffset() == timedelta(0)


def test_d2_every_timestamp_carries_its_offset(app):
    client, store, _, user, admin = app
    task = client.post("/v1/families/advection/solve", json=TINY, headers=bearer(user)).json()
    worker_store.register(store, worker_store.TRAINER, "cpu")
    small = {"train": TrainConfig(adam=5, lbfgs=5), "pinn": PinnConfig(n_collocation=20, n_boundary=10)}
    config = CampaignConfig(family="advection", policies=("ucb",), warmup=1, rounds=1, test=1, **small)
    campaign_store.create(store, config, owner="root")
    stamps = [task["created_at"], client.get(f"/v1/tasks/{task['id']}", headers=bearer(user)).json()["created_at"]]
    stamps += [
        w[k] for w in client.get("/v1/workers", headers=bearer(admin)).json() for k in ("started_at", "last_seen")
    ]
    stamps += [c["created_at"] for c in client.get("/v1/campaigns", headers=bearer(admin)).json()]
    assert len(stamps) == 5 and all(_utc(s) for s in stamps), stamps
    dashboard = _dashboard_login(client, admin)
    overview = dashboard.get("/dashboard/data/overview").json()
    assert _utc(overview["now"]) and all(_utc(w["last_seen"]) for w in overview["workers"])
    detail = dashboard.get(f"/dashboard/data/tasks/{task['id']}").json()["task"]
    assert _utc(detail["created_at"])


def _dashboard_login(client: TestClient, token: str) -> TestClient:
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/dashboard/login").text).group(1)
    r = client.post("/dashboard/login", data={"token": token, "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return client


def test_d3_an_empty_or_short_secret_key_is_never_the_signing_key(sqlite_store, tmp_path):
    from itsdangerous import TimestampSigner

    from api.dashboard.session import SecretKeyError

    home = tmp_path / "home"
    home.mkdir()
    (home / "secret-key").write_text("\n")  # an empty key file
    _, row = token_store.create(sqlite_store, "root", "admin")
    client = TestClient(create_app(Service(Settings(home=home, token_cache_seconds=0.0), sqlite_store)))
    key = (home / "secret-key").read_text().strip()
    assert len(key) >= 32 and stat.S_IMODE((home / "secret-key").stat().st_mode) == 0o600
    # a cookie signed with the empty key (what someone who read a token's hash could forge) is no session
    import base64
    import json

    payload = base64.b64encode(json.dumps({"token": row.digest, "sid": "x"}).encode())
    forged = TimestampSigner("").sign(payload).decode()
    client.cookies.set("metalic_session", forged, path="/dashboard")
    assert client.get("/dashboard/data/overview").status_code == 401
    with pytest.raises(SecretKeyError, match="at least 32 characters"):
        create_app(Service(Settings(home=home, secret_key="short"), sqlite_store))


def test_d6_the_first_admin_token_is_kept_privately_or_not_at_all(sqlite_store, tmp_path):
    from api.serve import AdminTokenError, first_admin_token

    blocked = tmp_path / "a-file"
    blocked.write_text("")  # home cannot be a folder below a file
    with pytest.raises(AdminTokenError, match="cannot write the admin token"):
        first_admin_token(sqlite_store, Settings(home=blocked / "home"))
    assert token_store.count(sqlite_store) == 0  # no token stored that nobody was given
    home = tmp_path / "home"
    home.mkdir()
    (home / "admin-token").write_text("old\n")
    os.chmod(home / "admin-token", 0o644)
    path = first_admin_token(sqlite_store, Settings(home=home))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token_store.lookup(sqlite_store, path.read_text().strip()).role == "admin"


def test_d6_serve_says_in_one_line_that_it_cannot_keep_the_token(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    env = {**os.environ, "METALIC_HOME": str(blocked / "home"), "METALIC_DATABASE_URL": f"sqlite:///{tmp_path}/s.db"}
    run = subprocess.run([sys.executable, "-m", "metalic.cli", "serve", "--port", "18751"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("metalic: error: cannot write the admin token")
    assert "Traceback" not in run.stderr
    assert token_store.count(Store(f"sqlite:///{tmp_path}/s.db")) == 0


def test_d7_logging_out_ends_a_copied_session(app):
    client, _, _, _, admin = app
    _dashboard_login(client, admin)
    copy = TestClient(client.app)
    copy.cookies.update(client.cookies)
    assert copy.get("/dashboard/data/overview").status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/dashboard/").text).group(1)
    assert client.post("/dashboard/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert copy.get("/dashboard/data/overview").status_code == 401


def test_d8_readyz_names_failed_checks_without_urls_hosts_or_pids(sqlite_store, tmp_path):
    from api.serve import trainers_failed
    from workers.dispatcher import Dispatcher
    from workers.executors import InlineExecutor

    broken = Store("postgresql+psycopg://metalic:hunter2secret@127.0.0.1:1/nowhere")
    body = TestClient(create_app(Service(Settings(home=tmp_path), broken))).get("/readyz")
    assert body.status_code == 503 and body.json()["checks"]["database"] == "unreachable"
    for leak in ("127.0.0.1", "hunter2", "nowhere", "postgresql", ":1"):
        assert leak not in body.text
    settings = Settings(home=tmp_path)
    running = Dispatcher(sqlite_store, InlineExecutor(sqlite_store, settings, "cpu"), settings)
    try:
        second = InlineExecutor(sqlite_store, settings, "cpu")
        with pytest.raises(Exception) as refused:
            Dispatcher(sqlite_store, second, settings)
        second.shutdown()
        service = Service(settings, sqlite_store)
        service.started, service.dispatcher_error = True, trainers_failed(refused.value)
        text = TestClient(create_app(service)).get("/readyz").text
        assert "another dispatcher is running" in text
        assert str(os.getpid()) not in text and os.uname().nodename not in text
    finally:
        running.stop()


def test_d9_predict_looks_at_the_task_first_even_with_no_points(app):
    client, _, _, user, _ = app
    r = client.post("/v1/tasks/999999/predict", json={"points": []}, headers=bearer(user))
    assert r.status_code == 404
    queued = client.post("/v1/families/advection/solve", json=TINY, headers=bearer(user)).json()
    assert (
        client.post(f"/v1/tasks/{queued['id']}/predict", json={"points": []}, headers=bearer(user)).status_code == 409
    )


def test_d10_an_empty_arm_is_refused(app):
    client, store, _, user, _ = app
    for arm in ("", "  "):
        r = client.post("/v1/families/advection/solve", json={**TINY, "arm": arm}, headers=bearer(user))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "arm"]
    assert token_store.count(store) == 2 and client.get("/v1/tasks", headers=bearer(user)).json()["items"] == []


def test_d11_choosing_a_study_is_for_admins_as_the_studies_are(app):
    client, _, _, user, admin = app
    r = client.get("/v1/families/advection/recommendation", params={"study": 1}, headers=bearer(user))
    assert r.status_code == 403
    assert client.get("/v1/studies", headers=bearer(user)).status_code == 403
    r = client.get("/v1/families/advection/recommendation", params={"study": 1}, headers=bearer(admin))
    assert r.status_code == 404  # an admin may ask; there is no study 1 of advection here


def test_d12_an_empty_idempotency_key_is_refused(app):
    client, _, _, user, _ = app
    for _ in range(2):
        r = client.post("/v1/families/advection/solve", json=TINY, headers={**bearer(user), "Idempotency-Key": ""})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "idempotency-key"
    assert client.get("/v1/tasks", headers=bearer(user)).json()["items"] == []


def test_d1_a_device_no_trainer_serves_is_refused_at_submit(app):
    client, store, _, user, _ = app
    r = client.post("/v1/families/advection/solve", json={**TINY, "device": "cuda"}, headers=bearer(user))
    assert r.status_code == 202  # no trainer alive: nothing can be said (it fails later if none comes)
    worker_store.register(store, worker_store.TRAINER, "cpu")
    time.sleep(0.1)  # the service looks at its trainers at most every heartbeat (0.05 s here)
    r = client.post("/v1/families/advection/solve", json={**TINY, "device": "cuda"}, headers=bearer(user))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "device"]
    assert "no trainer of this cluster serves cuda (it serves: cpu)" in r.json()["detail"][0]["msg"]
    r = client.post("/v1/families/advection/solve", json={**TINY, "device": "cpu"}, headers=bearer(user))
    assert r.status_code == 202


def test_quotas_a_user_s_open_tasks_and_a_request_s_cost(sqlite_store, tmp_path):
    service = Service(Settings(home=tmp_path, max_queued_per_user=3), sqlite_store)
    client = TestClient(create_app(service))
    ann, _ = token_store.create(sqlite_store, "ann", "user")
    bob, _ = token_store.create(sqlite_store, "bob", "user")
    codes = [client.post("/v1/families/advection/solve", json=TINY, headers=bearer(ann)).status_code for _ in range(4)]
    assert codes == [202, 202, 202, 429]
    assert client.post("/v1/families/advection/solve", json=TINY, headers=bearer(bob)).status_code == 202
    huge = {"budget": {"adam": 50_000, "lbfgs": 50_000}, "points": {"collocation": 20_000}, "subdomains": 16}
    r = client.post("/v1/families/advection/solve", json=huge, headers=bearer(bob))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "budget", "adam"]
    assert "above the server's cap" in r.json()["detail"][0]["msg"]


def test_schema_lists_the_new_answers(app):
    client = app[0]
    spec = client.get("/openapi.json").json()
    solve = spec["paths"]["/v1/families/{family}/solve"]["post"]["responses"]
    assert "429" in solve
    assert httpx.codes.TOO_MANY_REQUESTS == 429

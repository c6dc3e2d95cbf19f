"""Priors: a study's GP stacked on its family's prior (metalic.bandit.transfer, metalic.priors),
and recommendations ranked by the pessimistic end of their interval."""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import pytest
import torch

from metalic import priors
from metalic.arms import Arm
from metalic.bandit.engine import BanditEngine, Observation, prior_engine
from metalic.priors import Prior

A = Arm.parse("u,flux")
B = Arm.parse("res,uxx")


def truth(beta: float, arm: Arm) -> float:
    """Advection, a planted reward: A is best below beta 15.5, B above; -0.4 per differing bit."""
    best = A if beta < 15.5 else B
    return 3.0 - 0.4 * sum(x != y for x, y in zip(arm.term_mask, best.term_mask, strict=True))


def prior_of(n: int = 40, seed: int = 0, family: str = "advection", version: int = 1) -> Prior:
    """A prior fitted to ``n`` planted trainings at random arms and parameters."""
    engine = BanditEngine(family, seed=seed)
    g = torch.Generator().manual_seed(seed)
    obs = []
    for _ in range(n):
        beta = 1 + 29 * float(torch.rand(1, generator=g))
        arm = A if len(obs) % 4 == 0 else B if len(obs) % 4 == 1 else Arm(int(torch.randint(512, (1,), generator=g)))
        obs.append(Observation({"beta": beta}, arm, truth(beta, arm) + 0.05 * float(torch.randn(1, generator=g))))
    engine.observe(*obs)
    snapshot = json.loads(json.dumps(engine.snapshot()))
    return Prior(family, "single", version, {"command": "test"}, snapshot, Path(f"{family}-single-v{version}.json"))


@pytest.fixture(scope="module")
def prior() -> Prior:
    return prior_of()


def test_without_observations_of_its_own_an_engine_predicts_what_its_prior_does(prior):
    engine = BanditEngine("advection", seed=3, prior=prior)
    assert engine.adam.ready and not engine.adam.own_ready
    for beta in (3.0, 12.0, 25.0):
        got = engine.recommend({"beta": beta}, top=5, rank="mean")
        want = prior_engine(prior).recommend({"beta": beta}, top=5, rank="mean")
        assert [r.arm for r in got] == [r.arm for r in want]
        assert [r.reward_mean for r in got] == pytest.approx([r.reward_mean for r in want], abs=1e-12)
        assert [r.reward_std for r in got] == pytest.approx([r.reward_std for r in want], abs=1e-12)
        assert got[0].prior_observations > 0 and got[0].observations == 0
    # and a policy picks with the prior from the first training (no random arm)
    assert engine.suggest({"beta": 5.0}, policy="mean") == [A]
    assert BanditEngine("advection", seed=3).adam.ready is False


def test_the_prior_fades_where_the_study_s_own_trainings_disagree_with_it(prior):
    """A family whose arm A became poor at small beta (a different budget, say): the study's own
    observations correct the prior's mean there, and the uncertainty becomes the study's own."""
    engine = BanditEngine("advection", seed=4, prior=prior)
    g = torch.Generator().manual_seed(9)
    shares = []
    for k in range(24):
        beta = 1 + 9 * float(torch.rand(1, generator=g))
        arm = A if k % 2 == 0 else B
        reward = (1.0 if arm == A else 2.5) + 0.05 * float(torch.randn(1, generator=g))
        engine.observe(Observation({"beta": beta}, arm, reward))
        shares.append(engine.adam.predictor.alpha)
    assert shares[0] == 0  # one observation: no GP of its own yet
    assert all(b > a for a, b in itertools.pairwise(shares)) and 0 < shares[1] < 0.1 < shares[-1] < 1
    top = engine.recommend({"beta": 5.0}, top=2, rank="mean")
    assert top[0].arm == B and top[0].reward_mean == pytest.approx(2.5, abs=0.15)
    assert prior_engine(prior).recommend({"beta": 5.0}, top=1, rank="mean")[0].arm == A  # what the prior alone says
    # far from the study's data (beta 25) the prior still speaks: B is best there in both
    assert engine.recommend({"beta": 25.0}, top=1, rank="mean")[0].arm == B


def test_a_snapshot_names_its_prior_and_restores_with_it(prior, tmp_path, monkeypatch):
    prior = Prior("advection", "single", 90, prior.provenance, prior.snapshot, tmp_path)  # a version nobody ships
    path = tmp_path / f"{prior.ref}.json"
    path.write_text(json.dumps(prior.to_json()))
    monkeypatch.setenv("METALIC_PRIOR_PATH", str(tmp_path))
    from metalic.settings import get_settings

    get_settings.cache_clear()
    try:
        engine = BanditEngine("advection", seed=5, prior=priors.load(prior.ref))
        engine.observe(*(Observation({"beta": b}, A, truth(b, A) - 0.5) for b in (2.0, 4.0, 6.0)))
        snap = json.loads(json.dumps(engine.snapshot()))
        assert snap["prior"] == "advection-single-v90"
        clone = BanditEngine.from_snapshot(snap)
        assert clone.prior.ref == prior.ref
        assert [r.arm for r in clone.recommend({"beta": 20.0})] == [r.arm for r in engine.recommend({"beta": 20.0})]
        assert clone.suggest({"beta": 8.0}) == engine.suggest({"beta": 8.0})
        # a snapshot naming a prior that is not installed is refused with its name
        monkeypatch.setenv("METALIC_PRIOR_PATH", str(tmp_path / "elsewhere"))
        get_settings.cache_clear()
        with pytest.raises(ValueError, match="advection-single-v90"):
            BanditEngine.from_snapshot(snap)
    finally:
        get_settings.cache_clear()


def test_a_prior_of_another_family_or_mode_is_refused(prior):
    with pytest.raises(ValueError, match="prior: advection-single-v1 is not a prior of reaction"):
        BanditEngine("reaction", prior=prior)
    with pytest.raises(ValueError, match="sequential"):
        BanditEngine("advection", mode="sequential", prior=prior)


def test_an_arm_nobody_tried_is_not_recommended_on_its_prior_mean_alone():
    """Six trainings of three arms, poor at small nu and good at large nu: at small nu, by
    posterior mean, an arm never tried (it keeps the GP's prior mean, about the average of what was
    seen) beats every observed one there; ranked by the pessimistic end of the interval, the best
    observed arm comes first, with its count."""
    engine = BanditEngine("burgers", seed=1)
    arms = [Arm.parse("flux"), Arm.parse("u,flux"), Arm.parse("all")]
    for nus, rewards in (((0.005, 0.008, 0.012), (-0.4, -0.5, -0.7)), ((0.03, 0.04, 0.045), (1.0, 0.9, 0.7))):
        for nu, arm, reward in zip(nus, arms, rewards, strict=True):
            engine.observe(Observation({"nu": nu}, arm, reward))
    by_mean = engine.recommend({"nu": 0.007}, top=3, rank="mean")
    assert by_mean[0].observations == 0  # the failure the ranking fixes
    safe = engine.recommend({"nu": 0.007}, top=3)
    assert safe[0].arm == arms[0] and safe[0].observations == 2, safe
    lo, hi = safe[0].error_interval
    assert all(r.error_interval[1] >= hi for r in safe[1:])  # ordered by the upper end of the error
    assert math.isclose(lo, 10 ** -(safe[0].reward_mean + 1.96 * safe[0].reward_std))
    with pytest.raises(ValueError, match="rank"):
        engine.recommend({"nu": 0.015}, rank="best")


@pytest.fixture
def installed_prior(tmp_path, monkeypatch):
    """advection-single-v9 installed in a folder of METALIC_PRIOR_PATH, priors on; built (says its
    provenance) at the test's tiny budget and at a solve's default, so it is the nearest prior."""
    from dataclasses import replace

    from metalic.settings import get_settings

    folder = tmp_path / "priors"
    folder.mkdir()
    budgets = [{"adam": 20, "lbfgs": 5, "collocation": 32}, {"adam": 1000, "lbfgs": 1000, "collocation": 1000}]
    made = replace(prior_of(24, seed=2), version=9, provenance={"command": "test", "profiles": budgets})
    (folder / f"{made.ref}.json").write_text(json.dumps(made.to_json()))
    monkeypatch.setenv("METALIC_PRIORS", "on")
    monkeypatch.setenv("METALIC_PRIOR_PATH", str(folder))
    get_settings.cache_clear()
    yield priors.load(made.ref)
    get_settings.cache_clear()


def test_the_recommendation_answers_from_the_prior_then_from_the_study_that_stands_on_it(store, installed_prior):
    """Before anything is solved: the prior's answer. Learned solves go to a study that records the
    prior; once it has a snapshot, the study answers (on the same prior). A solve that asks for no
    prior goes to a study of its own without one."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.service import Service
    from metalic.settings import Settings
    from metalic.store import studies as study_store
    from metalic.store import tokens as token_store
    from workers.dispatcher import Dispatcher
    from workers.executors import InlineExecutor

    settings = Settings(token_cache_seconds=0.0, snapshot_check_seconds=0.0, poll_seconds=0.05)
    client = TestClient(create_app(Service(settings, store)))
    token, _ = token_store.create(store, "ann", "admin")
    auth = {"Authorization": f"Bearer {token}"}
    url = "/v1/families/advection/recommendation"

    first = client.get(url, params={"beta": 5.0, "top": 3}, headers=auth).json()
    assert first["source"] == "prior" and first["prior"] == installed_prior.ref and first["study_id"] is None
    assert len(first["arms"]) == 3 and first["arms"][0]["prior_observations"] > 0 and first["observations"] == 0
    assert "24 trainings" in first["detail"]
    for arm in first["arms"]:
        lo, hi = arm["error_interval"]
        assert lo < arm["predicted_error"] < hi
    nothing = client.get("/v1/families/nan-test/recommendation", headers=auth)  # a plugin family, no prior
    assert nothing.status_code == 200 and nothing.json()["source"] == "none" and nothing.json()["arms"] == []

    body = {"budget": {"adam": 20, "lbfgs": 5}, "points": {"collocation": 32, "boundary": 8, "interface": 5}}
    ids = [
        client.post("/v1/families/advection/solve", json={**body, "params": {"beta": b}, "seed": i}, headers=auth)
        .raise_for_status()
        .json()["id"]
        for i, b in enumerate((3.0, 9.0, 20.0))
    ]
    own = client.post(
        "/v1/families/advection/solve", json={**body, "params": {"beta": 4.0}, "prior": False}, headers=auth
    ).json()
    studies = {s.study.key: s.study for s in study_store.list_studies(store, family="advection")}
    assert sorted(s.prior or "-" for s in studies.values()) == ["-", installed_prior.ref]
    assert next(k for k, s in studies.items() if s.prior is None).endswith("/no-prior")
    waiting = client.get(url, params={"beta": 5.0}, headers=auth).json()
    assert waiting["source"] == "prior" and waiting["study_id"] is not None  # the study has no snapshot yet

    dispatcher = Dispatcher(store, InlineExecutor(store, settings, "cpu", max_batch=8), settings, max_batch=8).start()
    try:
        dispatcher.wake.set()
        deadline = time.monotonic() + 120
        while any(client.get(f"/v1/tasks/{i}", headers=auth).json()["state"] in ("queued", "running") for i in ids):
            assert time.monotonic() < deadline, "the solves did not finish"
            time.sleep(0.1)
        dispatcher.wait_idle(120)
        states = [client.get(f"/v1/tasks/{i}", headers=auth).json() for i in (*ids, own["id"])]
        assert all(t["state"] == "succeeded" for t in states), states
        answer = client.get(url, params={"beta": 5.0, "top": 3}, headers=auth).json()
        assert answer["source"] == "snapshot" and answer["prior"] == installed_prior.ref
        assert answer["snapshot_version"] >= 1 and answer["observations"] == 3
    finally:
        dispatcher.stop()


def test_metalic_prior_build_writes_a_versioned_file_with_its_provenance(tmp_path, monkeypatch, capsys):
    """The command a maintainer runs, in this process (a tiny inline campaign): the file is named
    by its content, records where it came from, and is what the next study starts from."""
    from metalic.cli import main
    from metalic.settings import get_settings

    monkeypatch.setenv("METALIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("METALIC_PRIORS", "on")
    monkeypatch.setenv("METALIC_PRIOR_PATH", str(tmp_path / "made"))
    get_settings.cache_clear()
    tiny = ["--adam", "5", "--lbfgs", "3", "--collocation", "20", "--boundary", "8", "--interface-points", "5"]
    args = ["prior", "build", "advection", "--warmup", "2", "--rounds", "2", "--test", "1", "--batch", "4"]
    try:
        assert main([*args, *tiny, "--seed", "1001", "--inline", "--quiet", "--into", str(tmp_path / "made")]) == 0
        assert "advection-single-v1: 5 trainings" in capsys.readouterr().out
        made = priors.read(tmp_path / "made" / "advection-single-v1.json")
        prov = made.provenance
        assert made.trainings == 5 and prov["trainings"] == 5 and prov["campaign"]["seed"] == 1001
        assert prov["profiles"][0]["adam"] == 5 and prov["command"].startswith("metalic prior build advection")
        assert prov["commit"] and prov["date"].startswith("20") and prov["device"].startswith("cpu")
        at_its_budget = {"adam": 5, "lbfgs": 3, "collocation": 20}
        assert priors.for_budget("advection", "single", at_its_budget).ref == "advection-single-v1"
        assert main(["prior", "list"]) == 0 and "advection-single-v1" in capsys.readouterr().out
        # bad input: one line, exit 2, nothing written
        assert main(["prior", "build", "navier", "--into", str(tmp_path / "made"), "--inline"]) == 2
        assert "unknown family 'navier'" in capsys.readouterr().err
        assert sorted(p.name for p in (tmp_path / "made").iterdir()) == ["advection-single-v1.json"]
    finally:
        get_settings.cache_clear()


BUILT_IN = ("poisson", "heat", "advection", "reaction", "burgers", "kdv")


@pytest.mark.parametrize("mode", ["single", "sequential"])
def test_every_built_in_family_ships_a_prior_that_says_where_it_came_from(mode):
    for family in BUILT_IN:
        found = priors.installed(family, mode)
        assert found, f"no shipped {mode} prior for {family}"
        for ref, path in found.items():
            made = priors.read(path)
            assert path.parent == priors.PACKAGE_DIR and made.ref == ref and made.snapshot.get("prior") is None
            prov = made.provenance
            assert prov["command"].startswith(f"metalic prior build {family}") and prov["trainings"] == made.trainings
            assert made.trainings >= 30 and prov["campaign"]["seed"] >= 1000  # scored with seeds below 1000
            assert made.mode == mode and made.snapshot["mode"] == mode
            assert {"commit", "date", "profiles", "device"} <= set(prov)
            engine = prior_engine(made)
            assert engine.adam.own_ready and len(engine.observations) == made.trainings


@pytest.fixture
def shipped_priors_client(sqlite_store, monkeypatch):
    """A fresh install's API with the package's priors on: (TestClient, a user's auth header)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.service import Service
    from metalic.settings import Settings, get_settings
    from metalic.store import tokens as token_store

    monkeypatch.setenv("METALIC_PRIORS", "on")
    monkeypatch.delenv("METALIC_PRIOR_PATH", raising=False)
    get_settings.cache_clear()
    try:
        client = TestClient(create_app(Service(Settings(token_cache_seconds=0.0), sqlite_store)))
        token, _ = token_store.create(sqlite_store, "ann", "user")
        yield client, {"Authorization": f"Bearer {token}"}
    finally:
        get_settings.cache_clear()


def test_a_fresh_install_recommends_for_every_built_in_family_from_its_shipped_prior(shipped_priors_client):
    client, auth = shipped_priors_client
    for family, mode in itertools.product(BUILT_IN, ("single", "sequential")):
        r = client.get(f"/v1/families/{family}/recommendation", params={"mode": mode}, headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        # without a budget, a solve's default (1000 + 1000, 1000 points): nearest the v1 priors
        # (300 + 200, 1000 points), not Burgers', Advection's and Reaction's v2 (200 + 300, 300)
        assert body["source"] == "prior" and body["prior"] == f"{family}-{mode}-v1"
        for arms in [body["arms"]] + ([body["arms_lbfgs"]] if mode == "sequential" else []):
            assert len(arms) == 5 and all(a["error_interval"][0] < a["error_interval"][1] for a in arms)
            uppers = [a["error_interval"][1] for a in arms]
            assert uppers == sorted(uppers)


def test_the_recommendation_takes_the_point_count_of_the_budget_and_refuses_unknown_parameters(shipped_priors_client):
    """Before any study, ``?adam=200&lbfgs=300`` alone is a solve of 1000 collocation points and
    answers from Advection's v1 prior (built with 1000); with ``collocation=300`` it answers from
    v4, the newest built at exactly that budget. A misspelt parameter is a 422 at its name, not a silent
    answer for the default context."""
    client, auth = shipped_priors_client
    url = "/v1/families/advection/recommendation"
    budget = {"beta": 10.0, "adam": 200, "lbfgs": 300}
    assert client.get(url, params=budget, headers=auth).json()["prior"] == "advection-single-v1"
    r = client.get(url, params=budget | {"collocation": 300}, headers=auth)
    assert r.status_code == 200 and r.json()["prior"] == "advection-single-v4", r.text
    for bad, where in (({"colocation": 300}, "colocation"), ({"betta": 3.0}, "betta"), ({"collocation": 0}, None)):
        r = client.get(url, params=budget | bad, headers=auth)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["query", where or "collocation"]
        if where:
            assert "beta" in detail["msg"] and "collocation" in detail["msg"]  # what it does take


def test_a_campaign_on_a_prior_that_is_not_installed_is_refused_at_its_field(sqlite_store):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.service import Service
    from metalic.settings import Settings
    from metalic.store import campaigns as campaign_store
    from metalic.store import tokens as token_store

    client = TestClient(create_app(Service(Settings(token_cache_seconds=0.0), sqlite_store)))
    admin, _ = token_store.create(sqlite_store, "root", "admin")
    r = client.post(
        "/v1/campaigns",
        json={"family": "burgers", "prior": "burgers-single-v99"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "prior"], r.text
    assert "burgers-single-v99" in r.json()["detail"][0]["msg"] and campaign_store.list_campaigns(sqlite_store) == []


def test_the_recommendation_answers_from_the_study_nearest_to_the_budget_asked(store):
    """Two service studies of one family at different budgets: ?adam=&lbfgs= picks the one nearest
    in log iterations; without a budget, the one with the most observations (here the first)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.service import Service
    from metalic.jobs import SolveRequest
    from metalic.settings import Settings
    from metalic.store import studies as study_store
    from metalic.store import tokens as token_store

    made = {}
    with store.write() as s:
        for adam, lbfgs in ((300, 200), (1000, 1000)):
            request = SolveRequest(family="burgers", params={"nu": 0.01}, adam=adam, lbfgs=lbfgs)
            made[adam] = study_store.study_for_request(s, request).id
    assert study_store.pick_study(store, "burgers", "single", {"adam": 800, "lbfgs": None}).id == made[1000]
    assert study_store.pick_study(store, "burgers", "single", {"adam": 300, "lbfgs": 150}).id == made[300]
    assert study_store.pick_study(store, "burgers", "single").id == made[300]
    client = TestClient(create_app(Service(Settings(token_cache_seconds=0.0), store)))
    token, _ = token_store.create(store, "ann", "user")
    auth = {"Authorization": f"Bearer {token}"}
    url = "/v1/families/burgers/recommendation"
    assert client.get(url, params={"adam": 2000, "lbfgs": 500}, headers=auth).json()["study_id"] == made[1000]
    assert client.get(url, params={"lbfgs": 100}, headers=auth).json()["study_id"] == made[300]
    bad = client.get(url, params={"adam": -1}, headers=auth)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "adam"]


def _planted_observations(store, study_id: int, tasks, arms, betas) -> None:
    """One observation per task (planted rewards, ``truth``), as a finished training records it."""
    from metalic.store.models import ObservationRow

    with store.write() as s:
        s.add_all(
            ObservationRow(
                study_id=study_id, task_id=t.id, params={"beta": b}, arm_adam=a.index, reward=truth(b, a), status="ok"
            )
            for t, a, b in zip(tasks, arms, betas, strict=True)
        )


def test_a_study_at_a_new_budget_starts_from_the_study_at_the_nearest_budget(store, monkeypatch):
    """What is learnt at one budget informs the others (issue 17, item 2). A study at 300 + 200
    learns the planted rewards; a study created later at 1000 + 1000 records that study's latest
    snapshot as its prior, recommends what it learnt before training anything, and keeps that
    version when the first study learns more (its own snapshots restore on it). A request
    without a prior, or a store with priors off, starts from nothing."""
    from metalic.jobs import SolveRequest
    from metalic.settings import get_settings
    from metalic.store import studies as study_store
    from metalic.store import tasks as task_store
    from metalic.store.models import StudyRow

    monkeypatch.setenv("METALIC_PRIORS", "on")  # the first study stands on the shipped prior
    get_settings.cache_clear()

    def request(adam, lbfgs, beta, **kw):
        return SolveRequest(family="advection", params={"beta": beta}, adam=adam, lbfgs=lbfgs, **kw)

    g = torch.Generator().manual_seed(8)
    betas = [1 + 29 * float(torch.rand(1, generator=g)) for _ in range(16)]
    arms = [(A, B, Arm(int(torch.randint(512, (1,), generator=g))))[i % 3] for i in range(16)]
    first = task_store.submit_many(store, [request(300, 200, b, seed=i) for i, b in enumerate(betas)])
    tasks = [task_store.get_task(store, i) for i in first]
    a_id = tasks[0].study_id
    _planted_observations(store, a_id, tasks[:12], arms[:12], betas[:12])
    assert study_store.refit_study(store, a_id, {}).version == 1

    b_task = task_store.get_task(store, task_store.submit_many(store, [request(1000, 1000, 5.0)])[0])
    with store.read() as s:
        b_study = s.get(StudyRow, b_task.study_id)
        assert b_study.prior == f"study:{a_id}@v1"
        fresh = study_store.new_engine(b_study, s)
    _, a_engine = study_store.EngineCache(store).get(a_id)
    for beta in (3.0, 25.0):  # the prior speaks alone: the same ranking, means and intervals
        ours, theirs = fresh.recommend({"beta": beta}, top=3), a_engine.recommend({"beta": beta}, top=3)
        assert [r.arm for r in ours] == [r.arm for r in theirs] == [A if beta < 15.5 else B, *[r.arm for r in ours[1:]]]
        assert [r.reward_mean for r in ours] == pytest.approx([r.reward_mean for r in theirs], abs=1e-9)
    assert fresh.prior.trainings >= 12 and "300 Adam + 200 L-BFGS" in fresh.prior.provenance["budget"]

    _planted_observations(store, a_id, tasks[12:], arms[12:], betas[12:])  # the first study learns more
    assert study_store.refit_study(store, a_id, {}).version == 2
    b_more = task_store.get_task(store, task_store.submit_many(store, [request(1000, 1000, 25.0)])[0])
    _planted_observations(store, b_task.study_id, [b_task, b_more], [A, B], [5.0, 25.0])
    assert study_store.refit_study(store, b_task.study_id, {}).version == 1
    _, restored = study_store.EngineCache(store).get(b_task.study_id)
    assert restored.prior.ref == f"study:{a_id}@v1" and restored.prior.engine.n_observations == 12
    assert restored.recommend({"beta": 25.0}, top=1)[0].arm == B

    # further budgets stand on the nearest study with a snapshot: 1100 + 900 is nearest to B's
    near = task_store.get_task(store, task_store.submit_many(store, [request(1100, 900, 5.0)])[0])
    alone = task_store.get_task(store, task_store.submit_many(store, [request(1100, 900, 5.0, prior=False)])[0])
    with store.read() as s:
        assert s.get(StudyRow, near.study_id).prior == f"study:{b_task.study_id}@v1"
        assert s.get(StudyRow, alone.study_id).prior is None
        chained = study_store.new_engine(s.get(StudyRow, near.study_id), s)  # B, which stands on A
    assert chained.prior.engine.prior.ref == f"study:{a_id}@v1" and chained.recommend({"beta": 25.0}, top=1)[0].arm == B

    # the recommendation and the dashboard say what the new study stands on
    import re

    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.service import Service
    from metalic.settings import Settings
    from metalic.store import tokens as token_store

    client = TestClient(create_app(Service(Settings(token_cache_seconds=0.0), store)))
    token, _ = token_store.create(store, "root", "admin")
    answer = client.get(
        "/v1/families/advection/recommendation",
        params={"beta": 25.0, "study": near.study_id},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert answer["source"] == "prior" and answer["prior"] == f"study:{b_task.study_id}@v1", answer
    assert answer["arms"][0]["terms"] == B.label and f"study:{b_task.study_id}@v1" in answer["detail"]
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/dashboard/login").text).group(1)
    client.post("/dashboard/login", data={"token": token, "csrf": csrf, "next": "/"})
    page = client.get(f"/dashboard/studies/{near.study_id}").text
    assert f'/studies/{b_task.study_id}">study {b_task.study_id}</a>, snapshot v1' in page
    monkeypatch.setenv("METALIC_PRIORS", "off")
    get_settings.cache_clear()
    try:
        off = task_store.get_task(store, task_store.submit_many(store, [request(50, 50, 5.0)])[0])
        with store.read() as s:
            assert s.get(StudyRow, off.study_id).prior is None
    finally:
        get_settings.cache_clear()


def test_a_new_study_starts_from_the_prior_built_nearest_to_its_budget(sqlite_store, tmp_path, monkeypatch):
    """Two installed priors of one family, built at 300 + 200 (1000 points) and at 200 + 300 (300
    points, a newer version): a study, and the recommendation before any study, take the one
    built nearest to the budget in log iterations and points; the newer one only among equals.
    Versions from 101 up, above the package's own (which stay on the search path)."""
    from dataclasses import replace

    from metalic.jobs import SolveRequest
    from metalic.settings import get_settings
    from metalic.store import studies as study_store

    folder = tmp_path / "priors"
    folder.mkdir()
    for version, (adam, lbfgs, points) in ((101, (300, 200, 1000)), (102, (200, 300, 300)), (103, (300, 200, 1000))):
        made = prior_of(8, seed=version)
        made = replace(
            made, version=version, provenance={"profiles": [{"adam": adam, "lbfgs": lbfgs, "collocation": points}]}
        )
        if version != 103:
            (folder / f"{made.ref}.json").write_text(json.dumps(made.to_json()))
    monkeypatch.setenv("METALIC_PRIORS", "on")
    monkeypatch.setenv("METALIC_PRIOR_PATH", str(folder))
    get_settings.cache_clear()
    try:
        assert priors.for_budget("advection", "single", {"adam": 250, "lbfgs": 250, "collocation": 900}).version == 101
        assert priors.for_budget("advection", "single", {"adam": 200, "lbfgs": 300, "collocation": 300}).version == 102
        assert priors.newest("advection", "single") == "advection-single-v102"
        with sqlite_store.write() as s:
            for (adam, lbfgs, points), want in (((1000, 1000, 1000), "advection-single-v101"),
                                                ((150, 400, 200), "advection-single-v102")):  # fmt: skip
                request = SolveRequest(
                    family="advection", params={"beta": 3.0}, adam=adam, lbfgs=lbfgs, collocation=points
                )
                assert study_store.study_for_request(s, request).prior == want
        (folder / "advection-single-v103.json").write_text(json.dumps(made.to_json()))  # v1's budget, newer
        assert priors.for_budget("advection", "single", {"adam": 300, "lbfgs": 200, "collocation": 1000}).version == 103
        monkeypatch.setenv("METALIC_PRIORS", "off")
        get_settings.cache_clear()
        assert priors.for_budget("advection", "single", {"adam": 300}) is None
    finally:
        get_settings.cache_clear()

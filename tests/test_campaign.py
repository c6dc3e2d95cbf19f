"""Campaigns end to end at toy budgets: protocol, outputs, and the CLI's bad-input path."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest
import torch

from metalic.arms import all_arms
from metalic.bandit.engine import R_ADAM_SCALE
from metalic.bandit.space import ALL_FEATURES
from metalic.campaign import (
    CampaignConfig,
    CampaignPlan,
    points_for,
    run_policy,
    summarise,
    write_outputs,
)
from metalic.cli import main
from metalic.jobs import run_solve_batch
from metalic.pinn.artefact import TrainedModel
from metalic.pinn.causal import CausalSchedule
from metalic.pinn.evaluate import reward_of
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import TrainConfig

TOY = CampaignConfig(
    family="advection",
    warmup=2,
    rounds=3,
    test=2,
    batch=3,
    seed=4,
    train=TrainConfig(adam=8, lbfgs=4, compile=False),
    pinn=PinnConfig(n_collocation=48, n_boundary=12, n_interface=9),
)


def test_every_policy_sees_the_same_parameters_and_the_protocol_is_followed(tmp_path):
    online, test = points_for(TOY)
    rows_ucb, engine = run_policy(TOY, "ucb")
    rows_fixed, _ = run_policy(TOY, "fixed:u,flux")
    for rows in (rows_ucb, rows_fixed):
        assert [r.stage for r in rows] == ["warmup"] * 2 + ["online"] * 3 + ["test"] * 2
        assert [r.params for r in rows] == online + test
    assert all(r.arm == "u,flux" for r in rows_fixed)
    assert len(engine.observations) == 5  # warm-up + online, not test
    write_outputs(rows_ucb + rows_fixed, {"ucb": engine}, tmp_path)
    with (tmp_path / "rounds.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 14
    assert len(json.loads((tmp_path / "rounds.json").read_text())) == 14
    assert (tmp_path / "campaign.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "policy_ucb.json").read_text())["format"] == "metalic-policy/2"
    record = json.loads((tmp_path / "rounds.json").read_text())[0]  # the files keep their column names
    assert list(record) == ["heuristic", "stage", "round", "context", "arm", "arm_lbfgs", "rel_l2", "reward",
                            "phase0_rel_l2", "status", "seconds"]  # fmt: skip
    assert record["heuristic"] == "ucb" and record["context"] == online[0]
    summary = {s["heuristic"]: s for s in summarise(rows_ucb + rows_fixed)}
    assert summary["ucb"]["online_accumulated_error"] == pytest.approx(sum(r.rel_l2 for r in rows_ucb[:5]))


def test_sequential_campaign_chooses_the_lbfgs_arm_after_the_adam_phase():
    rows, engine = run_policy(replace(TOY, mode="sequential"), "ts")
    assert all(r.rel_l2_adam is not None for r in rows)
    assert any(r.arm != r.arm_lbfgs for r in rows)
    # the engine learnt each training's measured phase-0 reward and the L-BFGS arm that trained
    learnt = [r for r in rows if r.stage != "test"]
    assert len(engine.lbfgs.y) == len(learnt) == 5
    for r, x, y0, y1 in zip(learnt, engine.lbfgs.x, engine.adam.y, engine.lbfgs.y, strict=True):
        r0 = reward_of(r.rel_l2_adam)
        assert float(x[0]) * R_ADAM_SCALE == pytest.approx(r0)
        assert all_arms()[arm_index_of_row(x)].label == r.arm_lbfgs
        assert y1 == pytest.approx(r.reward) and y0 == pytest.approx((r0 + engine.gamma * r.reward) / 2)
    # at test time the L-BFGS arm is the posterior-mean best given the phase-0 reward just measured
    # (a single-network Adam phase goes on as one network)
    test = [r for r in rows if r.stage == "test"]
    assert [r.arm_lbfgs for r in test if r.arm == "single-domain"] == [r.arm for r in test if r.arm == "single-domain"]
    split = [r for r in test if r.arm != "single-domain"]
    assert split  # the check below is not vacuous
    for r in split:
        best = engine.recommend(r.params, top=1, reward_adam=reward_of(r.rel_l2_adam), rank="mean")[0]
        assert r.arm_lbfgs == best.terms


def arm_index_of_row(x):
    """The arm a GP input row encodes (its last 10 columns)."""
    return next(i for i, row in enumerate(ALL_FEATURES) if torch.equal(row, x[-len(row) :]))


def test_single_domain_baseline_runs_one_network():
    rows, engine = run_policy(TOY, "single-domain")
    assert engine is None and len(rows) == 7 and all(r.arm == "none" for r in rows)
    # every one of its trainings is one network over the whole domain, trained as such
    config = replace(TOY, policies=("single-domain",))
    plan = CampaignPlan(config)
    runs = [run for step in plan.steps() for run in plan.runs(step, plan.new_engines())]
    assert len(runs) == 7 and all(run.run(config).request.subdomains == 1 for run in runs)
    for result in run_solve_batch([run.run(config) for run in runs[:2]], device="cpu"):
        assert result.status == "ok"
        assert TrainedModel.from_bytes(result.model).network().n_subdomains == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--heuristic", "greedy"], "unknown heuristic 'greedy'"),
        (["--heuristic", "fixed:u,nope"], "unknown interface term 'nope'"),
        (["--mode", "parallel"], "mode"),
        (["--batch", "0"], "batch"),
        (["--rounds", "-1"], "rounds"),
        (["--warmup-arms", "u", "u,nope"], "warmup_arms: unknown interface term 'nope'"),
        (["--warmup-arms", "u+causal"], "warmup_arms: u+causal has a recipe bit"),
    ],
)
def test_campaign_cli_bad_input(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("METALIC_HOME", str(tmp_path / "home"))
    out = tmp_path / "camp"
    assert main(["campaign", "advection", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not out.exists() and not (tmp_path / "home").exists()  # nothing written, not even a database


def test_a_campaign_over_the_caps_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("METALIC_HOME", str(tmp_path / "home"))
    args = ["campaign", "advection", "--collocation", "100000000", "--out", str(tmp_path / "camp")]
    assert main(args) == 2
    assert "collocation: at most 20000 (server cap)" in capsys.readouterr().err
    assert not (tmp_path / "home").exists() and not (tmp_path / "camp").exists()


def test_creating_an_invalid_campaign_writes_no_row(sqlite_store):
    from sqlalchemy import func, select

    from metalic.store import campaigns
    from metalic.store.models import CampaignRow, StudyRow

    with pytest.raises(ValueError, match="heuristic"):
        campaigns.create(sqlite_store, replace(TOY, policies=("ucb", "greedy")))
    with sqlite_store.read() as s:
        assert s.scalar(select(func.count()).select_from(CampaignRow)) == 0
        assert s.scalar(select(func.count()).select_from(StudyRow)) == 0


def test_a_campaign_config_survives_its_stored_form():
    """What the store keeps (JSON) gives the same config back, with the family's network (None)
    or an explicit one."""
    learner = replace(
        TOY,
        learns=("causal",),
        train=replace(TOY.train, causal=CausalSchedule(eps=(0.1, 1.0)), march=True),
        pinn=replace(TOY.pinn, causal_chunks=8, subdomains=3),
    )
    designed = replace(TOY, warmup_arms=("u", "u,flux", "single-domain"))
    for config in (TOY, replace(TOY, pinn=replace(TOY.pinn, layers=(2, 8, 8, 1))), learner, designed):
        stored = json.loads(json.dumps(config.to_dict()))
        assert CampaignConfig.from_dict(stored) == config
    older = json.loads(json.dumps(TOY.to_dict()))  # configs stored before policies had that name
    older["heuristics"] = older.pop("policies")
    older["train"]["adam_iters"], older["train"]["lbfgs_iters"] = (
        older["train"].pop("adam"),
        older["train"].pop("lbfgs"),
    )
    assert CampaignConfig.from_dict(older) == TOY


def test_a_diverged_round_counts_the_cap_even_when_its_frozen_weights_score_well():
    from metalic.campaign import RoundRow
    from metalic.pinn.evaluate import ERROR_CAP, outcome_error

    assert outcome_error(0.01, "diverged") == ERROR_CAP and outcome_error(0.01, "ok") == 0.01

    def row(stage: str, rnd: int, status: str) -> RoundRow:
        return RoundRow("ucb", stage, rnd, {"beta": 2.0}, "u", "u", 0.01, 2.0, None, status, 0.1)

    rows = [row("online", 0, "ok"), row("online", 1, "diverged"), row("test", 0, "diverged"), row("test", 1, "ok")]
    (s,) = summarise(rows)
    assert s["online_accumulated_error"] == pytest.approx(0.01 + ERROR_CAP)
    assert s["test_mean_error"] == pytest.approx((ERROR_CAP + 0.01) / 2)
    assert s["test_median_error"] == pytest.approx((ERROR_CAP + 0.01) / 2)


def test_a_stored_campaign_with_the_additive_kernel_gives_its_learners_that_kernel(sqlite_store):
    """A campaign's learning studies record their term kernel; the engine the store builds for them
    (before any snapshot) has it, and a snapshot keeps it. The authors' kernel records nothing, so
    older studies keep meaning what they meant."""
    from sqlalchemy import select

    from metalic.bandit.engine import BanditEngine
    from metalic.store import campaigns
    from metalic.store.models import StudyRow
    from metalic.store.studies import new_engine

    studies = {}
    for kernel in ("additive", "hamming"):
        config = CampaignConfig(family="advection", policies=("ucb",), warmup=1, rounds=1, test=1,
                                arm_kernel=kernel, train=TrainConfig(adam=4, lbfgs=2))  # fmt: skip
        camp = campaigns.create(sqlite_store, config)
        with sqlite_store.read() as s:
            found = select(StudyRow).where(StudyRow.campaign_id == camp.id, StudyRow.heuristic == "ucb")
            studies[kernel] = s.scalar(found)
    assert studies["additive"].profile["arm_kernel"] == "additive" and "arm_kernel" not in studies["hamming"].profile
    engine = new_engine(studies["additive"])
    assert engine.arm_kernel == "additive" and new_engine(studies["hamming"]).arm_kernel == "hamming"
    assert BanditEngine.from_snapshot(engine.snapshot()).arm_kernel == "additive"
    with pytest.raises(ValueError, match="arm_kernel"):
        CampaignConfig(family="advection", arm_kernel="linear").validate()


def test_the_test_rollout_ranks_as_the_config_says():
    """A campaign's test rounds take the engine's best arm by posterior mean (the authors', the
    default) or, with ``test_rank="lcb"``, by the interval's pessimistic end: on an engine where
    the two differ (an arm nobody tried wins on its prior mean at small nu), the runs follow."""
    from metalic.arms import Arm
    from metalic.bandit.engine import Observation
    from metalic.campaign import CampaignPlan, Step

    def engine_where_the_rankings_differ():
        engine = CampaignPlan(replace(TOY, family="burgers")).new_engines()["ucb"]
        arms = [Arm.parse("flux"), Arm.parse("u,flux"), Arm.parse("all")]
        for nus, rewards in (((0.005, 0.008, 0.012), (-0.4, -0.5, -0.7)), ((0.03, 0.04, 0.045), (1.0, 0.9, 0.7))):
            for nu, arm, reward in zip(nus, arms, rewards, strict=True):
                engine.observe(Observation({"nu": nu}, arm, reward))
        return engine

    step = Step(0, "test", 0, ({"nu": 0.007},))
    chosen = {}
    for rank in ("mean", "lcb"):
        plan = CampaignPlan(replace(TOY, family="burgers", test_rank=rank))
        engine = engine_where_the_rankings_differ()
        (run,) = plan.runs(step, {"ucb": engine})
        assert run.arm_adam == engine.recommend({"nu": 0.007}, top=1, rank=rank)[0].arm
        chosen[rank] = run.arm_adam
    assert chosen["mean"] != chosen["lcb"] == Arm.parse("flux")
    with pytest.raises(ValueError, match="test_rank"):
        replace(TOY, test_rank="best").validate()


@pytest.mark.parametrize("mode", ["single", "sequential"])
def test_a_designed_warm_up_trains_its_arms_in_turn(mode):
    """``warmup_arms`` replaces the random warm-up arms: the design's arms in turn over the warm-up
    contexts (both phases of a sequential run), then the online rounds as before; the design of
    ``metalic prior build --warmup-arms design`` is every term alone beside the baselines."""
    from metalic.arms import BASELINE_LABELS, N_TERMS, Arm, design_arms

    design = design_arms()
    assert {Arm.parse(label) for label in BASELINE_LABELS} <= set(design)
    assert {Arm(1 << i) for i in range(N_TERMS)} <= set(design) and len(set(design)) == len(design) == 13
    labels = ("u", "u,flux", "single-domain")
    plan = CampaignPlan(replace(TOY, mode=mode, warmup=5, warmup_arms=labels))
    warm = [run for step in plan.steps() if step.stage == "warmup" for run in plan.runs(step, plan.new_engines())]
    assert [run.arm_adam.label for run in warm] == ["u", "u,flux", "single-domain", "u", "u,flux"]
    if mode == "sequential":
        assert [run.arm_lbfgs for run in warm] == [run.arm_adam for run in warm]
    random = CampaignPlan(replace(TOY, mode=mode, warmup=5))
    assert [run.arm_adam for step in random.steps() if step.stage == "warmup"
            for run in random.runs(step, random.new_engines())] != [run.arm_adam for run in warm]  # fmt: skip


def test_a_campaign_posted_with_a_designed_warm_up_keeps_it(sqlite_store):
    """The REST body's ``warmup_arms`` reaches the stored config and the plan; ``["design"]`` is
    ``arms.design_arms()``, as on the CLI."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.service import Service
    from metalic.arms import design_arms
    from metalic.settings import Settings
    from metalic.store import campaigns as campaign_store
    from metalic.store import tokens as token_store

    client = TestClient(create_app(Service(Settings(token_cache_seconds=0.0), sqlite_store)))
    admin, _ = token_store.create(sqlite_store, "root", "admin")
    auth = {"Authorization": f"Bearer {admin}"}
    body = {"family": "heat", "warmup": 3, "rounds": 0, "test": 0, "warmup_arms": ["u", "u,flux"]}
    r = client.post("/v1/campaigns", json=body, headers=auth)
    assert r.status_code == 202, r.text
    (camp,) = campaign_store.list_campaigns(sqlite_store)
    config = CampaignConfig.from_dict(camp.config)
    assert config.warmup_arms == ("u", "u,flux")
    plan = CampaignPlan(config)
    assert [run.arm_adam.label for step in plan.steps() for run in plan.runs(step, plan.new_engines())] == [
        "u", "u,flux", "u"]  # fmt: skip
    r = client.post("/v1/campaigns", json={**body, "warmup_arms": ["design"]}, headers=auth)
    assert r.status_code == 202, r.text
    designed = next(c for c in campaign_store.list_campaigns(sqlite_store) if c.id == r.json()["id"])
    assert CampaignConfig.from_dict(designed.config).warmup_arms == tuple(a.label for a in design_arms())

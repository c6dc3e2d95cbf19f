"""The policy registry: one list of names, one class per policy, and what each tells a campaign."""

from __future__ import annotations

import pytest
import torch

from metalic.arms import SINGLE, Arm, all_arms, split_arms
from metalic.bandit.engine import BanditEngine, Observation
from metalic.bandit.policies import (
    POLICIES,
    Candidates,
    Policy,
    learning_policies,
    parse_policy,
    policy_from_json,
    policy_names,
    register,
)
from metalic.campaign import CampaignConfig
from metalic.jobs import ArmChoice


def test_every_name_comes_from_the_registry():
    assert list(POLICIES) == ["ucb", "ts", "mean", "random", "fixed", "single-domain"]
    assert learning_policies() == ("ucb", "ts", "mean", "random")
    assert "fixed:<terms>" in policy_names()
    for name in learning_policies():  # what a solve may ask for as learned:<name>
        assert ArmChoice.parse(f"learned:{name}").policy == name
    with pytest.raises(ValueError, match="learned policy must be one of ucb, ts, mean, random"):
        ArmChoice.parse("learned:fixed")


@pytest.mark.parametrize("text", ["ucb", "ts", "mean", "random", "fixed:u,flux", "fixed:single-domain"])
def test_a_policy_round_trips_through_its_label_and_json(text):
    policy = parse_policy(text)
    assert parse_policy(policy.label) == policy
    assert policy_from_json(policy.to_json()) == policy


def test_a_snapshot_of_the_earlier_format_names_its_policy_the_old_way():
    assert policy_from_json({"kind": "fixed", "arm": [1, 0, 0, 0, 1, 0, 0, 0, 0], "ucb_schedule": "constant",
                             "ucb_coef": 1.0}) == parse_policy("fixed:u,flux")  # fmt: skip
    old_ucb = policy_from_json({"kind": "ucb", "arm": None, "ucb_schedule": "gp-ucb", "ucb_coef": 1.0})
    assert (old_ucb.schedule, old_ucb.coef) == ("gp-ucb", 1.0)


def test_bad_policies_name_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown heuristic 'greedy' \(one of ucb, ts, mean, random, fixed:"):
        parse_policy("greedy")
    with pytest.raises(ValueError, match="heuristic fixed arm: unknown interface term 'nope'"):
        parse_policy("fixed:u,nope")
    with pytest.raises(ValueError, match="ucb_schedule"):
        parse_policy("ucb", ucb_schedule="sometimes")
    with pytest.raises(ValueError, match="does not run on an engine"):
        BanditEngine("advection", policy="single-domain")


def test_a_fixed_single_network_arm_cannot_start_an_lbfgs_phase():
    candidates = Candidates(split_arms(), torch.zeros(512, 1), None, torch.Generator(), 1)
    with pytest.raises(ValueError, match="cannot start at the L-BFGS phase"):
        parse_policy("fixed:single-domain").pick(candidates, 1)
    assert parse_policy("fixed:single-domain").pick(Candidates(all_arms(), torch.zeros(513, 1), None,
                                                               torch.Generator(), 1), 2) == [SINGLE] * 2  # fmt: skip


def test_adding_a_policy_is_one_class(monkeypatch):
    """A new policy registered with one class is parsed, runs on an engine and in a campaign."""
    monkeypatch.setattr("metalic.bandit.policies.POLICIES", dict(POLICIES))

    @register
    class Lowest(Policy):
        """The arm of lowest posterior mean (a silly policy, but a different one)."""

        name = "lowest"

        def _pick(self, candidates, q):
            return candidates.greedy(q, lambda mean, std, _: -mean, joint=False)

    assert "lowest" in learning_policies()
    engine = BanditEngine("advection", policy="lowest", seed=0)
    engine.observe(*[Observation({"beta": 2.0 + i}, Arm(i), float(i)) for i in range(6)])
    assert engine.suggest({"beta": 3.0})[0] == engine.recommend({"beta": 3.0}, top=513, rank="mean")[-1].arm
    CampaignConfig(family="advection", policies=("lowest", "ucb")).validate()

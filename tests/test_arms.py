"""The Arm value type: every form an arm takes is made from it and read back into it."""

from __future__ import annotations

import pytest
import torch

from metalic.arms import ALL, NONE, SINGLE, SWITCHES, Arm, all_arms, needed_quantities, split_arms
from metalic.bandit.space import ALL_FEATURES, arm_features
from metalic.conditions import TERMS


@pytest.mark.parametrize(
    ("spec", "mask"),
    [
        ("u,flux,res_continuity", (1, 0, 0, 1, 1, 0, 0, 0, 0)),
        (" U , Flux ", (1, 0, 0, 0, 1, 0, 0, 0, 0)),
        ("all", (1,) * 9),
        ("none", (0,) * 9),
        ("100000001", (1, 0, 0, 0, 0, 0, 0, 0, 1)),
        ("1000000010", (1, 0, 0, 0, 0, 0, 0, 0, 1)),  # a stored 10-bit form of a split arm
        ([0, 1, 0, 0, 0, 0, 0, 0, 0], (0, 1, 0, 0, 0, 0, 0, 0, 0)),
        ((1, 0, 0, 0, 1, 0, 0, 0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 0)),
        (17, (1, 0, 0, 0, 1, 0, 0, 0, 0)),
    ],
)
def test_every_form_parses_to_the_same_arm(spec, mask):
    arm = Arm.parse(spec)
    assert arm.term_mask == mask and not arm.single
    assert Arm.parse(arm.label) == Arm.parse(arm.bits) == Arm.from_index(arm.index) == arm


@pytest.mark.parametrize("spec", ["single-domain", "single", "0000000001", (0,) * 9 + (1,), 512])
def test_the_single_network_arm_in_each_form(spec):
    arm = Arm.parse(spec)
    assert arm == SINGLE and arm.single and arm.index == 512 and arm.label == "single-domain"
    assert arm.loss_weights == (0.0,) * 9  # it trains no interface term
    assert arm.bits == "0000000001"


def test_all_513_arms_round_trip_through_every_form():
    arms = all_arms()
    assert len(arms) == 513 and len(split_arms()) == 512 and arms[-1] == SINGLE
    assert len(set(arms)) == 513
    for i, arm in enumerate(arms):
        assert arm.index == i
        assert Arm.parse(arm.label) == arm
        assert Arm.parse(arm.bits) == arm
        assert Arm.parse(list(arm.switches)) == arm  # the 10 switches are the stored 10-bit form


@pytest.mark.parametrize("spec", ["u,foo", [1, 0], [2] * 9, "u,,flux", "1" * 9 + "1", 1026, -1, "u+march"])
def test_bad_arms_are_refused_with_the_field_named(spec):
    with pytest.raises(ValueError):
        Arm.parse(spec)
    with pytest.raises(ValueError, match=r"^arm_lbfgs: "):
        Arm.parse(spec, "arm_lbfgs")


def test_gp_features_and_loss_weights():
    u_flux = Arm.parse("u,flux")
    assert u_flux.features() == (1.0, 0, 0, 0, 1.0, 0, 0, 0, 0, 0, 0)
    causal = Arm.parse("u,flux+causal")
    assert causal.features()[-1] == 1.0 and causal.base == u_flux and causal.index == u_flux.index + 513
    assert Arm.parse(list(causal.switches)) == causal and Arm.parse(causal.label) == causal
    assert causal.loss_weights == u_flux.loss_weights and causal.recipe_flags == ("causal",)
    assert u_flux.loss_weights == (1.0, 0, 0, 0, 1.0, 0, 0, 0, 0)
    assert SINGLE.features()[9] == 1.0 and sum(SINGLE.features()) == 1.0
    torch.testing.assert_close(arm_features([u_flux, SINGLE]), ALL_FEATURES[[u_flux.index, 512]])
    assert SWITCHES[:9] == tuple(t.name for t in TERMS) and SWITCHES[9] == "single-domain"
    assert SWITCHES[10] == "causal"


def test_quantities_are_the_union_of_the_terms_needs():
    assert NONE.quantities == frozenset() and SINGLE.quantities == frozenset()
    assert Arm.parse("u").quantities == {"u"}
    assert needed_quantities([Arm.parse("u"), Arm.parse("flux,gres")]) == {"u", "f_n", "grad_r_sq"}
    assert ALL.quantities == {q for t in TERMS for q in t.needs}


def test_a_single_network_with_terms_is_not_an_arm():
    with pytest.raises(ValueError, match="no interface terms"):
        Arm(terms=1, single=True)

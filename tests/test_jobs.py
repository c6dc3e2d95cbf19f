"""The solve job: request validation with field-level errors, one batch -> per-request results."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from metalic.arms import Arm
from metalic.bandit.engine import BanditEngine, Observation
from metalic.jobs import (
    ArmChoice,
    Recipe,
    Run,
    SolveRequest,
    SolveResult,
    field_errors,
    read_solution,
    run_solve_batch,
)
from metalic.pinn.artefact import TrainedModel
from metalic.pinn.evaluate import ERROR_CAP

TINY = {"adam": 20, "lbfgs": 5, "collocation": 48, "boundary": 12, "interface_points": 9}


def req(family="advection", **kw) -> SolveRequest:
    return SolveRequest(family=family, **{**TINY, **kw})


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"family": "navier"}, "family", "unknown family 'navier'"),
        ({"family": "burgers", "params": {"nu": 0.5}}, "params", "nu=0.5 is outside [0.001, 0.05]"),
        ({"family": "burgers", "params": {"mu": 0.01}}, "params", "unknown parameter 'mu'"),
        ({"family": "burgers", "arm": "u,jump"}, "arm", "unknown interface term 'jump'"),
        ({"family": "burgers", "arm": "learned:greedy"}, "arm", "learned policy must be one of"),
        ({"family": "burgers", "arm_lbfgs": "u"}, "arm_lbfgs", "only a sequential request"),
        ({"family": "burgers", "adam": 10**9}, "adam", "at most 50000 (server cap)"),
        ({"family": "burgers", "collocation": 10**8}, "collocation", "at most 20000 (server cap)"),
        ({"family": "burgers", "lbfgs": -1}, "lbfgs", "greater than or equal to 0"),
        ({"family": "burgers", "adam": "many"}, "adam", "valid integer"),
        ({"family": "burgers", "params": {"nu": "thin"}}, "params.nu", "valid number"),
        ({"family": "poisson", "final_time_data": True}, "final_time_data", "time-dependent"),
        ({"family": "burgers", "colour": "red"}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_request_names_the_field(payload, field, message):
    with pytest.raises(ValidationError) as err:
        SolveRequest(**payload)
    errors = field_errors(err.value)
    assert errors[0]["field"] == field
    assert message in errors[0]["message"]


def test_requests_share_a_batch_key_exactly_when_they_can_train_together():
    a = req(params={"beta": 2.0}, arm="u,flux", seed=1)
    b = req(params={"beta": 9.0}, arm="learned:ts", seed=7)
    assert a.batch_key() == b.batch_key()  # parameters, arms and seeds may differ
    assert a.batch_key() != req(adam=21).batch_key()
    assert a.batch_key() != req(device="cpu").batch_key()
    assert a.profile_key() == req(device="cpu").profile_key()  # the device does not change the reward
    assert a.batch_key() != req(family="burgers").batch_key()
    assert req(mode="sequential").arm_lbfgs == "learned"  # sequential: the L-BFGS arm is learned by default
    assert ArmChoice.parse("learned:ts") == ArmChoice(None, "ts")
    assert str(ArmChoice.parse("100010000")) == "u,flux"


def test_a_batch_gives_one_result_per_request_with_artefacts():
    r1 = req(params={"beta": 2.0}, arm="u,flux", seed=0)
    r2 = req(params={"beta": 12.0}, arm="all", seed=1)
    seen = []
    results = run_solve_batch([Run.explicit(r1), Run.explicit(r2)], device="cpu", progress=seen.append)
    assert [r.status for r in results] == ["ok", "ok"]
    assert {p.phase for p in seen} == {"adam", "lbfgs"} and all(len(p.loss) == 2 for p in seen)
    assert results[0].arm_adam == Arm.parse("u,flux") and results[1].arm_adam == Arm.parse("all")
    for r, beta in zip(results, (2.0, 12.0), strict=True):
        assert r.batch_size == 2 and r.seconds == pytest.approx(r.batch_seconds / 2)
        assert r.reward == pytest.approx(-math.log10(r.rel_l2))
        model = TrainedModel.from_bytes(r.model)
        assert model.params == {"beta": beta}
        grid = read_solution(r.solution)
        assert grid["prediction"].shape == grid["reference"].shape == (len(grid["axis0"]), len(grid["axis1"]))
        # the stored grid is the model's prediction, and its error is the reported one
        np.testing.assert_allclose(grid["prediction"].ravel()[:50], model.predict(_points(grid))[:50], rtol=1e-4)
        rel = np.linalg.norm(grid["prediction"] - grid["reference"]) / np.linalg.norm(grid["reference"])
        assert rel == pytest.approx(r.rel_l2, rel=1e-4)
        assert SolveResult.from_summary(r.summary()).reward == r.reward
        # e(t): the error at each time of the stored grid; its RMS over t is the rel. L2
        over_time = r.outcome["error_over_time"]
        assert over_time["t"] == pytest.approx(list(grid["axis1"]), rel=1e-3)
        assert float(np.sqrt(np.mean(np.square(over_time["error"])))) == pytest.approx(r.rel_l2, rel=2e-3)
        assert r.outcome["causal"] is None


def test_a_recipe_trains_its_requests_causally_and_marching_in_batches_of_their_own():
    plain = req(params={"beta": 5.0}, arm="u,flux")
    causal = req(params={"beta": 5.0}, arm="u,flux", recipe={"causal": True, "eps": [0.1, 1.0], "chunks": 8})
    marched = req(params={"beta": 5.0}, arm="u,flux", subdomains=3, recipe={"march": True})
    assert len({plain.batch_key(), causal.batch_key(), marched.batch_key()}) == 3
    assert plain.profile_key() == req(params={"beta": 9.0}, arm="u").profile_key()  # no recipe: the old key
    assert causal.profile()["recipe"] == {"causal": True, "eps": [0.1, 1.0], "chunks": 8, "march": False}
    (a,) = run_solve_batch([Run.explicit(causal)], device="cpu")
    assert a.status == "ok" and a.outcome["causal"]["stages"] == 2 and 0 < a.outcome["causal"]["min_weight"] <= 1
    (b,) = run_solve_batch([Run.explicit(marched)], device="cpu")
    (c,) = run_solve_batch([Run.explicit(marched.model_copy(update={"recipe": Recipe()}))], device="cpu")
    assert b.status == c.status == "ok" and b.rel_l2 != c.rel_l2


def test_a_result_summary_of_an_earlier_version_still_loads():
    """Rows written before the Arm type hold arms as bit lists and the Adam-phase figures as
    ``*_phase0``; they read back into the same result as today's summary."""
    old = {"status": "ok", "arm_adam": [1, 0, 0, 0, 1, 0, 0, 0, 0], "arm_lbfgs": [1, 0, 0, 1, 1, 0, 0, 0, 0],
           "arm_adam_terms": "u,flux", "arm_lbfgs_terms": "u,res_continuity,flux", "rel_l2": 0.1, "max_abs": 0.2,
           "reward": 1.0, "reward_phase0": 0.5, "rel_l2_phase0": 0.31, "outcome": {"status": "ok"},
           "seconds": 1.0, "batch_seconds": 2.0, "batch_size": 2, "device": "cpu"}  # fmt: skip
    result = SolveResult.from_summary(old)
    assert (result.arm_adam, result.arm_lbfgs) == (Arm.parse("u,flux"), Arm.parse("u,res_continuity,flux"))
    assert (result.reward_adam, result.rel_l2_adam) == (0.5, 0.31)
    assert SolveResult.from_summary(result.summary()) == result


def _points(grid) -> np.ndarray:
    a, b = np.meshgrid(grid["axis0"], grid["axis1"], indexing="ij")
    return np.stack([a.ravel(), b.ravel()], axis=-1)


def test_runs_of_different_batch_keys_are_refused():
    with pytest.raises(ValueError, match="batch key"):
        run_solve_batch([Run.explicit(req(arm="u")), Run.explicit(req(arm="u", adam=3))], device="cpu")
    with pytest.raises(ValueError, match="learned"):
        Run.explicit(req(arm="learned"))


def test_should_stop_cancels_the_named_run_at_a_progress_point_and_the_other_goes_on():
    long = {"adam": 200, "lbfgs": 30}
    r = [req(params={"beta": 3.0}, arm="u", seed=s, **long) for s in (0, 1)]
    polls = []

    def should_stop():
        polls.append(1)
        return {1} if len(polls) >= 3 else set()

    results = run_solve_batch([Run.explicit(x) for x in r], device="cpu", should_stop=should_stop)
    assert results[1].status == "cancelled" and results[1].reward is None and results[1].model is None
    assert results[1].outcome["adam_iterations"] == 30  # stopped at the third progress point (every 10)
    assert results[0].status == "ok"
    assert results[0].outcome["adam_iterations"] == 200 and results[0].outcome["lbfgs_iterations"] == 30


def test_sequential_requests_get_their_lbfgs_arm_from_the_engine_after_adam():
    engine = BanditEngine("advection", mode="sequential", policy="mean", seed=0)
    a, b = Arm.parse("u,flux"), Arm.parse("uxx")
    # Planted: after a poor Adam phase (r0 < 1) arm B pays, after a good one arm A.
    obs = [Observation({"beta": 1.0 + i}, a, 3.0 if (i % 2) else 1.0, b if i % 2 else a, 0.2) for i in range(20)]
    engine.observe(*obs)
    r = req(params={"beta": 5.0}, arm="u,flux", mode="sequential")
    t = Run(r, a, None, "mean", "study")
    (result,) = run_solve_batch([t], device="cpu", choosers={"study": engine})
    assert result.reward_adam is not None and result.rel_l2_adam is not None
    expected = engine.report_adam({"beta": 5.0}, a, result.reward_adam, policy="mean")[0]
    assert result.arm_lbfgs == expected
    with pytest.raises(ValueError, match="chooser"):
        run_solve_batch([t], device="cpu", choosers={})


def test_a_diverged_run_is_an_outcome_with_the_capped_reward():
    ok = req("nan-test", params={"q": 0.1}, arm="u", seed=0)
    bad = req("nan-test", params={"q": 0.9}, arm="u", seed=1)
    results = run_solve_batch([Run.explicit(ok), Run.explicit(bad)], device="cpu")
    assert results[1].status == "diverged" and results[1].outcome["diverged_at"] == "adam iteration 1"
    assert results[1].reward == -math.log10(ERROR_CAP)  # whatever its frozen weights would score
    assert results[0].status == "ok" and results[0].reward > -math.log10(ERROR_CAP)


def test_a_padded_batch_gives_its_runs_what_an_unpadded_one_gives():
    """Padding (an accelerator worker's size classes): three runs trained among four give the
    results of three trained alone in a batch, report three losses, and a sequential engine sees
    three runs after Adam. The fourth run is a copy of the third and is not returned."""
    engine = BanditEngine("advection", mode="sequential", policy="mean", seed=0)
    a, b = Arm.parse("u,flux"), Arm.parse("uxx")
    engine.observe(*[Observation({"beta": 1.0 + i}, a, 2.0, b if i % 2 else a, 0.5) for i in range(8)])
    explicit = [req(params={"beta": 2.0 + 3 * j}, arm="u,flux", seed=j, dtype="float64") for j in range(2)]
    learned = req(params={"beta": 7.0}, arm="u,flux", mode="sequential", seed=5, dtype="float64")
    runs_in = [Run.explicit(r) for r in explicit] + [Run(learned, a, None, "mean", "study")]
    runs = {}
    for pad in (False, True):
        seen, arms_seen = [], []
        live = BanditEngine.from_snapshot(engine.snapshot())
        original = live.report_adam

        def report(*args, _orig=original, _arms=arms_seen, **kw):
            _arms.append(args[0])
            return _orig(*args, **kw)

        live.report_adam = report
        runs[pad] = run_solve_batch(runs_in, device="cpu", choosers={"study": live}, progress=seen.append, pad=pad)
        assert all(len(p.loss) == 3 for p in seen) and arms_seen == [{"beta": 7.0}]
    assert [r.batch_size for r in runs[True]] == [3, 3, 3]
    for plain, padded in zip(runs[False], runs[True], strict=True):
        assert (padded.status, padded.arm_lbfgs) == (plain.status, plain.arm_lbfgs)
        assert padded.rel_l2 == pytest.approx(plain.rel_l2, rel=1e-9)
        assert padded.reward_adam == plain.reward_adam
        w_plain, w_padded = TrainedModel.from_bytes(plain.model), TrainedModel.from_bytes(padded.model)
        np.testing.assert_allclose(w_padded.weights.numpy(), w_plain.weights.numpy(), rtol=1e-9, atol=1e-12)


def test_a_padded_batch_whose_runs_are_all_cancelled_ends():
    r = [req(params={"beta": 3.0}, arm="u", seed=s, adam=400, lbfgs=100) for s in range(3)]
    polls = []

    def should_stop():
        polls.append(1)
        return {0, 1, 2} if len(polls) >= 2 else set()

    seen = []
    results = run_solve_batch([Run.explicit(x) for x in r], device="cpu", should_stop=should_stop, pad=True,
                              progress=seen.append)  # fmt: skip
    assert [x.status for x in results] == ["cancelled"] * 3
    # the padding run was stopped with them: the training ended within the activity check's 25 iterations
    assert seen[-1].phase == "adam" and seen[-1].iteration <= 50
    assert [x.outcome["adam_iterations"] for x in results] == [20] * 3
    assert all(x.outcome["lbfgs_iterations"] == 0 for x in results)

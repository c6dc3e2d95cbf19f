"""Batched training equals training alone; L-BFGS matches torch's; divergence is an outcome."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from metalic.arms import Arm
from metalic.domain import Box, slabs
from metalic.families import get_family
from metalic.families.base import Family, Param, ReferenceGrid
from metalic.pinn.adam import FlatAdam
from metalic.pinn.artefact import evaluate_batch
from metalic.pinn.evaluate import ERROR_CAP, metrics_of, reward_of
from metalic.pinn.lbfgs import MAX_ITER, TOL_GRAD, TOL_LOSS, TOL_STEP, batched_lbfgs
from metalic.pinn.network import StackedMLP
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch

SMALL = PinnConfig(n_collocation=64, n_boundary=16, n_interface=11)
SHORT = TrainConfig(adam=15, lbfgs=10, compile=False)


def _solo_and_batch(family, specs, pinn=SMALL, train=SHORT, dtype="float64"):
    batch = train_batch(family, specs, pinn, train, device="cpu", dtype=dtype)
    solos = [train_batch(family, [s], pinn, train, device="cpu", dtype=dtype) for s in specs]
    return batch, solos


@pytest.mark.parametrize("family_name", ["advection", "burgers", "kdv"])
def test_batched_runs_equal_runs_trained_alone(family_name):
    fam = get_family(family_name)
    rng = np.random.default_rng(3)
    arms = ["u,flux", "all", "res,gres,uxx", "none"]
    specs = [
        RunSpec(
            {p.name: float(rng.uniform(p.lo, p.hi)) for p in fam.params},
            arms[k],
            arms[(k + 1) % 4] if k % 2 else None,
            seed=k,
        )
        for k in range(4)
    ]
    batch, solos = _solo_and_batch(fam, specs)
    for k, solo in enumerate(solos):
        a, b = batch.outcomes[k], solo.outcomes[0]
        assert a.lbfgs_iterations == b.lbfgs_iterations
        assert a.phase_losses["adam"] == pytest.approx(b.phase_losses["adam"], rel=1e-9)
        assert a.loss == pytest.approx(b.loss, rel=1e-8)
        for key, value in b.loss_parts.items():
            assert a.loss_parts[key] == pytest.approx(value, rel=1e-7, abs=1e-12), key
        torch.testing.assert_close(batch.net.theta[k], solo.net.theta[0], rtol=1e-7, atol=1e-9)


def test_batched_equals_alone_in_float32_and_with_three_slabs():
    fam = get_family("heat")
    pinn = replace(SMALL, subdomains=3)
    specs = [RunSpec({"a": 1.0, "b": -1.0, "c": 0.5, "d": 0.0}, "u,uyy", seed=1),
             RunSpec({"a": -2.0, "b": 0.3, "c": 0.0, "d": 1.5}, "ux,uxx,res_continuity", seed=2)]  # fmt: skip
    batch, solos = _solo_and_batch(fam, specs, pinn=pinn, train=replace(SHORT, lbfgs=0), dtype="float32")
    assert batch.problem.decomposition.n_subdomains == 3
    for k, solo in enumerate(solos):
        assert batch.outcomes[k].loss == pytest.approx(solo.outcomes[0].loss, rel=1e-4)


def test_training_is_seeded_and_reproducible():
    fam = get_family("reaction")
    runs = [train_batch(fam, [RunSpec({"rho": 4.0}, "u", seed=s)], SMALL, SHORT, device="cpu") for s in (5, 5, 6)]
    assert runs[0].outcomes[0].loss == runs[1].outcomes[0].loss
    assert runs[0].outcomes[0].loss != runs[2].outcomes[0].loss


def test_lbfgs_reports_iterations_and_why_it_stopped():
    fam = get_family("advection")
    full = train_batch(fam, [RunSpec({"beta": 2.0}, "u", seed=0)], SMALL, replace(SHORT, lbfgs=25))
    assert full.outcomes[0].lbfgs_iterations == 25
    assert full.outcomes[0].lbfgs_stop == MAX_ITER
    spec = [RunSpec({"beta": 2.0}, "u", seed=0)]
    at_start = train_batch(fam, spec, SMALL, replace(SHORT, lbfgs=25, tolerance_grad=1e6))
    assert (at_start.outcomes[0].lbfgs_iterations, at_start.outcomes[0].lbfgs_stop) == (0, TOL_GRAD)
    early = train_batch(fam, spec, SMALL, replace(SHORT, lbfgs=25, tolerance_change=1e-2))
    assert 1 <= early.outcomes[0].lbfgs_iterations < 25
    assert early.outcomes[0].lbfgs_stop in (TOL_LOSS, TOL_STEP)


def _rosenbrock(theta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    a, b = theta[..., :-1], theta[..., 1:]
    return (scale[:, None] * (b - a**2) ** 2 + (1 - a) ** 2).sum(-1)


@pytest.mark.parametrize(
    "compile_steps", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"]
)
def test_batched_lbfgs_reproduces_torch_lbfgs_per_run(compile_steps):
    """Also with the steps compiled, where every run's history is padded to its full size."""
    torch.manual_seed(0)
    start = torch.randn(3, 6, dtype=torch.float64)
    scale = torch.tensor([1.0, 5.0, 20.0], dtype=torch.float64)

    def closure(theta):
        t = theta.detach().requires_grad_(True)
        loss = _rosenbrock(t, scale)
        (g,) = torch.autograd.grad(loss.sum(), t)
        return loss.detach(), g

    theta = start.clone()
    result = batched_lbfgs(closure, theta, max_iter=40, lr=0.05, history=7, compile_steps=compile_steps)
    for k in range(3):
        x = start[k].clone().requires_grad_(True)
        opt = torch.optim.LBFGS([x], lr=0.05, max_iter=40, history_size=7)

        def f(x=x, k=k, opt=opt):
            opt.zero_grad()
            loss = _rosenbrock(x[None], scale[k : k + 1])[0]
            loss.backward()
            return loss

        opt.step(f)
        torch.testing.assert_close(theta[k], x.detach(), rtol=1e-10, atol=1e-12)
        assert result.iterations[k] == opt.state[opt._params[0]]["n_iter"]


class HostReads(TorchDispatchMode):
    """Counts the operations that read a tensor's value back to the host (on a GPU each one
    stalls the stream): scalar reads (``item``, ``bool``, ``int``), data-dependent shapes
    (``nonzero``, boolean-mask indexing) and ``tolist``."""

    SCALAR = frozenset({torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default})
    INDEXING = frozenset(
        {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default}
    )

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.SCALAR or func is torch.ops.aten.masked_select.default:
            self.count += 1
        elif func in self.INDEXING:
            indices = args[1] if len(args) > 1 else []
            self.count += any(i is not None and i.dtype == torch.bool for i in indices)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        mode = self

        def counted(tensor):
            mode.count += 1
            return mode._tolist(tensor)

        torch.Tensor.tolist = counted
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


def test_batched_lbfgs_reads_back_to_the_host_at_most_ten_times_in_a_hundred_iterations():
    torch.manual_seed(1)
    theta = torch.randn(8, 30, dtype=torch.float64)
    scale = torch.linspace(1.0, 50.0, 8, dtype=torch.float64)

    def closure(x):
        t = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = _rosenbrock(t, scale)
            (g,) = torch.autograd.grad(loss.sum(), t)
        return loss.detach(), g

    with HostReads() as reads:
        result = batched_lbfgs(closure, theta, max_iter=100, lr=0.002, history=10)
    assert result.iterations == [100] * 8 and result.reasons == ["max_iter"] * 8  # all 100 ran
    assert reads.count <= 10, reads.count
    # the counter sees what it is meant to count
    with HostReads() as probe:
        x = torch.ones(3)
        bool(x.any()), x[x > 0], x.tolist()
    assert probe.count == 3


def test_host_reads_of_a_training_do_not_grow_with_its_iterations():
    """Neither loop reads the device per iteration: 100 more Adam or L-BFGS iterations of a K = 8
    batch add only the progress points (every 50) and the every-25-iterations activity checks."""
    fam = get_family("advection")
    specs = [RunSpec({"beta": 2.0 + j}, "u,flux", seed=j) for j in range(8)]

    def reads(adam: int, lbfgs: int) -> int:
        train = TrainConfig(adam=adam, lbfgs=lbfgs, compile=False, tolerance_change=0.0)
        with HostReads() as counter:
            train_batch(fam, specs, SMALL, train, device="cpu", dtype="float64")
        return counter.count

    base = reads(100, 100)
    assert reads(200, 100) - base <= 10  # 100 more Adam iterations
    assert reads(100, 200) - base <= 10  # 100 more L-BFGS iterations


def _nan_family() -> Family:
    """A test family whose residual is NaN when q > 0.5: a run that must be recorded as diverged."""
    domain = Box((0.0, 0.0), (1.0, 1.0))

    def residual(d, p, x):
        # log of a negative number: NaN for q > 0.5, a harmless 0 otherwise
        return d["u_t"] + d["u_x"] + 0 * torch.log(0.5 - p["q"])

    def reference(p):
        axes = (np.linspace(0, 1, 11), np.linspace(0, 1, 11))
        return ReferenceGrid(axes, np.zeros((11, 11)))

    return Family(
        name="nan-test",
        equation="u_t + u_x = 0 (NaN for q > 0.5)",
        coords=("x", "t"),
        domain=domain,
        params=(Param("q", 0.0, 1.0, 0.0),),
        residual_uses=("u_t", "u_x"),
        residual=residual,
        boundary_edges=((1, 0),),
        boundary_value=lambda p, pts: np.sin(pts[:, 0]),
        reference=reference,
        default_decomposition=slabs(domain, 1, 2),
        slab_axis=1,
        time_axis=1,
    )


def test_a_diverged_run_is_an_outcome_and_the_others_are_untouched():
    fam = _nan_family()
    specs = [RunSpec({"q": 0.1}, "u", seed=0), RunSpec({"q": 0.9}, "u", seed=1)]
    batch = train_batch(fam, specs, SMALL, SHORT, device="cpu", dtype="float64")
    alone = train_batch(fam, specs[:1], SMALL, SHORT, device="cpu", dtype="float64")
    assert batch.outcomes[1].status == "diverged"
    assert batch.outcomes[1].diverged_at == "adam iteration 1"
    assert batch.outcomes[1].adam_iterations == 0
    assert batch.outcomes[0].status == "ok"
    assert batch.outcomes[0].loss == pytest.approx(alone.outcomes[0].loss, rel=1e-9)
    # the diverged run keeps exactly its initial weights: it went bad at Adam iteration 1
    initial = StackedMLP(
        SMALL.layers_for(fam), 2, batch.problem.decomposition.bounding_boxes(), [0, 1], dtype=torch.float64
    )
    torch.testing.assert_close(batch.net.theta[1], initial.theta[1].detach(), rtol=0, atol=0)
    assert not torch.equal(batch.net.theta[0], initial.theta[0].detach())  # the healthy run trained
    metrics = evaluate_batch(batch)
    assert len(metrics) == 2


def test_blow_up_in_lbfgs_is_caught_and_reverted():
    """Without the step guard (``lbfgs_guard=0``, torch's fixed step)."""
    fam = get_family("advection")
    batch = train_batch(
        fam,
        [RunSpec({"beta": 5.0}, "u", seed=0)],
        SMALL,
        TrainConfig(adam=0, lbfgs=5, lbfgs_lr=1e9, compile=False, lbfgs_guard=0),
        device="cpu",
    )
    out = batch.outcomes[0]
    assert out.status == "diverged" and out.lbfgs_stop == "diverged"
    assert out.diverged_at.startswith("lbfgs iteration")
    # reverted: the weights are those of the last finite iteration, i.e. what a training that
    # stops one iteration before the blow-up ends with
    bad = int(out.diverged_at.rsplit(" ", 1)[1])
    before = train_batch(
        fam,
        [RunSpec({"beta": 5.0}, "u", seed=0)],
        SMALL,
        TrainConfig(adam=0, lbfgs=bad - 1, lbfgs_lr=1e9, compile=False, lbfgs_guard=0),
        device="cpu",
    )
    assert before.outcomes[0].status == "ok"
    torch.testing.assert_close(batch.net.theta, before.net.theta, rtol=0, atol=0)


def test_the_step_guard_turns_the_same_blow_up_into_a_training_that_keeps_its_weights():
    """The default guard undoes every step that throws the loss up and shrinks the step until
    one is accepted or it gives up: the run ends ``ok``, with a loss no higher than at the start."""
    fam = get_family("advection")
    spec = [RunSpec({"beta": 5.0}, "u", seed=0)]
    batch = train_batch(fam, spec, SMALL, TrainConfig(adam=0, lbfgs=40, lbfgs_lr=1e9, compile=False), device="cpu")
    out = batch.outcomes[0]
    start = train_batch(fam, spec, SMALL, TrainConfig(adam=0, lbfgs=0, compile=False), device="cpu").outcomes[0]
    assert out.status == "ok" and out.diverged_at is None
    assert out.lbfgs_rejected >= 13  # 1e9 needs at least 13 halvings of the step
    assert math.isfinite(out.loss) and out.loss <= start.loss


@pytest.mark.parametrize(
    "compile_steps", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"]
)
def test_the_step_guard_keeps_lbfgs_from_diverging_where_a_fixed_step_does(compile_steps):
    """Rosenbrock (scale 100) from 16 starts at lr 0.5, no line search: a fixed step throws run 9
    to a loss of 1e245; with the guard every run converges, and the runs whose steps were never
    rejected are bit-identical to torch's algorithm."""
    torch.manual_seed(0)
    start = torch.randn(16, 6, dtype=torch.float64) * 1.5
    scale = torch.full((16,), 100.0, dtype=torch.float64)

    def closure(theta):
        with torch.enable_grad():
            t = theta.detach().requires_grad_(True)
            loss = _rosenbrock(t, scale)
            (g,) = torch.autograd.grad(loss.sum(), t)
        return loss.detach(), g

    fixed, guarded = start.clone(), start.clone()
    plain = batched_lbfgs(closure, fixed, 500, lr=0.5, history=10, compile_steps=compile_steps)
    guard = batched_lbfgs(closure, guarded, 500, lr=0.5, history=10, step_guard=10.0, compile_steps=compile_steps)
    assert plain.reasons[9] == "diverged" and plain.rejected is None
    assert "diverged" not in guard.reasons and guard.rejected[9] > 0
    assert float(_rosenbrock(guarded, scale).max()) < 4.5  # two runs end at the saddle-ish f = 4
    assert float(_rosenbrock(guarded[9:10], scale[9:10])[0]) < 1e-10
    untouched = [k for k in range(16) if guard.rejected[k] == 0]
    assert len(untouched) >= 8
    assert torch.equal(guarded[untouched], fixed[untouched])


def test_a_run_whose_every_step_is_rejected_gives_up_where_it_started():
    """A loss that is NaN anywhere but at the start: every step is undone and halved; after 13
    halvings the run stops ``step_rejected`` on its starting weights, and its batch-mate (an
    ordinary quadratic) is not disturbed."""
    from metalic.pinn.lbfgs import GIVE_UP_HALVINGS, STEP_REJECTED

    start = torch.tensor([[0.5, -0.5], [0.5, -0.5]], dtype=torch.float64)

    def closure(x):
        loss = ((x - 1.0) ** 2).sum(1)
        g = 2 * (x - 1.0)
        moved = (x != start).any(1)
        trap = torch.tensor([True, False]) & moved
        return torch.where(trap, math.nan, loss), torch.where(trap[:, None], math.nan, g)

    x = start.clone()
    result = batched_lbfgs(closure, x, 100, lr=1.0, history=5, step_guard=10.0)
    assert result.reasons[0] == STEP_REJECTED
    assert result.rejected[0] == GIVE_UP_HALVINGS + 1 == result.iterations[0]
    assert torch.equal(x[0], start[0])
    assert result.reasons[1] != STEP_REJECTED and result.rejected[1] == 0
    assert float((x[1] - 1.0).abs().max()) < 1e-8


def test_reward_is_capped():
    assert reward_of(math.nan) == -math.log10(ERROR_CAP)
    assert reward_of(1e5) == -math.log10(ERROR_CAP)
    assert reward_of(1e-3) == pytest.approx(3.0)
    m = metrics_of(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
    assert m.reward == -2.0


@pytest.mark.parametrize("bad", [{"adam": -1}, {"lbfgs": -5}, {"adam_lr": 0.0}])
def test_bad_budgets_are_rejected_before_training(bad):
    with pytest.raises(ValueError):
        train_batch(get_family("heat"), [RunSpec({}, "u")], SMALL, replace(SHORT, **bad))


def test_single_domain_pinn_has_no_interface():
    fam = get_family("advection")
    batch = train_batch(fam, [RunSpec({"beta": 2.0}, "all", seed=0)], replace(SMALL, subdomains=1), SHORT)
    assert batch.problem.decomposition.n_subdomains == 1
    assert batch.problem.side_a.numel() == 0
    parts = batch.outcomes[0].loss_parts
    assert all(parts[f"iface_{n}"] == 0.0 for n in ("u", "flux", "gres"))
    assert math.isfinite(batch.outcomes[0].loss)


def test_between_phases_hook_sees_the_adam_phase_errors_and_sets_the_lbfgs_arms():
    fam = get_family("burgers")
    seen = {}

    def choose(metrics):
        seen["metrics"] = metrics
        return ["u,flux" if m.rel_l2 > 0.5 else "all" for m in metrics]

    specs = [RunSpec({"nu": 0.02}, "u", seed=0), RunSpec({"nu": 0.01}, "none", seed=1)]
    batch = train_batch(fam, specs, SMALL, SHORT, between_phases=choose)
    assert len(seen["metrics"]) == 2
    for spec, m, out in zip(batch.specs, seen["metrics"], batch.outcomes, strict=True):
        assert out.rel_l2_adam == m.rel_l2
        assert spec.arm_lbfgs == Arm.parse("u,flux" if m.rel_l2 > 0.5 else "all")
    # the same arms given up front give the same training
    fixed = [replace(s, arm_lbfgs=b.arm_lbfgs) for s, b in zip(specs, batch.specs, strict=True)]
    again = train_batch(fam, fixed, SMALL, SHORT)
    for a, b in zip(batch.outcomes, again.outcomes, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-5)


def test_the_trainer_gives_back_frozen_objects_even_when_a_callback_raises():
    import gc

    def explode(progress):
        if progress.iteration >= 20:
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        train_batch(get_family("advection"), [RunSpec({"beta": 2.0}, "u")], SMALL, replace(SHORT, adam=40),
                    progress=explode, progress_every=10)  # fmt: skip
    assert gc.get_freeze_count() == 0


def _blows_up_past(q_family: Family) -> Family:
    """The NaN family with a residual that turns NaN once max |u| exceeds q (mid-training)."""

    def residual(d, p, x):
        return d["u_t"] + d["u_x"] + 0 * torch.log(p["q"] - d["u"].abs().amax(-1, keepdim=True))

    return replace(q_family, name="nan-mid", residual=residual, residual_uses=("u", "u_t", "u_x"))


def test_a_run_that_diverges_mid_adam_is_frozen_at_that_iteration():
    fam = _blows_up_past(_nan_family())
    adam = TrainConfig(adam=60, lbfgs=0, compile=False)
    specs = [RunSpec({"q": 0.7}, "u", seed=0), RunSpec({"q": 1.0}, "u", seed=0)]
    batch = train_batch(fam, specs, SMALL, adam, device="cpu", dtype="float64")
    out = batch.outcomes[0]
    assert out.status == "diverged" and out.diverged_at.startswith("adam iteration ")
    bad = int(out.diverged_at.rsplit(" ", 1)[1])
    assert 1 < bad < 60 and out.adam_iterations == bad - 1
    # its weights are exactly those of the same run trained for the iterations before it went bad
    before = train_batch(fam, specs[:1], SMALL, replace(adam, adam=bad - 1, lbfgs=0), dtype="float64")
    # (it ran all bad - 1 iterations; the loss at those weights is the bad one, seen after Adam)
    assert before.outcomes[0].adam_iterations == bad - 1 and before.outcomes[0].diverged_at == "end of adam"
    # (equal to rounding: a batch of two and a batch of one reduce in another order; one more or
    # one fewer Adam step would move the weights by about lr = 1e-3)
    torch.testing.assert_close(batch.net.theta[0], before.net.theta[0], rtol=1e-12, atol=1e-15)
    # the other run never noticed
    alone = train_batch(fam, specs[1:], SMALL, adam, device="cpu", dtype="float64")
    assert batch.outcomes[1].status == "ok"
    torch.testing.assert_close(batch.net.theta[1], alone.net.theta[0], rtol=1e-9, atol=1e-12)


def test_the_progress_callback_gets_every_runs_loss_at_each_progress_point():
    fam = get_family("advection")
    seen = []
    specs = [RunSpec({"beta": 2.0}, "u", seed=0), RunSpec({"beta": 9.0}, "u,flux", seed=1)]
    batch = train_batch(fam, specs, SMALL, replace(SHORT, adam=20, lbfgs=10), dtype="float64",
                        progress=seen.append, progress_every=5)  # fmt: skip
    assert [(p.phase, p.iteration, p.total) for p in seen] == [
        ("adam", 5, 20), ("adam", 10, 20), ("adam", 15, 20), ("adam", 20, 20), ("lbfgs", 5, 10), ("lbfgs", 10, 10)
    ]  # fmt: skip
    assert all(len(p.loss) == 2 and p.runs is None for p in seen)
    # each report is the runs' loss at that iteration: the last L-BFGS one is the final loss
    assert seen[-1].loss == pytest.approx([o.loss for o in batch.outcomes], rel=1e-9)
    assert all(seen[-1].loss[j] < seen[0].loss[j] for j in range(2))


def test_an_lbfgs_run_whose_direction_no_longer_descends_stops_with_no_descent():
    from metalic.pinn.lbfgs import NO_DESCENT

    # run 1's gradient is about 1e-7: above the gradient tolerance (1e-9 max abs), yet the
    # directional derivative g.d (about -1e-14) is not below -tolerance_change (-1e-12): no step
    # it could take would be a measurable descent, so it stops before moving; run 0 minimises
    scale = torch.tensor([1.0, 1e-7], dtype=torch.float64)
    target = torch.ones(2, 2, dtype=torch.float64)

    def closure(x):
        return 0.5 * scale * ((x - target) ** 2).sum(1), scale[:, None] * (x - target)

    x = torch.zeros(2, 2, dtype=torch.float64)
    result = batched_lbfgs(closure, x, 50, lr=1.0, history=5)
    assert result.reasons[1] == NO_DESCENT and result.iterations[1] == 0
    assert torch.equal(x[1], torch.zeros(2, dtype=torch.float64))  # never moved
    assert result.reasons[0] != NO_DESCENT and result.iterations[0] > 1
    assert float((x[0] - target[0]).abs().max()) < 1e-6


def test_final_time_data_adds_the_reference_at_t_end_to_the_last_slab_only():
    from metalic.pinn.evaluate import predict_stitched
    from metalic.pinn.problem import build_problem

    fam, params = get_family("advection"), {"beta": 20.0}  # split in time: t = const slabs
    cfg = PinnConfig(n_collocation=32, n_boundary=16, n_interface=11, subdomains=2)
    plain = build_problem(fam, [params], [0], cfg)
    final = build_problem(fam, [params], [0], replace(cfg, final_time_data=True))
    n_plain = plain.x_main.shape[2]
    assert final.x_main.shape[2] == n_plain + 16  # one more block of 16 data points per subdomain
    block, on = final.x_main[0, :, n_plain:], final.m_data[0, :, -16:]  # [S, 16, 2], [S, 16]
    t_end = fam.domain.hi[1]
    # the slab that ends at t = T has 16 points there with the reference's values; the other none
    assert on[1].sum() == 16 and on[0].sum() == 0
    torch.testing.assert_close(block[1, :, 1], torch.full((16,), t_end, dtype=block.dtype))
    ref = fam.reference_grid(params).interpolate(block[1].double().numpy())
    np.testing.assert_allclose(final.g_data[0, 1, -16:].numpy(), ref, rtol=1e-5, atol=1e-6)
    # and a training with it ends closer to the reference at t = T than one without it
    train = TrainConfig(adam=300, lbfgs=300, compile=False)
    x = np.stack([np.linspace(*fam.domain.lo[:1], *fam.domain.hi[:1], 101), np.full(101, t_end)], axis=1)
    truth = fam.reference_grid(params).interpolate(x)
    errors = []
    for use in (False, True):
        batch = train_batch(fam, [RunSpec(params, "u,flux", seed=0)], replace(cfg, final_time_data=use,
                            n_collocation=200), train, dtype="float64")  # fmt: skip
        pred = predict_stitched(batch.net, batch.problem.decomposition, x)[0]
        errors.append(np.linalg.norm(pred - truth) / np.linalg.norm(truth))
    assert errors[1] < 0.25 * errors[0], errors  # measured: 0.92 without, 0.079 with


def test_poisson_trains_to_a_small_error():
    fam = get_family("poisson")
    batch = train_batch(fam, [RunSpec({"s": 10.0}, "u,flux", seed=0)], PinnConfig(n_collocation=300, n_boundary=60),
                        TrainConfig(adam=300, lbfgs=300, compile=False), dtype="float64")  # fmt: skip
    (m,) = evaluate_batch(batch)
    assert batch.outcomes[0].status == "ok" and m.rel_l2 < 0.1, m


def test_each_run_of_a_batch_is_scored_on_its_own_reference_grid():
    """Two parameter sets whose reference grids differ (11 x 11 and 17 x 13 points): each run's
    error is the one measured on its own grid."""
    from metalic.pinn.evaluate import predict_stitched
    from metalic.pinn.trainer import current_metrics

    def exact(p, pts):
        return np.sin(np.pi * pts[:, 0]) * np.exp(-p["q"] * pts[:, 1])

    def reference(p):
        n0, n1 = (11, 11) if p["q"] < 0.5 else (17, 13)
        axes = (np.linspace(0, 1, n0), np.linspace(0, 1, n1))
        a, b = np.meshgrid(*axes, indexing="ij")
        return ReferenceGrid(axes, exact(p, np.stack([a.ravel(), b.ravel()], 1)).reshape(n0, n1))

    # the NaN test family's domain and split, with a finite residual and its own references
    fam = replace(
        _nan_family(),
        name="two-grids",
        equation="u_t + q u = 0",
        residual_uses=("u", "u_t"),
        residual=lambda d, p, x: d["u_t"] + p["q"] * d["u"],
        boundary_value=exact,
        reference=reference,
    )
    specs = [RunSpec({"q": 0.2}, "u", seed=0), RunSpec({"q": 0.9}, "u", seed=1)]
    batch = train_batch(fam, specs, SMALL, SHORT, dtype="float64")
    grids = [fam.reference_grid(s.params) for s in specs]
    assert grids[0].u.shape != grids[1].u.shape
    got = current_metrics(fam, batch.problem, batch.net)
    for j, grid in enumerate(grids):
        own = metrics_of(predict_stitched(batch.net, batch.problem.decomposition, grid.points())[j], grid.u.ravel())
        assert got[j] == own
    # the second run scored on the first run's grid would give another error
    other = predict_stitched(batch.net, batch.problem.decomposition, grids[0].points())[1]
    assert metrics_of(other, exact(specs[1].params, grids[0].points())).rel_l2 != pytest.approx(got[1].rel_l2)


def test_the_between_phases_hook_sees_the_capped_reward_for_a_run_that_diverged_in_adam():
    seen = {}

    def choose(metrics):
        seen["metrics"] = metrics
        return ["u"] * len(metrics)

    specs = [RunSpec({"q": 0.1}, "u", seed=0), RunSpec({"q": 0.9}, "u", seed=1)]
    batch = train_batch(_nan_family(), specs, SMALL, SHORT, dtype="float64", between_phases=choose)
    healthy, diverged = seen["metrics"]
    assert batch.outcomes[1].status == "diverged"
    assert diverged.reward == reward_of(math.nan) == -2.0 and math.isnan(diverged.rel_l2)
    assert math.isnan(diverged.max_abs) and math.isfinite(healthy.max_abs)  # the healthy run is measured
    # (this family's reference is 0, so the healthy run's relative error is huge and capped too)


def test_flat_adam_is_torch_fused_adam_bit_for_bit_and_freezes_a_run():
    """The trainer's Adam calls torch's fused kernel directly; its updates equal
    ``torch.optim.Adam(fused=True)``'s exactly, and a frozen run's weights do not move."""
    gen = torch.Generator().manual_seed(3)
    target = torch.randn(3, 40, generator=gen)
    ours = torch.randn(3, 40, generator=gen).requires_grad_()
    theirs = ours.detach().clone().requires_grad_()
    adam, reference = FlatAdam(ours, lr=0.01), torch.optim.Adam([theirs], lr=0.01, fused=True)
    for _ in range(30):
        for w in (ours, theirs):
            w.grad = None
            ((w - target) ** 4).sum().backward()
        adam.step()
        reference.step()
    assert torch.equal(ours, theirs)
    frozen = torch.tensor([[False], [True], [False]])
    before = ours.detach().clone()
    ours.grad = torch.ones_like(ours)
    ours.grad[1] = math.nan  # a diverged run's gradient
    adam.freeze(frozen)
    adam.step()
    assert torch.equal(ours[1], before[1])
    assert torch.isfinite(ours).all() and not torch.equal(ours[0], before[0])


def test_an_eager_training_does_not_import_the_compiler():
    """A one-off eager solve must not pay for importing torch._dynamo (about 1.5 s on 2 cores)."""
    code = (
        "import sys\n"
        "from metalic.families import get_family\n"
        "from metalic.pinn.problem import PinnConfig\n"
        "from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch\n"
        "cfg = PinnConfig(n_collocation=20, n_boundary=8, n_interface=5)\n"
        "train_batch(get_family('burgers'), [RunSpec({'nu': 0.01}, 'u,flux')], cfg,\n"
        "            TrainConfig(adam=3, lbfgs=3, compile=False), device='cpu')\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(sys.platform != "linux", reason="the heap thresholds are glibc's")
def test_a_second_training_in_a_process_does_not_fault_fresh_pages_every_step():
    """Freed step buffers stay in the heap (pinn/heap.py): in a fresh process, the L-BFGS phase of
    a second eager training (default Burgers set-up, all nine terms) touches almost no new pages.
    Without the thresholds this measured 800-960 minor page faults per iteration."""
    code = (
        "import json, resource\n"
        "from metalic.families import get_family\n"
        "from metalic.pinn.heap import keep_freed_memory\n"
        "from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch\n"
        "marks = {}\n"
        "def progress(p):\n"
        "    marks[(p.phase, p.iteration)] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(2):\n"
        "    train_batch(get_family('burgers'), [RunSpec({'nu': 0.01}, 'all')],\n"
        "                train_config=TrainConfig(adam=20, lbfgs=60, compile=False), device='cpu',\n"
        "                progress=progress, progress_every=20)\n"
        "per_iteration = (marks[('lbfgs', 60)] - marks[('lbfgs', 20)]) / 40\n"
        "print(json.dumps({'set': keep_freed_memory(), 'faults': per_iteration}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["set"] is True
    assert result["faults"] < 100, result

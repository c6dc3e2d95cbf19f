"""torch.compile of the loss gives the same values and gradients as eager execution."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import pytest
import torch

from metalic.arms import Arm, needed_quantities
from metalic.families import get_family
from metalic.pinn.loss import PinnLoss
from metalic.pinn.network import StackedMLP
from metalic.pinn.problem import PinnConfig, build_problem


@pytest.mark.slow
def test_compiled_loss_matches_eager_with_and_without_causal_weights():
    """The one inductor compile of a loss in the suite (a cold one costs 60-90 s on 2 cores): every
    derivative (arm ``all``), one causal run (eps = 10) and one plain run (eps = 0) give the values,
    smallest weights and gradients of eager execution; eps = 0 is the plain loss, bit for bit. The
    tests of what is done with compiled losses (leases, recompiles, marching) use ``aot_eager``."""
    fam = get_family("burgers")
    cfg = PinnConfig(n_collocation=200, n_boundary=20, n_interface=41, causal_chunks=16)
    problem = build_problem(fam, [{"nu": 0.01}, {"nu": 0.03}], [0, 1], cfg, causal=True)
    net = StackedMLP(cfg.layers_for(fam), 2, problem.decomposition.bounding_boxes(), [0, 1])
    arms = [Arm.parse("all"), Arm.parse("u,res_continuity,flux")]
    loss = PinnLoss(problem, net, cfg, needed_quantities(arms))
    weights = torch.tensor([a.loss_weights for a in arms])
    eps = torch.tensor([10.0, 0.0])
    eager = loss(weights, eps)
    (g_eager,) = torch.autograd.grad(eager.total.sum(), net.theta)
    compiled = torch.compile(loss.__call__)(weights, eps)
    (g_compiled,) = torch.autograd.grad(compiled.total.sum(), net.theta)
    torch.testing.assert_close(compiled.total, eager.total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.min_weight, eager.min_weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-5)
    assert eager.min_weight[0] < 1.0  # the causal run is weighted
    assert eager.total[1].item() == loss(weights).total[1].item()  # eps = 0: the plain loss, bit for bit


@pytest.mark.slow
def test_a_second_compiled_training_of_the_same_shape_does_not_recompile(monkeypatch):
    """One compile per batch shape (and derivative set) and process: a later training with other
    parameters, seeds and arms reuses the graph (dynamo is told to raise on any recompilation),
    trains what an eager training trains, and leaves the first training's returned network alone.
    A batch whose arms need fewer derivatives reuses it too."""
    from torch._dynamo.utils import counters

    from metalic.pinn import compiled
    from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch

    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")  # dynamo's guards and graphs, no C++ build
    monkeypatch.setattr(compiled, "_KEPT", OrderedDict())  # no later test reuses these kept losses
    fam = get_family("advection")
    cfg = PinnConfig(n_collocation=64, n_boundary=16, n_interface=9)
    train = TrainConfig(adam=20, lbfgs=5, compile=True)
    first = train_batch(fam, [RunSpec({"beta": 3.0}, "u,flux", seed=0), RunSpec({"beta": 9.0}, "all", seed=1)],
                        cfg, train, device="cpu", dtype="float64")  # fmt: skip
    kept = first.net.theta.detach().clone()
    graphs = counters["stats"]["unique_graphs"]
    second_specs = [RunSpec({"beta": 17.0}, "res,uxx", "u", seed=5), RunSpec({"beta": 25.0}, "uavg,gres", seed=6)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = train_batch(fam, second_specs, cfg, train, device="cpu", dtype="float64")
    assert counters["stats"]["unique_graphs"] == graphs
    eager = train_batch(fam, second_specs, cfg, TrainConfig(adam=20, lbfgs=5, compile=False),
                        device="cpu", dtype="float64")  # fmt: skip
    for a, b in zip(second.outcomes, eager.outcomes, strict=True):
        assert a.lbfgs_iterations == b.lbfgs_iterations
        assert a.loss == pytest.approx(b.loss, rel=1e-8)
    torch.testing.assert_close(second.net.theta, eager.net.theta, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(first.net.theta.detach(), kept, rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_lbfgs_steps_train_what_eager_steps_train():
    """The L-BFGS work around the loss compiled (history padded to its full size) gives the same
    training in float64; by default it is compiled only with the loss and off the CPU."""
    from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch

    fam = get_family("advection")
    cfg = PinnConfig(n_collocation=64, n_boundary=16, n_interface=9)
    specs = [RunSpec({"beta": 3.0}, "u,flux", seed=0), RunSpec({"beta": 9.0}, "all", seed=1)]
    eager = TrainConfig(adam=10, lbfgs=40, compile=False, compile_lbfgs=False)
    runs = [
        train_batch(fam, specs, cfg, c, device="cpu", dtype="float64")
        for c in (eager, replace(eager, compile_lbfgs=True))
    ]
    for a, b in zip(runs[0].outcomes, runs[1].outcomes, strict=True):
        assert (a.lbfgs_iterations, a.lbfgs_stop) == (b.lbfgs_iterations, b.lbfgs_stop)
        assert a.loss == pytest.approx(b.loss, rel=1e-8)
    torch.testing.assert_close(runs[1].net.theta, runs[0].net.theta, rtol=1e-7, atol=1e-9)
    assert TrainConfig(compile=True).use_compile_lbfgs(torch.device("cuda"))
    assert not TrainConfig(compile=True).use_compile_lbfgs(torch.device("cpu"))
    assert not TrainConfig(compile=False).use_compile_lbfgs(torch.device("cuda"))


def test_a_process_keeps_compiling_losses_past_dynamo_s_default_of_eight_graphs(monkeypatch):
    """A long-lived worker meets many batch shapes; each is a graph of ``PinnLoss.__call__``, and
    dynamo runs a code object eager once it holds 8. Ten batch sizes one after another are all
    compiled (dynamo's tracing alone, ``backend="eager"``, keeps this fast: the limit is dynamo's)."""
    from torch._dynamo.utils import counters

    from metalic.pinn import compiled
    from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch

    monkeypatch.setattr(compiled, "BACKEND", "eager")
    monkeypatch.setattr(compiled, "_KEPT", OrderedDict())  # no later test reuses these kept losses
    fam = get_family("advection")
    cfg = PinnConfig(n_collocation=8, n_boundary=4, n_interface=3)
    graphs = counters["stats"]["unique_graphs"]
    for k in range(1, 11):
        specs = [RunSpec({"beta": 2.0 + j}, "u", seed=j) for j in range(k)]
        train_batch(fam, specs, cfg, TrainConfig(adam=1, lbfgs=0, compile=True), device="cpu")
    assert counters["stats"]["unique_graphs"] - graphs == 10

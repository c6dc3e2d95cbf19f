"""torch.compile of the loss gives the same values and gradients as eager execution."""

from __future__ import annotations

import pytest
import torch

from metalic.families import get_family
from metalic.pinn.loss import PinnLoss
from metalic.pinn.network import StackedMLP
from metalic.pinn.problem import PinnConfig, build_problem


@pytest.mark.slow
def test_compiled_loss_matches_eager():
    fam = get_family("burgers")
    cfg = PinnConfig(n_collocation=200, n_boundary=20, n_interface=41)
    problem = build_problem(fam, [{"nu": 0.01}, {"nu": 0.03}], [0, 1], cfg)
    net = StackedMLP(cfg.layers, 2, problem.decomposition.bounding_boxes(), [0, 1])
    arms = torch.tensor([[1.0] * 9, [1, 0, 0, 1, 1, 0, 0, 0, 0]])
    loss = PinnLoss(problem, net, cfg, arms)
    eager = loss(arms).total
    (g_eager,) = torch.autograd.grad(eager.sum(), net.theta)
    compiled = torch.compile(loss.__call__)(arms).total
    (g_compiled,) = torch.autograd.grad(compiled.sum(), net.theta)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-5)

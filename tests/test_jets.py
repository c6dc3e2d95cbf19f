"""Closed-form derivative jets against nested reverse-mode autograd (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metalic.pinn.jets import TanhJet, downward_closure, faa_di_bruno, tanh_derivative_polys
from metalic.pinn.network import StackedMLP


def test_downward_closure_is_sorted_and_complete():
    assert downward_closure([(2, 1)]) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


def test_faa_di_bruno_counts_match_bell_numbers():
    # the number of set partitions of n directions is the Bell number
    for alpha, bell in [((1, 0), 1), ((2, 0), 2), ((2, 1), 5), ((4, 0), 15)]:
        assert sum(sum(c.values()) for c in faa_di_bruno(alpha).values()) == bell


def test_tanh_derivative_polynomials_match_autograd():
    z = torch.linspace(-2, 2, 9, dtype=torch.float64, requires_grad=True)
    f = torch.tanh(z)
    y = f.detach().numpy()
    for poly in tanh_derivative_polys(4)[1:]:
        (f,) = torch.autograd.grad(f.sum(), z, create_graph=True)
        np.testing.assert_allclose(f.detach().numpy(), np.polynomial.polynomial.polyval(y, poly), atol=1e-12)


@pytest.mark.parametrize("widths", [(2, 20, 20, 1), (2, 8, 1), (2, 10, 10, 10, 1)])
def test_network_jet_matches_nested_autograd(widths):
    boxes = np.array([[[-1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 2.0]]])
    net = StackedMLP(widths, 3, boxes, [1, 2, 3], dtype=torch.float64)
    x = torch.rand(3, 2, 7, 2, dtype=torch.float64, requires_grad=True)
    wanted = [(4, 0), (3, 1), (2, 2), (1, 3), (0, 4)]
    jet = net.jet(x, TanhJet(wanted))
    u = net(x)
    torch.testing.assert_close(jet[(0, 0)], u)
    cache = {(0, 0): u}

    def d(alpha):
        if alpha not in cache:
            i = 0 if alpha[0] > 0 else 1
            lower = (alpha[0] - (i == 0), alpha[1] - (i == 1))
            (g,) = torch.autograd.grad(d(lower).sum(), x, create_graph=True)
            cache[alpha] = g[..., i]
        return cache[alpha]

    for alpha in downward_closure(wanted):
        torch.testing.assert_close(jet[alpha], d(alpha), rtol=1e-10, atol=1e-10)


def test_jet_skips_zero_components_but_stays_exact_for_first_layer_only_net():
    net = StackedMLP((2, 5, 1), 1, np.array([[[0.0, 0.0], [1.0, 1.0]]]), [0], dtype=torch.float64)
    x = torch.rand(1, 1, 4, 2, dtype=torch.float64, requires_grad=True)
    jet = net.jet(x, TanhJet([(2, 0)]))
    (g,) = torch.autograd.grad(net(x).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g[..., 0].sum(), x)
    torch.testing.assert_close(jet[(2, 0)], gg[..., 0])


def test_a_periodic_networks_jet_equals_autograd_and_it_is_periodic():
    """KdV's network: Fourier features of x (3 harmonics, period 20) in the first layer."""
    import numpy as np

    from metalic.pinn.jets import TanhJet, downward_closure
    from metalic.pinn.network import StackedMLP

    boxes = np.array([[[0, 0], [20, 10]], [[0, 10], [20, 20]]], float)
    net = StackedMLP((2, 8, 8, 1), 2, boxes, [0, 1], dtype=torch.float64, period=20.0, harmonics=3)
    x = torch.rand(2, 2, 7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 20
    jet = net.jet(x, TanhJet(downward_closure([(3, 0), (1, 1), (0, 2)])))
    xr = x.clone().requires_grad_(True)

    def d(f, axis):
        return torch.autograd.grad(f.sum(), xr, create_graph=True)[0][..., axis]

    u = net(xr)
    ux, ut = d(u, 0), d(u, 1)
    uxx = d(ux, 0)
    for alpha, ref in {(0, 0): u, (1, 0): ux, (2, 0): uxx, (3, 0): d(uxx, 0), (0, 1): ut, (1, 1): d(ux, 1),
                       (0, 2): d(ut, 1)}.items():  # fmt: skip
        torch.testing.assert_close(jet[alpha], ref.detach(), rtol=1e-12, atol=1e-12)
    shifted = x.clone()
    shifted[..., 0] += 20.0
    torch.testing.assert_close(net(shifted), net(x), rtol=1e-12, atol=1e-12)
    assert net.n_weights == 2 * ((2 * 3 + 1) * 8 + 8 + 8 * 8 + 8 + 8 + 1)

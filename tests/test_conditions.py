"""Every interface term on analytic fields whose term values are known in closed form.

Side derivatives come from torch autograd on explicit functions u(x, t), so these tests check the
catalogue (and the normal / tangential bookkeeping) independently of any network.
"""

from __future__ import annotations

import math

import pytest
import torch

from metalic.arms import ALL as ALL_TERMS
from metalic.conditions import N_TERMS, TERM_NAMES, required_derivatives, side_quantities, term_values
from metalic.families import get_family

ALL = set(ALL_TERMS.quantities)
T = {name: i for i, name in enumerate(TERM_NAMES)}


def jet_of(fn, x: torch.Tensor, indices) -> dict:
    """D^alpha fn at points x [P, 2] for the multi-indices given (nested autograd, float64)."""
    x = x.clone().requires_grad_(True)
    cache = {(0, 0): fn(x[:, 0], x[:, 1])}

    def d(alpha):
        if alpha not in cache:
            i = 0 if alpha[0] > 0 else 1
            lower = (alpha[0] - (i == 0), alpha[1] - (i == 1))
            base = d(lower)
            if not base.requires_grad:  # a constant: all its derivatives vanish
                cache[alpha] = torch.zeros_like(base)
            else:
                (g,) = torch.autograd.grad(base.sum(), x, create_graph=True)
                cache[alpha] = g[:, i]
        return cache[alpha]

    return {a: d(a).detach() for a in indices}


def terms_for(family_name, fa, fb, points, axis, params):
    fam = get_family(family_name)
    need = required_derivatives(fam, ALL, [axis])
    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    a = side_quantities(fam, jet_of(fa, points, need), p, points, axis, ALL)
    b = side_quantities(fam, jet_of(fb, points, need), p, points, axis, ALL)
    return term_values(a, b)


def heat_interface(n=41):
    """Heat family's default interface t = 0.5 (normal = t, tangent = x)."""
    x = torch.linspace(-1, 1, n, dtype=torch.float64)
    return torch.stack([x, torch.full_like(x, 0.5)], dim=1)


HEAT = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}


def smooth_heat_solution(x, t):
    return torch.exp(-(math.pi**2) * t) * torch.cos(math.pi * x) + torch.exp(t - 1) * torch.sinh(x)


def test_all_terms_vanish_for_an_exact_solution_smooth_across_the_interface():
    values = terms_for("heat", smooth_heat_solution, smooth_heat_solution, heat_interface(), 1, HEAT)
    torch.testing.assert_close(values, torch.zeros(N_TERMS, dtype=torch.float64), atol=1e-18, rtol=0)


def test_constant_jump_gives_u_and_uavg_only():
    c = 0.3
    values = terms_for(
        "heat", smooth_heat_solution, lambda x, t: smooth_heat_solution(x, t) + c, heat_interface(), 1, HEAT
    )
    expected = torch.zeros(N_TERMS, dtype=torch.float64)
    expected[T["u"]] = c**2
    expected[T["uavg"]] = c**2 / 2  # two sides, each (c/2)^2
    torch.testing.assert_close(values, expected, atol=1e-14, rtol=1e-12)


def test_normal_slope_jump_gives_flux_and_residual_continuity():
    alpha = 0.7
    values = terms_for(
        "heat",
        smooth_heat_solution,
        lambda x, t: smooth_heat_solution(x, t) + alpha * (t - 0.5),
        heat_interface(),
        1,
        HEAT,
    )
    expected = torch.zeros(N_TERMS, dtype=torch.float64)
    expected[T["flux"]] = alpha**2  # jump of u_t
    expected[T["res_continuity"]] = alpha**2  # r = u_t - u_xx jumps by alpha
    expected[T["res"]] = alpha**2  # r_a = 0, r_b = alpha
    torch.testing.assert_close(values, expected, atol=1e-14, rtol=1e-12)


def test_normal_curvature_jump_gives_uyy_only():
    beta = 0.4
    values = terms_for(
        "heat",
        smooth_heat_solution,
        lambda x, t: smooth_heat_solution(x, t) + beta * (t - 0.5) ** 2,
        heat_interface(),
        1,
        HEAT,
    )
    expected = torch.zeros(N_TERMS, dtype=torch.float64)
    expected[T["uyy"]] = (2 * beta) ** 2
    expected[T["gres"]] = (2 * beta) ** 2  # r_b = 2 beta (t - 0.5): d r_b / dt = 2 beta
    torch.testing.assert_close(values, expected, atol=1e-14, rtol=1e-12)


def test_tangential_jumps_give_ux_and_uxx():
    pts = heat_interface(201)
    x = pts[:, 0]
    gamma, kappa = 0.5, 0.25
    lin = terms_for("heat", smooth_heat_solution, lambda x, t: smooth_heat_solution(x, t) + gamma * x, pts, 1, HEAT)
    assert lin[T["ux"]].item() == pytest.approx(gamma**2, rel=1e-12)
    assert lin[T["uxx"]].item() == pytest.approx(0.0, abs=1e-14)
    assert lin[T["u"]].item() == pytest.approx((gamma**2 * x**2).mean().item(), rel=1e-12)
    quad = terms_for("heat", smooth_heat_solution, lambda x, t: smooth_heat_solution(x, t) + kappa * x**2, pts, 1, HEAT)
    assert quad[T["uxx"]].item() == pytest.approx((2 * kappa) ** 2, rel=1e-12)
    assert quad[T["ux"]].item() == pytest.approx(((2 * kappa * x) ** 2).mean().item(), rel=1e-12)
    # r_b = -u_xx jump = -2 kappa
    assert quad[T["res_continuity"]].item() == pytest.approx((2 * kappa) ** 2, rel=1e-12)


def test_residual_and_its_gradient_for_a_non_solution():
    pts = heat_interface(101)
    x, t = pts[:, 0], pts[:, 1]

    def f(x, t):
        return x**3 * t

    values = terms_for("heat", f, f, pts, 1, HEAT)
    r = x**3 - 6 * x * t  # u_t - u_xx
    grad_sq = (3 * x**2 - 6 * t) ** 2 + (6 * x) ** 2
    assert values[T["res"]].item() == pytest.approx((2 * r**2).mean().item(), rel=1e-12)
    assert values[T["gres"]].item() == pytest.approx((2 * grad_sq).mean().item(), rel=1e-12)
    assert values[T["res_continuity"]].item() == pytest.approx(0.0, abs=1e-20)


def test_gres_includes_explicit_coordinate_dependence_of_the_source():
    """Poisson's residual u_xx + u_yy - f(x, y): grad r must include -grad f."""
    fam = get_family("poisson")
    s = 5.0
    y = torch.linspace(0, 1, 51, dtype=torch.float64)
    pts = torch.stack([y, torch.full_like(y, 0.5)], dim=1)  # interface y = 0.5, here along x
    values = terms_for("poisson", lambda x, y: 0 * x, lambda x, y: 0 * x, pts, 1, {"s": s})
    xr = pts.clone().requires_grad_(True)
    r = fam.residual({"u_xx": 0 * xr[:, 0], "u_yy": 0 * xr[:, 0]}, {"s": torch.tensor(s, dtype=torch.float64)}, xr)
    (g,) = torch.autograd.grad(r.sum(), xr)
    assert values[T["gres"]].item() == pytest.approx((2 * (g**2).sum(1)).mean().item(), rel=1e-10)


def test_burgers_flux_is_the_physical_normal_flux():
    """Interfaces x = const: flux term = jump of u^2/2 - nu u_x."""
    nu, c = 0.01, 0.2
    t = torch.linspace(0, 1, 51, dtype=torch.float64)
    pts = torch.stack([torch.full_like(t, 0.1), t], dim=1)

    def f(x, t):
        return torch.sin(x + t)

    values = terms_for("burgers", f, lambda x, t: f(x, t) + c, pts, 0, {"nu": nu})
    u = torch.sin(0.1 + t)
    assert values[T["flux"]].item() == pytest.approx(((c * u + c**2 / 2) ** 2).mean().item(), rel=1e-12)
    assert values[T["ux"]].item() == pytest.approx(0.0, abs=1e-20)  # tangential = t: unchanged


def test_normal_and_tangent_swap_for_interfaces_normal_to_x():
    """The same slope jump alpha * (x - 0.1) is normal for x = 0.1: flux (grad u . n) and not ux."""
    t = torch.linspace(0, 1, 21, dtype=torch.float64)
    pts = torch.stack([torch.full_like(t, 0.1), t], dim=1)
    fam = get_family("heat")  # no physical flux: flux = du/dn

    def f(x, t):
        return torch.cos(x) * t

    need = required_derivatives(fam, ALL, [0])
    a = side_quantities(fam, jet_of(f, pts, need), HEAT, pts, 0, ALL)
    b = side_quantities(fam, jet_of(lambda x, t: f(x, t) + 0.5 * (x - 0.1), pts, need), HEAT, pts, 0, ALL)
    values = term_values(a, b)
    assert values[T["flux"]].item() == pytest.approx(0.25, rel=1e-12)
    assert values[T["ux"]].item() == pytest.approx(0.0, abs=1e-20)
    # per-point axis masks give the same as the integer axis
    mask = torch.ones(len(t), dtype=torch.bool)
    a2 = side_quantities(fam, jet_of(f, pts, need), HEAT, pts, mask, ALL)
    torch.testing.assert_close(a2["f_n"], a["f_n"])

"""Reference solutions checked independently of themselves, and the family declarations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metalic.families import BUILTIN, get_family
from metalic.families import kdv as kdv_module
from metalic.families.solvers import (
    burgers_hopf_cole,
    etdrk4_periodic,
    poisson_dirichlet,
    quadratic_flux_term,
)


def autograd_residual(family, params, points):
    """The family's residual applied to its closed form via autograd: [N]."""
    x = torch.as_tensor(points, dtype=torch.float64).requires_grad_(True)
    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}

    def closed_form(xx):
        x0, x1 = xx[:, 0], xx[:, 1]
        if family.name == "heat":
            pi = np.pi
            return (
                p["a"] * torch.exp(-(pi**2) * x1) * torch.cos(pi * x0)
                + p["b"] * torch.exp(-4 * pi**2 * x1) * torch.cos(2 * pi * x0)
                + p["c"] * torch.exp(4 * x1 - 4) * torch.cosh(2 * x0)
                + p["d"] * torch.exp(x1 - 1) * torch.sinh(x0)
            )
        if family.name == "advection":
            return torch.sin(x0 - p["beta"] * x1)
        h = torch.exp(-((x0 - np.pi) ** 2) / (2 * (np.pi / 4) ** 2))
        g = h * torch.exp(p["rho"] * x1)
        return g / (g + 1 - h)

    u = closed_form(x)
    (g,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (gxx,) = torch.autograd.grad(g[:, 0].sum(), x, create_graph=True)
    d = {"u": u, "u_x": g[:, 0], "u_t": g[:, 1], "u_xx": gxx[:, 0]}
    return family.residual({n: d[n] for n in family.residual_uses}, p, x).detach().numpy()


@pytest.mark.parametrize("name", ["heat", "advection", "reaction"])
def test_closed_form_families_satisfy_their_pde_and_data(name):
    fam = get_family(name)
    rng = np.random.default_rng(0)
    for _ in range(3):
        params = {p.name: rng.uniform(p.lo, p.hi) for p in fam.params}
        lo, hi = np.array(fam.domain.lo), np.array(fam.domain.hi)
        pts = lo + (hi - lo) * rng.random((200, 2))
        r = autograd_residual(fam, params, pts)
        scale = max(1.0, np.abs(fam.exact(params, pts)).max())
        assert np.abs(r).max() < 1e-9 * scale
        grid = fam.reference_grid(params)
        np.testing.assert_allclose(grid.interpolate(pts[:20]), fam.exact(params, pts[:20]), rtol=1e-3, atol=1e-3)


def test_closed_forms_at_known_points():
    assert get_family("advection").exact({"beta": 7.0}, np.array([[1.0, 0.0]]))[0] == pytest.approx(np.sin(1.0))
    reaction = get_family("reaction")
    assert reaction.exact({"rho": 5.0}, np.array([[np.pi, 0.0]]))[0] == pytest.approx(1.0)
    assert reaction.exact({"rho": 5.0}, np.array([[0.0, 1.0]]))[0] == pytest.approx(
        np.exp(-8) * np.e**5 / (np.exp(-8) * np.e**5 + 1 - np.exp(-8))
    )
    heat = get_family("heat")
    u = heat.exact({"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0}, np.array([[0.0, 1.0]]))[0]
    assert u == pytest.approx(np.exp(-(np.pi**2)))


def test_poisson_solver_converges_at_second_order_on_a_manufactured_solution():
    def exact(x, y):
        return np.sin(np.pi * x) * np.sinh(y) + x * y**2

    def source(x, y):
        return -(np.pi**2) * np.sin(np.pi * x) * np.sinh(y) + np.sin(np.pi * x) * np.sinh(y) + 2 * x

    errors = []
    for n in (17, 33, 65):
        axis, u = poisson_dirichlet(source, exact, n)
        xx, yy = np.meshgrid(axis, axis, indexing="ij")
        errors.append(np.abs(u - exact(xx, yy)).max())
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > 1.9), orders
    assert np.all(orders < 2.1), orders


def test_poisson_reference_satisfies_the_discrete_equation_and_the_source_is_normalised():
    fam = get_family("poisson")
    grid = fam.reference_grid({"s": 20.0})
    from metalic.families.poisson import source_numpy

    assert source_numpy(20.0, np.array(0.5), np.array(0.5)) == pytest.approx(1.0)
    assert np.all(grid.u[[0, -1], :] == 0) and np.all(grid.u[:, [0, -1]] == 0)
    assert grid.u[50, 50] < 0  # u_xx + u_yy = f > 0 with zero edges: u is a negative bowl
    # the 5-point Laplacian of the grid equals the source at every interior node
    x, y = grid.axes
    h = x[1] - x[0]
    u = grid.u
    lap = (u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2] - 4 * u[1:-1, 1:-1]) / h**2
    xx, yy = np.meshgrid(x[1:-1], y[1:-1], indexing="ij")
    np.testing.assert_allclose(lap, source_numpy(20.0, xx, yy), rtol=0, atol=1e-8)


@pytest.mark.parametrize("nu", [0.01, 0.002])
def test_burgers_hopf_cole_matches_an_independent_spectral_solver(nu):
    """Fourier pseudo-spectral + ETDRK4 on the periodic extension (the odd symmetry keeps u(+-1) = 0)."""
    n, length = 4096, 2.0
    xs = -1 + np.arange(n) * length / n
    t, u_spec = etdrk4_periodic(
        -np.sin(np.pi * xs), length, lambda k: -nu * k**2, quadratic_flux_term(1.0), 1.0, 2.5e-4, 11
    )
    pick = slice(0, n, 16)
    u_hc = burgers_hopf_cole(nu, xs[pick], t)
    assert np.abs(u_hc - u_spec[pick]).max() < 1e-3
    # and the family's reference grid is this Hopf-Cole solution
    fam = get_family("burgers")
    grid = fam.reference_grid({"nu": nu})
    np.testing.assert_allclose(grid.u[:, 0], -np.sin(np.pi * grid.axes[0]), atol=1e-12)
    assert np.abs(grid.u[[0, -1], :]).max() < 1e-6


def test_kdv_single_soliton_travels_at_its_exact_speed():
    c, k, x0 = 6.0, 2.0, 5.0
    x, t, u = kdv_module.solve(c, lambda x: kdv_module.soliton(x, c, k, x0), t_end=5.0, n_out=6)
    exact = kdv_module.soliton(x, c, k, x0 + k * t[-1])  # moved 10 units, wrapped
    assert np.abs(u[:, -1] - exact).max() < 1e-3 * np.abs(exact).max()
    peak = x[np.argmax(u[:, -1])]
    assert peak == pytest.approx((x0 + k * t[-1]) % kdv_module.LENGTH, abs=x[1] - x[0])


def test_kdv_reference_conserves_mass_and_energy():
    fam = get_family("kdv")
    grid = fam.reference_grid({"c": 3.0})
    u = grid.u[:-1]  # drop the closing periodic column
    mass = u.sum(0)
    energy = (u**2).sum(0)
    assert np.abs(mass - mass[0]).max() < 1e-9 * abs(mass[0])
    assert np.abs(energy - energy[0]).max() < 1e-5 * energy[0]
    # two solitons at the start, the fast one ahead of the slow one's start at the end
    np.testing.assert_allclose(grid.u[:, 0], kdv_module.initial(3.0, grid.axes[0]), atol=1e-12)


@pytest.mark.parametrize("name", BUILTIN)
def test_boundary_data_agrees_with_the_reference(name):
    fam = get_family(name)
    params = fam.defaults()
    grid = fam.reference_grid(params)
    from metalic.domain import boundary_segments, sample_boundary

    segs = boundary_segments((fam.domain,), fam.domain, fam.boundary_edges)
    pts = sample_boundary(segs, 50, np.random.default_rng(1))
    np.testing.assert_allclose(fam.boundary_value(params, pts), grid.interpolate(pts), atol=2e-3)


@pytest.mark.parametrize("name", BUILTIN)
def test_parameter_validation_names_the_field(name):
    fam = get_family(name)
    p = fam.params[0]
    with pytest.raises(ValueError, match=p.name):
        fam.validate_params({p.name: p.hi + 1})
    with pytest.raises(ValueError, match="unknown parameter"):
        fam.validate_params({"zzz": 1.0})
    assert fam.validate_params({}) == fam.defaults()


def test_reference_grids_are_cached_per_parameters():
    fam = get_family("burgers")
    assert fam.reference_grid({"nu": 0.02}) is fam.reference_grid({"nu": 0.02})
    assert fam.reference_grid({"nu": 0.02}) is not fam.reference_grid({"nu": 0.03})


def test_unknown_family():
    with pytest.raises(ValueError, match="unknown family"):
        get_family("navier-stokes")

"""Viscous Burgers: u_t + u u_x = nu u_xx on x in [-1, 1], t in [0, 1].

u(x, 0) = -sin(pi x), u(+-1, t) = 0, nu in [0.001, 0.05]. The authors split off the strip
|x| < 0.1 around the shock (subdomain 0) from the rest (subdomain 1, two boxes), giving two
interfaces x = -0.1 and x = 0.1 with 401 points each. The flux term uses the physical flux
F = (u^2/2 - nu u_x, u) of the conservation form u_t + (u^2/2 - nu u_x)_x = 0.
Reference: the Hopf-Cole integral (``solvers.burgers_hopf_cole``).
"""

from __future__ import annotations

import numpy as np

from metalic.domain import Box, Decomposition, Interface
from metalic.families.base import Family, Param, ReferenceGrid
from metalic.families.solvers import burgers_hopf_cole

STRIP = 0.1


def residual(d, p, x):
    return d["u_t"] + d["u"] * d["u_x"] - p["nu"] * d["u_xx"]


def flux(d, p):
    u = d["u"]
    return 0.5 * u * u - p["nu"] * d["u_x"], u


def boundary_value(p: dict[str, float], pts: np.ndarray) -> np.ndarray:
    """-sin(pi x) at t = 0 and 0 at x = +-1 (where sin(pi x) = 0 too)."""
    return np.where(pts[..., 1] <= 1e-12, -np.sin(np.pi * pts[..., 0]), 0.0)


def reference(p: dict[str, float]) -> ReferenceGrid:
    axes = (np.linspace(-1, 1, 256), np.linspace(0, 1, 101))
    return ReferenceGrid(axes, burgers_hopf_cole(p["nu"], axes[0], axes[1]))


DOMAIN = Box((-1.0, 0.0), (1.0, 1.0))

AUTHORS_SPLIT = Decomposition(
    subdomains=(
        (Box((-STRIP, 0.0), (STRIP, 1.0)),),
        (Box((-1.0, 0.0), (-STRIP, 1.0)), Box((STRIP, 0.0), (1.0, 1.0))),
    ),
    interfaces=(
        Interface(a=1, b=0, axis=0, position=-STRIP, lo=0.0, hi=1.0),
        Interface(a=0, b=1, axis=0, position=STRIP, lo=0.0, hi=1.0),
    ),
)

FAMILY = Family(
    name="burgers",
    equation="u_t + u u_x = nu u_xx",
    coords=("x", "t"),
    domain=DOMAIN,
    params=(Param("nu", 0.001, 0.05, 0.01, "viscosity"),),
    residual_uses=("u", "u_t", "u_x", "u_xx"),
    residual=residual,
    boundary_edges=((1, 0), (0, 0), (0, 1)),
    boundary_value=boundary_value,
    reference=reference,
    default_decomposition=AUTHORS_SPLIT,
    slab_axis=0,
    interface_points=401,
    flux=flux,
    flux_uses=("u", "u_x"),
    time_axis=1,
)

"""Poisson: u_xx + u_yy = f_s(x, y) on [0, 1]^2, u = 0 on the edge, split at y = 0.5.

f_s(x, y) = g(x) g(y) / g(1/2)^2 with g(z) = erf(s (z - 1/4)) - erf(s (z - 3/4)): a smoothed
indicator of the square [1/4, 3/4]^2 whose edges sharpen as s grows (s in [1, 50]); the
normaliser g(1/2)^2 is its maximum.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import erf

from metalic.domain import Box, slabs
from metalic.families.base import Family, Param, ReferenceGrid
from metalic.families.solvers import poisson_dirichlet

GRID = 101


def _bump(z, s, erf_fn):
    return erf_fn(s * (z - 0.25)) - erf_fn(s * (z - 0.75))


def source_numpy(s: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _bump(x, s, erf) * _bump(y, s, erf) / (2 * math.erf(s / 4)) ** 2


def residual(d, p, x):
    s = p["s"]
    f = _bump(x[..., 0], s, torch.erf) * _bump(x[..., 1], s, torch.erf) / (2 * torch.erf(s / 4)) ** 2
    return d["u_xx"] + d["u_yy"] - f


def reference(p: dict[str, float]) -> ReferenceGrid:
    axis, u = poisson_dirichlet(lambda x, y: source_numpy(p["s"], x, y), lambda x, y: np.zeros_like(x), GRID)
    return ReferenceGrid((axis, axis), u)


DOMAIN = Box((0.0, 0.0), (1.0, 1.0))

FAMILY = Family(
    name="poisson",
    equation="u_xx + u_yy = f_s(x, y), u = 0 on the boundary",
    coords=("x", "y"),
    domain=DOMAIN,
    params=(Param("s", 1.0, 50.0, 10.0, "sharpness of the source's edges"),),
    residual_uses=("u_xx", "u_yy"),
    residual=residual,
    boundary_edges=((0, 0), (0, 1), (1, 0), (1, 1)),
    boundary_value=lambda p, pts: np.zeros(len(pts)),
    reference=reference,
    default_decomposition=slabs(DOMAIN, axis=1, n=2),
    slab_axis=1,
    interface_points=101,
)

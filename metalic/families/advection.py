"""Advection: u_t + beta u_x = 0 on x in [0, 2 pi], t in [0, 1], u = sin(x - beta t), split at t = 0.5."""

from __future__ import annotations

import numpy as np

from metalic.domain import Box, slabs
from metalic.families.base import Family, Param, closed_form_reference


def exact(p: dict[str, float], pts: np.ndarray) -> np.ndarray:
    return np.sin(pts[..., 0] - p["beta"] * pts[..., 1])


def residual(d, p, x):
    return d["u_t"] + p["beta"] * d["u_x"]


DOMAIN = Box((0.0, 0.0), (2 * np.pi, 1.0))

FAMILY = Family(
    name="advection",
    equation="u_t + beta u_x = 0",
    coords=("x", "t"),
    domain=DOMAIN,
    params=(Param("beta", 1.0, 30.0, 3.0, "advection speed"),),
    residual_uses=("u_t", "u_x"),
    residual=residual,
    boundary_edges=((1, 0), (0, 0), (0, 1)),
    boundary_value=exact,
    reference=closed_form_reference(exact, DOMAIN),
    default_decomposition=slabs(DOMAIN, axis=1, n=2),
    slab_axis=1,
    exact=exact,
    time_axis=1,
)

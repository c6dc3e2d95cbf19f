"""Advection: u_t + beta u_x = 0 on x in [0, 2 pi], t in [0, 1], u = sin(x - beta t), split at t = 0.5."""

from __future__ import annotations

import numpy as np

from metalic.domain import Box
from metalic.families.base import Param, closed_form_in_time


def exact(p: dict[str, float], pts: np.ndarray) -> np.ndarray:
    return np.sin(pts[..., 0] - p["beta"] * pts[..., 1])


def residual(d, p, x):
    return d["u_t"] + p["beta"] * d["u_x"]


DOMAIN = Box((0.0, 0.0), (2 * np.pi, 1.0))

FAMILY = closed_form_in_time(
    exact,
    DOMAIN,
    name="advection",
    equation="u_t + beta u_x = 0",
    params=(Param("beta", 1.0, 30.0, 3.0, "advection speed"),),
    residual_uses=("u_t", "u_x"),
    residual=residual,
)

"""Reaction (logistic growth): u_t = rho u (1 - u) on x in [0, 2 pi], t in [0, 1], split at t = 0.5.

u(x, 0) = h(x) = exp(-(x - pi)^2 / (2 (pi/4)^2)); u = h e^{rho t} / (h e^{rho t} + 1 - h).
"""

from __future__ import annotations

import numpy as np

from metalic.domain import Box
from metalic.families.base import Param, closed_form_in_time


def initial(x: np.ndarray) -> np.ndarray:
    return np.exp(-((x - np.pi) ** 2) / (2 * (np.pi / 4) ** 2))


def exact(p: dict[str, float], pts: np.ndarray) -> np.ndarray:
    h = initial(pts[..., 0])
    g = h * np.exp(p["rho"] * pts[..., 1])
    return g / (g + 1 - h)


def residual(d, p, x):
    u = d["u"]
    return d["u_t"] - p["rho"] * u * (1 - u)


DOMAIN = Box((0.0, 0.0), (2 * np.pi, 1.0))

FAMILY = closed_form_in_time(
    exact,
    DOMAIN,
    name="reaction",
    equation="u_t = rho u (1 - u)",
    params=(Param("rho", 1.0, 15.0, 3.0, "growth rate"),),
    residual_uses=("u", "u_t"),
    residual=residual,
)

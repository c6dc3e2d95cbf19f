"""Heat: u_t = u_xx on x in [-1, 1], t in [0, 1], split at t = 0.5.

u = a e^{-pi^2 t} cos(pi x) + b e^{-4 pi^2 t} cos(2 pi x) + c e^{4t-4} cosh(2x) + d e^{t-1} sinh(x),
(a, b, c, d) in [-2, 2]^4. Initial and side data come from this closed form.
"""

from __future__ import annotations

import numpy as np

from metalic.domain import Box
from metalic.families.base import Param, closed_form_in_time


def exact(p: dict[str, float], pts: np.ndarray) -> np.ndarray:
    x, t = pts[..., 0], pts[..., 1]
    pi = np.pi
    return (
        p["a"] * np.exp(-(pi**2) * t) * np.cos(pi * x)
        + p["b"] * np.exp(-4 * pi**2 * t) * np.cos(2 * pi * x)
        + p["c"] * np.exp(4 * t - 4) * np.cosh(2 * x)
        + p["d"] * np.exp(t - 1) * np.sinh(x)
    )


def residual(d, p, x):
    return d["u_t"] - d["u_xx"]


DOMAIN = Box((-1.0, 0.0), (1.0, 1.0))

FAMILY = closed_form_in_time(
    exact,
    DOMAIN,
    name="heat",
    equation="u_t = u_xx",
    params=(
        Param("a", -2.0, 2.0, 1.0, "weight of the cos(pi x) mode"),
        Param("b", -2.0, 2.0, 1.0, "weight of the cos(2 pi x) mode"),
        Param("c", -2.0, 2.0, 1.0, "weight of the growing cosh(2x) mode"),
        Param("d", -2.0, 2.0, 1.0, "weight of the sinh(x) mode"),
    ),
    residual_uses=("u_t", "u_xx"),
    residual=residual,
)

"""A family whose residual is NaN when q > 0.5: its runs diverge at the first Adam step."""

from __future__ import annotations

import numpy as np
import torch

from metalic.domain import Box, slabs
from metalic.families.base import Family, Param, ReferenceGrid

DOMAIN = Box((0.0, 0.0), (1.0, 1.0))


def residual(d, p, x):
    # log of a negative number: NaN for q > 0.5, a harmless 0 otherwise
    return d["u_t"] + d["u_x"] + 0 * torch.log(0.5 - p["q"])


def reference(p):
    """The exact solution u = sin(x - t) of u_t + u_x = 0 with u(x, 0) = sin(x)."""
    axes = (np.linspace(0, 1, 11), np.linspace(0, 1, 11))
    xx, tt = np.meshgrid(*axes, indexing="ij")
    return ReferenceGrid(axes, np.sin(xx - tt))


FAMILY = Family(
    name="nan-test",
    equation="u_t + u_x = 0 (NaN for q > 0.5)",
    coords=("x", "t"),
    domain=DOMAIN,
    params=(Param("q", 0.0, 1.0, 0.0),),
    residual_uses=("u_t", "u_x"),
    residual=residual,
    boundary_edges=((1, 0),),
    boundary_value=lambda p, pts: np.sin(pts[:, 0]),
    reference=reference,
    default_decomposition=slabs(DOMAIN, 1, 2),
    slab_axis=1,
    time_axis=1,
)

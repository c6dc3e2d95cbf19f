"""The declarative description of a parametric PDE family.

A family is data plus a few pure functions; the trainer reads it and never needs to know which
family it trains. Derivatives are named by coordinate letters: for coordinates ``("x", "t")``,
``u_x`` is du/dx, ``u_xt`` is d2u/dxdt (first-coordinate letters first), ``u`` the value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from metalic.domain import Box, Decomposition, slabs
from metalic.families.references import CACHE, ReferenceGrid, params_key

MultiIndex = tuple[int, int]


@dataclass(frozen=True)
class Param:
    """A scalar PDE parameter with its admissible range ``[lo, hi]``."""

    name: str
    lo: float
    hi: float
    default: float
    description: str = ""


Residual = Callable[[Mapping[str, Tensor], Mapping[str, Tensor], Tensor], Tensor]
Flux = Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Family:
    """A parametric PDE family on a 2-D (space or space-time) box.

    residual(d, p, x) -> r: ``d`` maps derivative names (``residual_uses``) to tensors of any one
    shape, ``p`` maps parameter names to tensors broadcastable to it, ``x`` holds coordinates
    with a trailing axis of 2. ``flux(d, p) -> (F_0, F_1)`` is an optional physical flux vector,
    reading only ``flux_uses``; without it the flux is grad u.
    ``boundary_value(p, points [N, 2]) -> [N]`` gives the data on ``boundary_edges``.
    ``reference(p) -> ReferenceGrid`` is a solver independent of any network code.
    """

    name: str
    equation: str
    coords: tuple[str, str]
    domain: Box
    params: tuple[Param, ...]
    residual_uses: tuple[str, ...]
    residual: Residual
    boundary_edges: tuple[tuple[int, int], ...]
    boundary_value: Callable[[dict[str, float], np.ndarray], np.ndarray]
    reference: Callable[[dict[str, float]], ReferenceGrid]
    default_decomposition: Decomposition
    slab_axis: int
    interface_points: int = 101
    flux: Flux | None = None
    flux_uses: tuple[str, ...] = ()
    exact: Callable[[dict[str, float], np.ndarray], np.ndarray] | None = None
    time_axis: int | None = None
    notes: str = field(default="")
    # Periodic in the first coordinate with this period: the network is built periodic and
    # ``side_edges`` (the x-edges) need no data; with ``PinnConfig.side_data`` they get data from
    # the reference solution instead and the network is not periodic (the authors' setup).
    period: float | None = None
    harmonics: int = 1  # Fourier features of the periodic coordinate the network reads
    side_edges: tuple[tuple[int, int], ...] = ()
    layers: tuple[int, ...] = (2, 20, 20, 1)  # the network this family needs by default
    # A solve this family is best trained with, as a REST solve body spells it (a training recipe,
    # a split, points, a budget): stated (``metalic families``, GET /v1/families), not applied, so
    # that a request means what it says and existing studies keep their profiles.
    recommended: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def data_edges(self, side_data: bool) -> tuple[tuple[int, int], ...]:
        """The edges with boundary / initial data."""
        return self.boundary_edges + (self.side_edges if side_data else ())

    def network_period(self, side_data: bool) -> float | None:
        return None if side_data else self.period

    # ---- names and multi-indices -------------------------------------------------------------
    def derivative_name(self, alpha: MultiIndex) -> str:
        if alpha == (0, 0):
            return "u"
        return "u_" + self.coords[0] * alpha[0] + self.coords[1] * alpha[1]

    def multi_index(self, name: str) -> MultiIndex:
        if name == "u":
            return (0, 0)
        if not name.startswith("u_"):
            raise ValueError(f"{self.name}: bad derivative name {name!r}")
        letters = name[2:]
        alpha = (letters.count(self.coords[0]), letters.count(self.coords[1]))
        if sum(alpha) != len(letters):
            raise ValueError(f"{self.name}: bad derivative name {name!r}")
        return alpha

    # ---- parameters --------------------------------------------------------------------------
    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.params}

    def validate_params(self, values: Mapping[str, float]) -> dict[str, float]:
        """Complete ``values`` with defaults; ValueError naming the field when out of range or unknown."""
        unknown = set(values) - set(self.param_names)
        if unknown:
            raise ValueError(
                f"unknown parameter {sorted(unknown)[0]!r} for family {self.name!r} "
                f"(parameters: {', '.join(self.param_names)})"
            )
        out = {}
        for p in self.params:
            v = float(values.get(p.name, p.default))
            if not np.isfinite(v) or not (p.lo <= v <= p.hi):
                raise ValueError(f"parameter {p.name}={v:g} is outside [{p.lo:g}, {p.hi:g}] for family {self.name!r}")
            out[p.name] = v
        return out

    def decomposition(self, subdomains: int | None = None) -> Decomposition:
        """The authors' split (``None``) or ``subdomains`` equal slabs along ``slab_axis`` (1: one domain)."""
        if subdomains is None:
            return self.default_decomposition
        return slabs(self.domain, self.slab_axis, subdomains)

    def reference_grid(self, params: Mapping[str, float]) -> ReferenceGrid:
        """Reference solution, kept in memory and on disk per (family, parameters) (``references``)."""
        return CACHE.get(self, params_key(self.validate_params(params)))

    def prefetch_references(self, params: Iterable[Mapping[str, float]]) -> None:
        """Start computing these parameters' reference grids in the background (returns at once)."""
        CACHE.prefetch(self, [params_key(self.validate_params(p)) for p in params])


def closed_form_reference(
    exact: Callable[[dict[str, float], np.ndarray], np.ndarray], domain: Box, shape: tuple[int, int] = (201, 101)
) -> Callable[[dict[str, float]], ReferenceGrid]:
    """Reference grid of a closed-form solution ``exact(p, points [..., 2])`` on ``domain``."""

    def reference(p: dict[str, float]) -> ReferenceGrid:
        axes = (np.linspace(domain.lo[0], domain.hi[0], shape[0]), np.linspace(domain.lo[1], domain.hi[1], shape[1]))
        xx, tt = np.meshgrid(*axes, indexing="ij")
        return ReferenceGrid(axes, exact(p, np.stack([xx, tt], axis=-1)))

    return reference


def closed_form_in_time(exact: Callable[[dict[str, float], np.ndarray], np.ndarray], domain: Box, **fields) -> Family:
    """A family on (x, t) whose solution ``exact(p, points)`` is known in closed form: its data
    (the initial line and both x-edges) and its reference grid come from it, and its default
    split is two time slabs. ``fields``: the rest of the Family (name, equation, params, residual)."""
    return Family(
        coords=("x", "t"),
        domain=domain,
        boundary_edges=((1, 0), (0, 0), (0, 1)),
        boundary_value=exact,
        reference=closed_form_reference(exact, domain),
        default_decomposition=slabs(domain, axis=1, n=2),
        slab_axis=1,
        exact=exact,
        time_axis=1,
        **fields,
    )


def boundary_from_reference(family_name: str) -> Callable[[dict[str, float], np.ndarray], np.ndarray]:
    """Boundary data interpolated from the family's own reference grid (looked up by name)."""

    def value(params: dict[str, float], points: np.ndarray) -> np.ndarray:
        from metalic.families import get_family

        return get_family(family_name).reference_grid(params).interpolate(points)

    return value

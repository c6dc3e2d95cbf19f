"""The interface-term catalogue. An arm (``metalic.arms.Arm``) is a mask over these nine terms.

Every term is a pure function of per-side quantities on the interface points, written with the
interface normal n (unit vector along one coordinate axis, from side a to side b) and tangent tau:

| bit | name           | term (mean over interface points, summed over interfaces)        |
|-----|----------------|------------------------------------------------------------------|
| 0   | u              | (u_a - u_b)^2                                                    |
| 1   | uavg           | (u_a - m)^2 + (u_b - m)^2, m = (u_a + u_b) / 2                   |
| 2   | res            | r_a^2 + r_b^2 (each side's PDE residual)                         |
| 3   | res_continuity | (r_a - r_b)^2                                                    |
| 4   | flux           | (F_a . n - F_b . n)^2, F the family's flux vector, else grad u   |
| 5   | uyy            | (d2u_a/dn2 - d2u_b/dn2)^2                                        |
| 6   | gres           | abs(grad r_a)^2 + abs(grad r_b)^2                                |
| 7   | ux             | (du_a/dtau - du_b/dtau)^2                                        |
| 8   | uxx            | (d2u_a/dtau2 - d2u_b/dtau2)^2                                    |

The names are the authors'. For interfaces y = const or t = const (every family's default split
but Burgers') the normal is the second coordinate, so these equal the authors' terms exactly. For
Burgers' interfaces x = +-0.1 the authors' ``uyy``, ``ux``, ``uxx`` are jumps of u_tt, u_x, u_xx;
here they are the normal / tangential ones, i.e. jumps of u_xx, u_t, u_tt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import jvp

if TYPE_CHECKING:
    from metalic.families.base import Family

MultiIndex = tuple[int, int]


@dataclass(frozen=True)
class Term:
    bit: int
    name: str
    formula: str
    needs: tuple[str, ...]  # side quantities: u, r, f_n, u_nn, grad_r_sq, u_tau, u_tautau
    value: Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]


def _jump_sq(q: str) -> Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]:
    return lambda a, b: (a[q] - b[q]) ** 2


def _uavg(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    m = 0.5 * (a["u"] + b["u"])
    return (a["u"] - m) ** 2 + (b["u"] - m) ** 2


TERMS: tuple[Term, ...] = (
    Term(0, "u", "(u_a - u_b)^2", ("u",), _jump_sq("u")),
    Term(1, "uavg", "(u_a - m)^2 + (u_b - m)^2, m = (u_a + u_b)/2", ("u",), _uavg),
    Term(2, "res", "r_a^2 + r_b^2", ("r",), lambda a, b: a["r"] ** 2 + b["r"] ** 2),
    Term(3, "res_continuity", "(r_a - r_b)^2", ("r",), _jump_sq("r")),
    Term(4, "flux", "(F_a.n - F_b.n)^2", ("f_n",), _jump_sq("f_n")),
    Term(5, "uyy", "(u_nn,a - u_nn,b)^2", ("u_nn",), _jump_sq("u_nn")),
    Term(6, "gres", "|grad r_a|^2 + |grad r_b|^2", ("grad_r_sq",), lambda a, b: a["grad_r_sq"] + b["grad_r_sq"]),
    Term(7, "ux", "(u_tau,a - u_tau,b)^2", ("u_tau",), _jump_sq("u_tau")),
    Term(8, "uxx", "(u_tautau,a - u_tautau,b)^2", ("u_tautau",), _jump_sq("u_tautau")),
)
N_TERMS = len(TERMS)
TERM_NAMES = tuple(t.name for t in TERMS)


# ---- per-side quantities ----------------------------------------------------------------------
def _shift(alpha: MultiIndex, axis: int, by: int = 1) -> MultiIndex:
    return (alpha[0] + by, alpha[1]) if axis == 0 else (alpha[0], alpha[1] + by)


def required_derivatives(family: Family, quantities: set[str], axes: Sequence[int]) -> set[MultiIndex]:
    """Multi-indices of u that ``side_quantities`` reads, for interfaces normal to ``axes``."""
    residual_idx = [family.multi_index(n) for n in family.residual_uses]
    need: set[MultiIndex] = {(0, 0)}
    if quantities & {"r", "grad_r_sq"}:
        need.update(residual_idx)
    if "grad_r_sq" in quantities:
        need.update(_shift(a, j) for a in residual_idx for j in (0, 1))
    for axis in axes:
        if "f_n" in quantities:
            if family.flux is None:
                need.add(_shift((0, 0), axis))
            else:
                need.update(family.multi_index(n) for n in family.flux_uses)
        if "u_nn" in quantities:
            need.add(_shift((0, 0), axis, 2))
        if "u_tau" in quantities:
            need.add(_shift((0, 0), 1 - axis))
        if "u_tautau" in quantities:
            need.add(_shift((0, 0), 1 - axis, 2))
    return need


def side_quantities(
    family: Family,
    jet: Mapping[MultiIndex, Tensor],
    params: Mapping[str, Tensor],
    x: Tensor,
    normal_axis: int | Tensor,
    quantities: set[str],
) -> dict[str, Tensor]:
    """Per-side quantities on interface points, from one side's derivatives of u.

    ``jet[alpha]``: D^alpha u at the points, all of one shape ``[..., P]``; ``x`` [..., P, 2] the
    points; ``normal_axis``: 0 or 1, or a bool tensor (broadcastable to ``[..., P]``) that is True
    where the normal is the first coordinate axis. Returns u, r (residual), f_n (flux . n),
    u_nn, u_tau, u_tautau and grad_r_sq = abs(grad r)^2, as asked by ``quantities``.
    """

    def along(index_of: Callable[[int], MultiIndex]) -> Tensor:
        if isinstance(normal_axis, int):
            return jet[index_of(normal_axis)]
        return torch.where(normal_axis, jet[index_of(0)], jet[index_of(1)])

    out: dict[str, Tensor] = {"u": jet[(0, 0)]}
    uses = family.residual_uses
    if "grad_r_sq" in quantities:
        # One forward-mode call gives r and both directional derivatives: the two directions are
        # laid side by side along the point axis.
        n = x.shape[-2]
        d = {name: torch.cat([jet[family.multi_index(name)]] * 2, dim=-1) for name in uses}
        tangent = {name: torch.cat([jet[_shift(family.multi_index(name), j)] for j in (0, 1)], dim=-1) for name in uses}
        xx = torch.cat([x, x], dim=-2)
        tx = torch.zeros_like(xx)
        tx[..., :n, 0] = 1
        tx[..., n:, 1] = 1
        r, dr = jvp(lambda dd, xs: family.residual(dd, params, xs), (d, xx), (tangent, tx))
        out["r"] = r[..., :n]
        out["grad_r_sq"] = dr[..., :n] ** 2 + dr[..., n:] ** 2
    elif "r" in quantities:
        out["r"] = family.residual({name: jet[family.multi_index(name)] for name in uses}, params, x)
    if "f_n" in quantities:
        if family.flux is None:
            out["f_n"] = along(lambda a: _shift((0, 0), a))
        else:
            f0, f1 = family.flux({name: jet[family.multi_index(name)] for name in family.flux_uses}, params)
            if isinstance(normal_axis, int):
                out["f_n"] = f0 if normal_axis == 0 else f1
            else:
                out["f_n"] = torch.where(normal_axis, f0, f1)
    if "u_nn" in quantities:
        out["u_nn"] = along(lambda a: _shift((0, 0), a, 2))
    if "u_tau" in quantities:
        out["u_tau"] = along(lambda a: _shift((0, 0), 1 - a))
    if "u_tautau" in quantities:
        out["u_tautau"] = along(lambda a: _shift((0, 0), 1 - a, 2))
    return out


def term_values(side_a: Mapping[str, Tensor], side_b: Mapping[str, Tensor]) -> Tensor:
    """Mean over the last (point) axis of every term: [..., 9]; terms whose quantities are
    missing from the sides are 0."""
    ref = side_a["u"]
    columns = []
    for t in TERMS:
        if all(n in side_a and n in side_b for n in t.needs):
            columns.append(t.value(side_a, side_b).mean(-1))
        else:
            columns.append(torch.zeros(ref.shape[:-1], dtype=ref.dtype, device=ref.device))
    return torch.stack(columns, dim=-1)

"""The multi-domain PINN loss for a batch of runs, with per-run arms as a runtime 0/1 tensor.

loss_k = w_data * sum_s MSE_data + w_residual * sum_s MSE_residual + w_interface * sum_t arm_k[t] T_k[t]

Derivatives are computed once per evaluation, in closed form (``jets``), and only those that
the family's residual and the terms switched on anywhere in the batch need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import jvp

from metalic.conditions import N_TERMS, TERMS, needed_quantities
from metalic.families.base import Family, MultiIndex
from metalic.pinn.jets import TanhJet
from metalic.pinn.network import StackedMLP
from metalic.pinn.problem import BatchProblem, PinnConfig


@dataclass
class LossParts:
    """Per-run loss and its parts: ``total``, ``data``, ``residual`` [K]; ``terms`` [K, 9] (unweighted)."""

    total: Tensor
    data: Tensor
    residual: Tensor
    terms: Tensor


def _shift(alpha: MultiIndex, axis: int, by: int = 1) -> MultiIndex:
    return (alpha[0] + by, alpha[1]) if axis == 0 else (alpha[0], alpha[1] + by)


class PinnLoss:
    """Callable loss for one batch: ``loss(arms [K, 9]) -> LossParts``.

    The union of ``arms`` given at construction fixes which derivatives are computed; calls may
    pass any arms inside that union (e.g. the L-BFGS arms after the Adam arms).
    """

    def __init__(self, problem: BatchProblem, net: StackedMLP, config: PinnConfig, arms: Tensor):
        self.problem, self.net, self.config = problem, net, config
        fam: Family = problem.family
        self.family = fam
        self.quantities = needed_quantities([tuple(int(b) for b in row) for row in arms.tolist()])
        residual_idx = [fam.multi_index(n) for n in fam.residual_uses]
        self.main_jet = TanhJet(residual_idx)
        axes = sorted({int(a) for a in problem.iface_axis.flatten().tolist()})
        need: set[MultiIndex] = {(0, 0)}
        if self.quantities & {"r", "grad_r_sq"}:
            need.update(residual_idx)
        if "grad_r_sq" in self.quantities:
            need.update(_shift(a, j) for a in residual_idx for j in (0, 1))
        for axis in axes:
            other = 1 - axis
            if "f_n" in self.quantities:
                if fam.flux is None:
                    need.add(_shift((0, 0), axis))
                else:
                    need.update(fam.multi_index(n) for n in fam.flux_uses)
            if "u_nn" in self.quantities:
                need.add(_shift((0, 0), axis, 2))
            if "u_tau" in self.quantities:
                need.add(_shift((0, 0), other))
            if "u_tautau" in self.quantities:
                need.add(_shift((0, 0), other, 2))
        self.iface_jet = TanhJet(sorted(need))
        self.iface_axis0 = problem.iface_axis == 0  # [I, 1]
        self.mixed_axes = len(axes) > 1
        self.single_axis = axes[0] if axes else 1

    # ---- helpers ------------------------------------------------------------------------------
    def _named(self, jet: dict[MultiIndex, Tensor], names) -> dict[str, Tensor]:
        return {n: jet[self.family.multi_index(n)] for n in names}

    def _along(self, jet: dict[MultiIndex, Tensor], axis_fn) -> Tensor:
        """Pick D^{axis_fn(axis)} u per interface: handles interfaces normal to either axis."""
        if not self.mixed_axes:
            return jet[axis_fn(self.single_axis)]
        return torch.where(self.iface_axis0.repeat(2, 1), jet[axis_fn(0)], jet[axis_fn(1)])

    def _sides(self, flat: dict[MultiIndex, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Side quantities at the interface points for sides a and b: each [K, I, n_if].

        Both sides are evaluated together as one [K, 2I, n_if] block, and the residual gradient
        for both directions in one forward-mode (jvp) call over [K, 2I, 2 n_if].
        """
        p = self.problem
        n_i, n_if = p.iface_points.shape[:2]
        index = torch.cat([p.side_a, p.side_b])
        jet = {a: v[:, index].view(v.shape[0], 2 * n_i, n_if) for a, v in flat.items()}
        fam, params = self.family, p.param_tensors
        x = p.iface_points.repeat(2, 1, 1)  # [2I, n_if, 2]
        out: dict[str, Tensor] = {"u": jet[(0, 0)]}
        q = self.quantities
        if "grad_r_sq" in q:
            d = {n: jet[fam.multi_index(n)].repeat(1, 1, 2) for n in fam.residual_uses}
            tangent = {
                n: torch.cat([jet[_shift(fam.multi_index(n), 0)], jet[_shift(fam.multi_index(n), 1)]], dim=-1)
                for n in fam.residual_uses
            }
            xx = x.repeat(1, 2, 1)
            tx = torch.zeros_like(xx)
            tx[:, :n_if, 0] = 1
            tx[:, n_if:, 1] = 1
            r, dr = jvp(lambda dd, xs: fam.residual(dd, params, xs), (d, xx), (tangent, tx))
            out["r"] = r[..., :n_if]
            out["grad_r_sq"] = dr[..., :n_if] ** 2 + dr[..., n_if:] ** 2
        elif "r" in q:
            out["r"] = fam.residual(self._named(jet, fam.residual_uses), params, x)
        if "f_n" in q:
            if fam.flux is None:
                out["f_n"] = self._along(jet, lambda a: _shift((0, 0), a))
            else:
                f0, f1 = fam.flux(self._named(jet, fam.flux_uses), params)
                if self.mixed_axes:
                    out["f_n"] = torch.where(self.iface_axis0.repeat(2, 1), f0, f1)
                else:
                    out["f_n"] = f0 if self.single_axis == 0 else f1
        if "u_nn" in q:
            out["u_nn"] = self._along(jet, lambda a: _shift((0, 0), a, 2))
        if "u_tau" in q:
            out["u_tau"] = self._along(jet, lambda a: _shift((0, 0), 1 - a))
        if "u_tautau" in q:
            out["u_tautau"] = self._along(jet, lambda a: _shift((0, 0), 1 - a, 2))
        side_a = {name: v[:, :n_i] for name, v in out.items()}
        side_b = {name: v[:, n_i:] for name, v in out.items()}
        return side_a, side_b

    # ---- the loss -----------------------------------------------------------------------------
    def __call__(self, arms: Tensor) -> LossParts:
        p, fam, cfg = self.problem, self.family, self.config
        k = p.n_runs
        nc = p.n_collocation
        main = self.net.jet(p.x_main, self.main_jet)
        d = {n: v[..., :nc] for n, v in self._named(main, fam.residual_uses).items()}
        r = fam.residual(d, p.param_tensors, p.x_main[..., :nc, :])
        residual = (r**2).mean(-1).sum(-1)
        err = (main[(0, 0)][..., nc:] - p.g_data) ** 2 * p.m_data
        data = (err.sum(-1) / p.m_data.sum(-1).clamp_min(1)).sum(-1)

        terms = torch.zeros(k, N_TERMS, dtype=residual.dtype, device=residual.device)
        if p.side_a.numel() and self.quantities:
            x_if = p.x_iface.expand(k, -1, -1, -1)
            jet = self.net.jet(x_if, self.iface_jet)
            flat = {a: v.reshape(k, -1) for a, v in jet.items()}
            side_a, side_b = self._sides(flat)
            columns = []
            for t in TERMS:
                if all(n in side_a for n in t.needs):
                    columns.append(t.value(side_a, side_b).mean(-1).sum(-1))
                else:
                    columns.append(torch.zeros_like(residual))
            terms = torch.stack(columns, dim=-1)
        total = cfg.w_data * data + cfg.w_residual * residual + cfg.w_interface * (terms * arms).sum(-1)
        return LossParts(total=total, data=data, residual=residual, terms=terms)

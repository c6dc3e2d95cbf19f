"""The multi-domain PINN loss for a batch of runs, with per-run arms as a runtime weight tensor.

loss_k = w_data * sum_s MSE_data + w_residual * sum_s MSE_residual + w_interface * sum_t w_k[t] T_k[t]

where w_k = ``Arm.loss_weights`` of run k's arm. Derivatives are computed once per evaluation, in
closed form (``jets``), and only those that the family's residual and the interface quantities
asked for at construction need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metalic.conditions import N_TERMS, required_derivatives, side_quantities, term_values
from metalic.families.base import Family, MultiIndex
from metalic.pinn.causal import weighted_residual
from metalic.pinn.jets import TanhJet
from metalic.pinn.network import StackedMLP
from metalic.pinn.problem import BatchProblem, PinnConfig


@dataclass
class LossParts:
    """Per-run loss and its parts: ``total``, ``data``, ``residual`` [K]; ``terms`` [K, 9] (unweighted);
    ``min_weight`` [K]: the smallest causal weight (when called with ``eps``)."""

    total: Tensor
    data: Tensor
    residual: Tensor
    terms: Tensor
    min_weight: Tensor | None = None


class PinnLoss:
    """Callable loss for one batch: ``loss(weights [K, 9]) -> LossParts``.

    ``quantities`` (``arms.needed_quantities`` of every arm the batch may train with) fixes which
    derivatives are computed; calls may pass the weights of any arm whose terms need no more
    (e.g. the L-BFGS arms after the Adam arms).
    """

    def __init__(self, problem: BatchProblem, net: StackedMLP, config: PinnConfig, quantities: frozenset[str]):
        self.problem, self.net, self.config = problem, net, config
        fam: Family = problem.family
        self.family = fam
        self.quantities = set(quantities)
        residual_idx = [fam.multi_index(n) for n in fam.residual_uses]
        self.main_jet = TanhJet(residual_idx)
        axes = sorted({int(a) for a in problem.iface_axis.flatten().tolist()})
        need = required_derivatives(fam, self.quantities, axes)
        self.iface_jet = TanhJet(sorted(need))
        self.iface_axis0 = problem.iface_axis == 0  # [I, 1]
        self.mixed_axes = len(axes) > 1
        self.single_axis = axes[0] if axes else 1

    def _sides(self, flat: dict[MultiIndex, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Side quantities for sides a and b, each [K, I, n_if], computed as one [K, 2I, n_if] block."""
        p = self.problem
        n_i, n_if = p.iface_points.shape[:2]
        index = torch.cat([p.side_a, p.side_b])
        jet = {a: v[:, index].view(v.shape[0], 2 * n_i, n_if) for a, v in flat.items()}
        normal = self.single_axis if not self.mixed_axes else self.iface_axis0.repeat(2, 1)
        x = p.iface_points.repeat(2, 1, 1)  # [2I, n_if, 2]
        out = side_quantities(self.family, jet, p.param_tensors, x, normal, self.quantities)
        return {k: v[:, :n_i] for k, v in out.items()}, {k: v[:, n_i:] for k, v in out.items()}

    # ---- the loss -----------------------------------------------------------------------------
    def __call__(
        self, weights: Tensor, eps: Tensor | None = None, sub_on: Tensor | None = None, iface_on: Tensor | None = None
    ) -> LossParts:
        """``weights`` [K, 9]: each run's term weights; ``eps`` [K]: each run's causal eps (0: the
        plain residual, bit for bit; needs a problem built with ``causal``). ``sub_on`` [S] and
        ``iface_on`` [I] (0 or 1): the subdomains whose residual and data count, and the interfaces
        whose terms count (time-marching trains one slab at a time); None: all."""
        p, fam, cfg = self.problem, self.family, self.config
        k = p.n_runs
        nc = p.n_collocation
        main = self.net.jet(p.x_main, self.main_jet)
        d = {n: main[fam.multi_index(n)][..., :nc] for n in fam.residual_uses}
        r = fam.residual(d, p.param_tensors, p.x_main[..., :nc, :])
        r2 = r**2 if sub_on is None else r**2 * sub_on[:, None]
        residual = r2.mean(-1).sum(-1)
        min_weight = None
        if eps is not None:
            causal, min_weight = weighted_residual(r2, p.chunk_of, p.chunks, eps)
            residual = torch.where(eps > 0, causal, residual)
        err = (main[(0, 0)][..., nc:] - p.g_data) ** 2 * p.m_data
        data = err.sum(-1) / p.m_data.sum(-1).clamp_min(1)  # [K, S]
        data = (data if sub_on is None else data * sub_on).sum(-1)

        terms = torch.zeros(k, N_TERMS, dtype=residual.dtype, device=residual.device)
        if p.side_a.numel() and self.quantities:
            x_if = p.x_iface.expand(k, -1, -1, -1)
            jet = self.net.jet(x_if, self.iface_jet)
            flat = {a: v.reshape(k, -1) for a, v in jet.items()}
            side_a, side_b = self._sides(flat)
            values = term_values(side_a, side_b)  # [K, I, 9]
            terms = (values if iface_on is None else values * iface_on[:, None]).sum(1)  # [K, 9]
        total = cfg.w_data * data + cfg.w_residual * residual + cfg.w_interface * (terms * weights).sum(-1)
        return LossParts(total=total, data=data, residual=residual, terms=terms, min_weight=min_weight)

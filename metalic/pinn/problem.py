"""Training points and data for a batch of K runs of one family, laid out for batched evaluation.

Each run has its own parameters and its own seed; run k gets exactly the points it would get if
trained alone. Layout (S subdomains, I interfaces):

- ``x_main`` [K, S, Pc + Pd, 2]: Pc collocation points, then Pd data points (boundary and initial
  data, then optional final-time data) with targets ``g_data`` [K, S, Pd] and 0/1 ``m_data`` [K, S, Pd]
  (0 pads a subdomain that has fewer data points or none, e.g. an interior time slab's start).
- ``x_iface`` [S, Pi, 2]: each subdomain's interface points (shared by all runs), padded to Pi;
  ``side_a`` / ``side_b`` [I * n_if] index the flattened [S * Pi] axis for sides a and b;
  ``iface_points`` [I, n_if, 2] the points in interface order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from metalic.domain import Decomposition, Interface, boundary_segments, sample_boundary, sample_interior
from metalic.families.base import Family
from metalic.pinn.causal import DEFAULT_CHUNKS, chunk_index


@dataclass(frozen=True)
class PinnConfig:
    """Network and sampling settings shared by every run of a batch."""

    layers: tuple[int, ...] | None = None  # None = the family's network (most: [2, 20, 20, 1])
    n_collocation: int = 1000
    n_boundary: int = 100
    n_interface: int | None = None  # per interface; None = the family's default (101, Burgers 401)
    w_data: float = 20.0
    w_residual: float = 1.0
    w_interface: float = 5.0
    subdomains: int | None = None  # None = the family's default split, N = N slabs (1: single domain)
    final_time_data: bool = False  # the authors' extra supervision with the reference at t = T
    side_data: bool = False  # periodic family: data on its x-edges from the reference, no periodic net
    causal_chunks: int = DEFAULT_CHUNKS  # time chunks of the domain for causal runs (``causal``)

    def layers_for(self, family: Family) -> tuple[int, ...]:
        return tuple(self.layers) if self.layers is not None else family.layers

    def validate(self, family: Family | None = None) -> None:
        """ValueError naming the bad field; with ``family``, also what this family cannot do."""
        if family is not None and self.final_time_data and family.time_axis is None:
            raise ValueError(f"final_time_data needs a time-dependent family; {family.name} is steady")
        if family is not None and self.side_data and family.period is None:
            raise ValueError(f"side_data needs a periodic family; {family.name} is not periodic")
        for name in ("n_collocation", "n_boundary"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_interface is not None and self.n_interface < 2:
            raise ValueError(f"n_interface must be at least 2, got {self.n_interface}")
        if not 1 <= self.causal_chunks <= 1024:
            raise ValueError(f"causal_chunks must be 1..1024, got {self.causal_chunks}")
        if self.subdomains is not None and self.subdomains < 1:
            raise ValueError(f"subdomains must be at least 1, got {self.subdomains}")
        if min(self.w_data, self.w_residual, self.w_interface) < 0:
            raise ValueError("loss weights must be non-negative")


@dataclass
class BatchProblem:
    family: Family
    decomposition: Decomposition
    params: list[dict[str, float]]
    n_collocation: int
    x_main: Tensor
    g_data: Tensor
    m_data: Tensor
    x_iface: Tensor
    side_a: Tensor
    side_b: Tensor
    iface_points: Tensor
    iface_axis: Tensor  # [I, 1] int
    param_tensors: dict[str, Tensor] = field(default_factory=dict)  # name -> [K, 1, 1]
    chunk_of: Tensor | None = None  # [K, S, Pc] each collocation point's time chunk (causal runs)
    chunks: int = 0

    @property
    def n_runs(self) -> int:
        return self.x_main.shape[0]

    def first_runs(self, k: int) -> BatchProblem:
        """The same problem for its first ``k`` runs (the per-run rows; the interfaces are shared)."""
        return replace(
            self,
            params=self.params[:k],
            x_main=self.x_main[:k],
            g_data=self.g_data[:k],
            m_data=self.m_data[:k],
            param_tensors={n: t[:k] for n, t in self.param_tensors.items()},
            chunk_of=None if self.chunk_of is None else self.chunk_of[:k],
        )


def pair_view(problem: BatchProblem, a: int, b: int) -> BatchProblem:
    """The problem of subdomains ``a`` and ``b`` (in that order) and the interface between them:
    what a marching training's stage trains (``trainer``). Its interface points keep the full
    problem's padded width, so every pair of one problem has the same shapes."""
    dec = problem.decomposition
    (i, iface), *_ = [(i, f) for i, f in enumerate(dec.interfaces) if {f.a, f.b} == {a, b}]
    n_if = problem.iface_points.shape[1]
    width = problem.x_iface.shape[1]
    block = slice(i * n_if, (i + 1) * n_if)
    local = {a: 0, b: 1}

    def moved(index: Tensor, sub: int) -> Tensor:
        return index[block] - sub * width + local[sub] * width

    sel = [a, b]
    return replace(
        problem,
        decomposition=Decomposition(
            (dec.subdomains[a], dec.subdomains[b]),
            (Interface(local[iface.a], local[iface.b], iface.axis, iface.position, iface.lo, iface.hi),),
        ),
        x_main=problem.x_main[:, sel],
        g_data=problem.g_data[:, sel],
        m_data=problem.m_data[:, sel],
        x_iface=problem.x_iface[sel],
        side_a=moved(problem.side_a, iface.a),
        side_b=moved(problem.side_b, iface.b),
        iface_points=problem.iface_points[i : i + 1],
        iface_axis=problem.iface_axis[i : i + 1],
        chunk_of=None if problem.chunk_of is None else problem.chunk_of[:, sel],
    )


def _data_points(family, boxes, params, n, rng, final_time: bool, side_data: bool):
    """Boundary/initial data points for one subdomain, plus final-time data when asked: ([P, 2], [P], [P])."""
    pts, vals, mask = [], [], []
    segments = boundary_segments(boxes, family.domain, family.data_edges(side_data))
    blocks = [(segments, family.boundary_value)]
    if final_time:
        final = boundary_segments(boxes, family.domain, ((family.time_axis, 1),))
        blocks.append((final, lambda p, x: family.reference_grid(p).interpolate(x)))
    for segs, value in blocks:
        if segs:
            x = sample_boundary(segs, n, rng)
            pts.append(x)
            vals.append(value(params, x))
            mask.append(np.ones(n))
        else:
            pts.append(np.tile(np.asarray(boxes[0].lo, dtype=float), (n, 1)))
            vals.append(np.zeros(n))
            mask.append(np.zeros(n))
    return np.concatenate(pts), np.concatenate(vals), np.concatenate(mask)


def build_problem(
    family: Family,
    params: Sequence[Mapping[str, float]],
    seeds: Sequence[int],
    config: PinnConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    causal: bool = False,
) -> BatchProblem:
    """Sample every run's points (seeded per run) and move them to ``device``. ``causal``: also
    each collocation point's time chunk (``config.causal_chunks`` over the domain; needs a time axis)."""
    config.validate(family)
    params = [family.validate_params(p) for p in params]
    decomposition = family.decomposition(config.subdomains)
    n_if = config.n_interface or family.interface_points
    kw = {"device": device, "dtype": dtype}

    x_main, g_data, m_data = [], [], []
    for p, seed in zip(params, seeds, strict=True):
        rng = np.random.default_rng(int(seed))
        xs, gs, ms = [], [], []
        for boxes in decomposition.subdomains:
            colloc = sample_interior(boxes, config.n_collocation, rng)
            xd, gd, md = _data_points(
                family, boxes, p, config.n_boundary, rng, config.final_time_data, config.side_data
            )
            xs.append(np.concatenate([colloc, xd]))
            gs.append(gd)
            ms.append(md)
        x_main.append(np.stack(xs))
        g_data.append(np.stack(gs))
        m_data.append(np.stack(ms))

    # Interface points: deterministic, shared by all runs.
    per_sub: list[list[np.ndarray]] = [[] for _ in decomposition.subdomains]
    offsets_a, offsets_b = [], []
    for iface in decomposition.interfaces:
        pts = iface.points(n_if)
        offsets_a.append((iface.a, sum(len(q) for q in per_sub[iface.a])))
        per_sub[iface.a].append(pts)
        offsets_b.append((iface.b, sum(len(q) for q in per_sub[iface.b])))
        per_sub[iface.b].append(pts)
    width = max(1, *(sum(len(q) for q in lst) for lst in per_sub))
    x_iface = np.zeros((decomposition.n_subdomains, width, 2))
    for s, lst in enumerate(per_sub):
        if lst:
            block = np.concatenate(lst)
            x_iface[s, : len(block)] = block
            x_iface[s, len(block) :] = block[0]

    def gather(offsets):
        return np.concatenate([s * width + off + np.arange(n_if) for s, off in offsets] or [np.zeros(0, int)])

    side_a, side_b = gather(offsets_a), gather(offsets_b)
    if decomposition.interfaces:
        iface_points = np.stack([i.points(n_if) for i in decomposition.interfaces])
    else:
        iface_points = np.zeros((0, n_if, 2))

    chunk_of = None
    if causal:
        if family.time_axis is None:
            raise ValueError(f"causal training needs a time-dependent family; {family.name} is steady")
        axis = family.time_axis
        t = np.stack(x_main)[:, :, : config.n_collocation, axis]  # [K, S, Pc]
        t0, t1 = family.domain.lo[axis], family.domain.hi[axis]
        chunk_of = torch.as_tensor(chunk_index(t, t0, t1, config.causal_chunks), device=device)

    names = family.param_names
    return BatchProblem(
        family=family,
        decomposition=decomposition,
        params=params,
        n_collocation=config.n_collocation,
        x_main=torch.as_tensor(np.stack(x_main), **kw),
        g_data=torch.as_tensor(np.stack(g_data), **kw),
        m_data=torch.as_tensor(np.stack(m_data), **kw),
        x_iface=torch.as_tensor(x_iface, **kw),
        side_a=torch.as_tensor(side_a, device=device),
        side_b=torch.as_tensor(side_b, device=device),
        iface_points=torch.as_tensor(iface_points, **kw),
        iface_axis=torch.as_tensor([[i.axis] for i in decomposition.interfaces], device=device).view(-1, 1),
        param_tensors={n: torch.as_tensor([p[n] for p in params], **kw).view(-1, 1, 1) for n in names},
        chunk_of=chunk_of,
        chunks=config.causal_chunks if causal else 0,
    )

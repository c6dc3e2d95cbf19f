"""Causal training (Wang, Sankaran, Perdikaris 2022, "Respecting causality is all you need for
training physics-informed neural networks"): the residual at later times counts only once the
residual at earlier times is small.

The collocation points are split into M chunks by their time (equal widths of the domain's time
range; a time slab holds the chunks of its own range). For run k and chunk i, with L(i) the mean
squared residual of the chunk's points summed over the subdomains that hold some,

    w_i = exp(-eps_k * sum_{j < i} L(j))        (a constant: no gradient flows through it)
    residual_k = sum_s sum_i w_i * (sum of r^2 over subdomain s's points in chunk i) / Pc

which is the plain ``sum_s mean(r^2)`` when every w_i = 1, and Wang et al.'s ``(1/M) sum_i w_i
L(i)`` up to the random number of points per chunk. The chunks run over the whole domain, not each
subdomain's own range: a later time slab's residual waits for the slabs before it, whose end is
its initial state (trained at once it would fit a wrong initial state, the failure this avoids).
eps follows a schedule: a run moves to the next eps once its smallest weight passes ``tol`` and its
Adam phase ends once that happens at the last eps. Runs are independent: each has its own eps,
stage and weights. A run that is not causal has eps = 0 and trains the plain residual, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DEFAULT_EPS = (1e-2, 1e-1, 1.0, 10.0, 100.0)  # Wang et al.'s schedule
DEFAULT_CHUNKS = 32
DEFAULT_TOL = 0.99


@dataclass(frozen=True)
class CausalSchedule:
    """``eps``: increasing values, each held until the smallest weight passes ``tol``."""

    eps: tuple[float, ...] = DEFAULT_EPS
    tol: float = DEFAULT_TOL

    def validate(self) -> None:
        if not self.eps:
            raise ValueError("causal eps: at least one value")
        if any(not (e > 0 and np.isfinite(e)) for e in self.eps):
            raise ValueError("causal eps: every value must be positive and finite")
        if any(b < a for a, b in zip(self.eps, self.eps[1:], strict=False)):
            raise ValueError("causal eps: the schedule must not decrease")
        if not 0 < self.tol < 1:
            raise ValueError(f"causal tol must be in (0, 1), got {self.tol}")


def chunk_index(t: np.ndarray, t0: float, t1: float, chunks: int) -> np.ndarray:
    """The chunk of each time ``t`` [P] in [t0, t1] split into ``chunks`` equal parts: [P] ints."""
    i = np.floor((np.asarray(t, dtype=float) - t0) / max(t1 - t0, 1e-300) * chunks).astype(np.int64)
    return np.clip(i, 0, chunks - 1)


def chunk_residuals(r2: Tensor, chunk_of: Tensor, chunks: int) -> tuple[Tensor, Tensor]:
    """Per chunk: (sum, mean) of ``r2`` [K, S, P] over the points ``chunk_of`` [K, S, P] puts there,
    each [K, S, M]; an empty chunk's mean is 0."""
    zeros = r2.new_zeros(*r2.shape[:-1], chunks)
    sums = zeros.scatter_add(-1, chunk_of, r2)
    counts = zeros.scatter_add(-1, chunk_of, torch.ones_like(r2))
    return sums, sums / counts.clamp_min(1)


def causal_weights(chunk_loss: Tensor, eps: Tensor) -> Tensor:
    """w [K, M] = exp(-eps_k * sum_{j<i} L(j)) from ``chunk_loss`` L [K, M] and ``eps`` [K]; detached."""
    loss = chunk_loss.detach()
    before = torch.cat([torch.zeros_like(loss[..., :1]), torch.cumsum(loss[..., :-1], -1)], -1)  # sum_{j<i}
    return torch.exp(-eps[:, None] * before)


def weighted_residual(r2: Tensor, chunk_of: Tensor, chunks: int, eps: Tensor) -> tuple[Tensor, Tensor]:
    """(causal residual [K], smallest weight [K]) for ``r2`` [K, S, P] (see the module docstring)."""
    sums, mean = chunk_residuals(r2, chunk_of, chunks)
    w = causal_weights(mean.sum(1), eps)  # [K, M]
    residual = (w[:, None] * sums).sum((-1, -2)) / r2.shape[-1]
    return residual, w.amin(-1)


class CausalState:
    """Each run's place in the eps schedule, kept on the device (the Adam loop never reads it).

    ``on`` [K] bool: the runs that train causally; ``stage`` [K]: index into the schedule;
    ``done_at`` [K]: the Adam iteration at which a run finished its last stage (0: not yet).
    """

    def __init__(self, schedule: CausalSchedule, on: Tensor):
        self.schedule = schedule
        self.on = on
        self.values = torch.tensor(schedule.eps, dtype=torch.float64, device=on.device)
        self.stage = torch.zeros(on.shape, dtype=torch.long, device=on.device)
        self.done_at = torch.zeros(on.shape, dtype=torch.long, device=on.device)
        self.min_weight = torch.ones(on.shape, dtype=torch.float64, device=on.device)
        self.last = len(schedule.eps) - 1

    def restart(self) -> None:
        """Back to the schedule's first eps, nothing finished (a marching training's next slab)."""
        self.stage = torch.zeros_like(self.stage)
        self.done_at = torch.zeros_like(self.done_at)

    def eps(self, like: Tensor) -> Tensor:
        """This iteration's eps per run [K] (0 for a run that is not causal)."""
        return torch.where(self.on, self.values[self.stage], 0.0).to(like.dtype)

    @property
    def done(self) -> Tensor:
        return self.done_at > 0

    def update(self, min_weight: Tensor, iteration: int) -> None:
        """After a step with weights whose minimum per run is ``min_weight`` [K]: a run whose
        weights all passed ``tol`` finishes (at the last eps) or moves to the next eps."""
        passed = self.on & ~self.done & (min_weight.detach() > self.schedule.tol)
        self.done_at = torch.where(passed & (self.stage == self.last), iteration, self.done_at)
        self.stage = torch.where(passed & (self.stage < self.last), self.stage + 1, self.stage)
        self.min_weight = torch.where(self.on, min_weight.detach().to(torch.float64), self.min_weight)

    def report(self, j: int) -> dict[str, float | int | bool]:
        """What run j's causal training reached (a host read, after the training)."""
        return {
            "eps": float(self.values[self.stage[j]]),
            "stage": int(self.stage[j]) + 1,
            "stages": self.last + 1,
            "min_weight": float(self.min_weight[j]),
            "finished_at": int(self.done_at[j]) or None,
        }

"""Acquisition arithmetic on a GP posterior (plain torch): pending trainings as kriging-believer
conditioning, joint Thompson draws, and the GP-UCB exploration weight."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def conditioned_covariance(cov: Tensor, pending: list[int], noise: float) -> Tensor:
    """Covariance [m, m] after observing the points ``pending`` (indices into it) with noise.

    The kriging-believer update: pending trainings reduce uncertainty where they will report,
    the mean is left unchanged (their outcome is not known yet).
    """
    if not pending:
        return cov
    idx = torch.tensor(pending)
    k_pp = cov[idx][:, idx] + max(noise, 1e-9) * torch.eye(len(idx), dtype=cov.dtype)
    k_cp = cov[:, idx]
    return cov - k_cp @ torch.linalg.solve(k_pp, k_cp.T)


def joint_draws(mean: Tensor, cov: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n joint samples [n, m] from N(mean, cov) with a seeded generator."""
    jitter = 1e-9 * max(float(cov.diagonal().mean()), 1e-12)
    chol = None
    for _ in range(6):
        try:
            chol = torch.linalg.cholesky(cov + jitter * torch.eye(len(mean), dtype=cov.dtype))
            break
        except RuntimeError:
            jitter *= 10
    if chol is None:  # fall back to independent marginals
        z = torch.randn(n, len(mean), generator=generator, dtype=cov.dtype)
        return mean + z * cov.diagonal().clamp_min(0).sqrt()
    z = torch.randn(n, len(mean), generator=generator, dtype=cov.dtype)
    return mean + z @ chol.T


def gp_ucb_beta(t: int, n_arms: int = 513, delta: float = 0.1, scale: float = 0.2) -> float:
    """sqrt of the GP-UCB exploration weight (Srinivas et al. 2010, finite arm set):
    beta_t = 2 log(|A| t^2 pi^2 / (6 delta)), scaled by ``scale`` as is common in practice
    (the theoretical value over-explores)."""
    t = max(t, 1)
    return math.sqrt(scale * 2 * math.log(n_arms * t**2 * math.pi**2 / (6 * delta)))

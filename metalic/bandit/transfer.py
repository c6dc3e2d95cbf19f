"""Transfer learning for a reward surrogate: a study's own GP stacked on a prior's GP.

Following Google Vizier's transfer learning (Golovin et al., KDD 2017, section 3.3): the prior is
a GP fitted to earlier trainings of the family (a shipped prior, ``metalic.priors``); the study's
own GP is fitted to the residuals of its observations from the prior's posterior mean. A
prediction adds the two means; its standard deviation is the weighted geometric mean of the two,

    std = std_own^alpha * std_prior^(1 - alpha),   alpha = beta n_own / (beta n_own + n_prior),

so the prior speaks alone before the study has two observations and fades as the study's own
observations arrive: its mean is corrected wherever the study has data, and its uncertainty
gives way to the study's. Nothing is a pseudo-observation: the study's history is its own.

``StackedGP`` answers the same questions as ``RewardGP`` (``marginal``, ``joint``, ``mean``,
``surface``, ``band``, ``rank_arms``), so the engine's policies run on it unchanged. Shapes and
units as in ``RewardGP``: inputs [m, D] (continuous then arm bits), rewards in -log10(rel. L2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metalic.bandit.surrogate import RewardGP

BETA = 1.0  # Vizier's weight of an own observation against a prior one


class StackedGP:
    """``base`` (the prior's fitted GP, or a stack of its own: a study prior; ``n_base``
    observations behind it) plus ``own`` (fitted to the residuals of ``n_own`` observations; None
    before it has two)."""

    def __init__(self, base: RewardGP | StackedGP, n_base: int, own: RewardGP | None, n_own: int):
        self.base, self.own, self.n_base, self.n_own = base, own, n_base, n_own

    @property
    def alpha(self) -> float:
        """The own GP's share of the standard deviation, 0 (prior only) .. 1."""
        if self.own is None:
            return 0.0
        return BETA * self.n_own / (BETA * self.n_own + self.n_base)

    def _blend(self, std_base: Tensor, std_own: Tensor | None) -> Tensor:
        a = self.alpha
        if std_own is None or a == 0.0:
            return std_base
        return std_own.clamp_min(1e-12) ** a * std_base.clamp_min(1e-12) ** (1 - a)

    # ---- the RewardGP interface ------------------------------------------------------------------
    def mean(self, x: Tensor) -> Tensor:
        """Posterior mean reward [m] at x [m, D]."""
        out = self.base.mean(x)
        return out if self.own is None else out + self.own.mean(x)

    def marginal(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean [m], std [m]) of the latent reward."""
        mean, std = self.base.marginal(x)
        if self.own is None:
            return mean, std
        mean_own, std_own = self.own.marginal(x)
        return mean + mean_own, self._blend(std, std_own)

    def joint(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean [m], covariance [m, m]): the blended standard deviations with the two GPs'
        correlations mixed by ``alpha`` (a convex mix of correlation matrices is one)."""
        mean, cov = self.base.joint(x)
        if self.own is None:
            return mean, cov
        mean_own, cov_own = self.own.joint(x)
        a = self.alpha
        corr = a * _correlation(cov_own) + (1 - a) * _correlation(cov)
        std = self._blend(cov.diagonal().clamp_min(0).sqrt(), cov_own.diagonal().clamp_min(0).sqrt())
        return mean + mean_own, corr * std[:, None] * std[None, :]

    @property
    def noise_variance(self) -> float:
        return (self.own or self.base).noise_variance

    def surface(self, conts: Tensor, arms: Tensor) -> Tensor:
        """Posterior mean reward [G, A] of every arm at each of G continuous inputs."""
        out = self.base.surface(conts, arms)
        return out if self.own is None else out + self.own.surface(conts, arms)

    def band(self, conts: Tensor, arms: Tensor, which: Tensor) -> tuple[Tensor, Tensor]:
        """(mean [G, k], std [G, k]) for the arms ``arms[which]`` at each of G continuous inputs."""
        mean, std = self.base.band(conts, arms, which)
        if self.own is None:
            return mean, std
        mean_own, std_own = self.own.band(conts, arms, which)
        return mean + mean_own, self._blend(std, std_own)

    def rank_arms(self, cont: Tensor, arms: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
        """The ``top`` arms by posterior mean at ``cont`` [n_cont]: (indices, mean, std) [top]."""
        latent = self.surface(cont[None], arms)[0]
        order = torch.argsort(latent, descending=True)[:top]
        mean, std = self.band(cont[None], arms, order)
        return order, mean[0], std[0]

    def fitted_values(self) -> dict[str, Any] | None:
        """The own GP's fitted kernel once it has one, else the prior's."""
        return (self.own or self.base).fitted_values()


def _correlation(cov: Tensor) -> Tensor:
    d = cov.diagonal().clamp_min(1e-24).sqrt()
    return cov / d[:, None] / d[None, :]

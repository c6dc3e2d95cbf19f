"""The GP reward surrogate: BoTorch SingleTaskGP over (PDE parameters, arm features) -> reward.

Kernel: (RBF or Matern-5/2 with ARD on the parameters [and the Adam-phase reward], BoTorch's
dimension-scaled prior) x a kernel on the nine term bits x a second one on the single-network bit
(its own lambda: ``RewardGP``). The term kernel (``ARM_KERNELS``) is ``hamming``, the authors'
exp(-Hamming / (9 lambda)) (BoTorch's ``CategoricalKernel``, with a floor and a prior on lambda, see
``_build``), or ``additive``: that Hamming kernel plus a constant plus a linear kernel with one
variance per term (``TermAdditiveKernel``), so a term's effect, learnt from the arms that have it,
carries to every other arm that has it.
Outcomes are standardised. Fitting maximises the exact marginal likelihood (``fit_gpytorch_mll``)
warm-started from the previous hyper-parameters; if a fit raises or gives non-finite
hyper-parameters, the last good hyper-parameters are kept (and logged).

Exact inference is used up to ``max_exact`` observations (default 2000: an exact fit at n = 2000
takes seconds on 2 cores). Past it, the fit and the posterior use the most recent ``max_exact``
observations (a sliding window): in a bandit the recent rounds are the informative ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.kernels.categorical import CategoricalKernel
from botorch.models.transforms.outcome import Standardize
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from gpytorch.constraints import GreaterThan, Positive
from gpytorch.kernels import Kernel
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import LogNormalPrior
from torch import Tensor

from metalic.bandit.space import DTYPE, N_ARM_FEATURES
from metalic.conditions import N_TERMS

log = logging.getLogger(__name__)
MIN_ARM_LENGTHSCALE = 0.1
REFRESH = 5  # also refit from the priors' defaults at every 5th observation count
ARM_KERNELS = ("hamming", "additive")  # the term bits' kernel: the authors', or with per-term effects


class BinaryHammingKernel(CategoricalKernel):
    """BoTorch's CategoricalKernel, exp(-mean_i [x_i != y_i] / lambda), for 0/1 inputs.

    The Hamming distance of bit vectors is a matrix product, a @ (1 - b)^T + (1 - a) @ b^T, instead
    of the parent's [m, n, 9] comparison tensor: same values, measured 6 ms -> well under 1 ms for
    512 x 200 on 2 cores. Only valid for one shared lengthscale and inputs that are exactly 0 or 1.
    """

    GATHER_PAIRS = 1_000_000  # above this many pairs (and without a gradient), gather: see forward

    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, last_dim_is_batch: bool = False, **params):
        if diag or last_dim_is_batch or self.lengthscale.shape[-1] != 1:
            return super().forward(x1, x2, diag=diag, last_dim_is_batch=last_dim_is_batch)
        large = x1.dim() == 2 and x2.dim() == 2 and len(x1) * len(x2) > self.GATHER_PAIRS
        if large and not (torch.is_grad_enabled() and self.lengthscale.requires_grad):
            # Without a gradient: the values for the distinct rows (at most 1,024 bit patterns),
            # then copied out to every pair; the same numbers. Restoring an engine of 2,000
            # observations builds several 2,000 x 2,000 of these.
            u1, i1 = torch.unique(x1, dim=0, return_inverse=True)
            u2, i2 = torch.unique(x2, dim=0, return_inverse=True)
            return self._values(u1, u2)[i1][:, i2]
        return self._values(x1, x2)

    def _values(self, x1: Tensor, x2: Tensor) -> Tensor:
        return torch.exp(-(hamming(x1, x2) / x1.shape[-1]) / self.lengthscale)


def hamming(a: Tensor, b: Tensor) -> Tensor:
    """Hamming distances [..., m, n] between 0/1 rows a [..., m, k] and b [..., n, k], as matrix products."""
    return a @ (1 - b).transpose(-1, -2) + (1 - a) @ b.transpose(-1, -2)


class TermAdditiveKernel(Kernel):
    """A kernel over t term bits b (s = 2 b - 1, in {-1, 1}^t) that holds each term's own effect:

        k(b, b') = v_h exp(-(Hamming(b, b') / t) / lambda) + v_0 + sum_i v_i s_i s'_i.

    Times the parameter kernel k_p, the reward is f_0(p) + sum_i s_i g_i(p) + an interaction part:
    f_0 common to every arm (v_0), g_i term i's effect (v_i, one per term: ARD, a term that does
    not matter gets v_i -> 0), and the authors' Hamming kernel for what the terms do together
    (v_h). Observing ``flux`` and ``none`` at a context tells of every arm with or without flux,
    where the Hamming kernel alone tells mostly of the arms near those two. k(b, b) = v_h + v_0 +
    sum_i v_i for every b. ``variances`` = [v_h, v_0, v_1 .. v_t], log-normal priors around
    0.5, 0.5 and 0.1 each (outcomes are standardised)."""

    has_lengthscale = True

    def __init__(self, n_terms: int, **kwargs):
        super().__init__(
            lengthscale_constraint=GreaterThan(MIN_ARM_LENGTHSCALE),
            lengthscale_prior=LogNormalPrior(0.0, 1.0),
            **kwargs,
        )
        start = torch.tensor([0.5, 0.5] + [0.1] * n_terms)
        self.register_parameter("raw_variances", torch.nn.Parameter(torch.zeros(n_terms + 2)))
        self.register_constraint("raw_variances", Positive())
        self.register_prior(
            "variances_prior", LogNormalPrior(start.log(), torch.ones(n_terms + 2)), _variances, _set_variances
        )
        _set_variances(self, start)

    @property
    def variances(self) -> Tensor:
        return _variances(self)

    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, last_dim_is_batch: bool = False, **params):
        if last_dim_is_batch:
            raise NotImplementedError("TermAdditiveKernel: last_dim_is_batch")
        return term_additive(x1, x2, self.lengthscale.reshape(()), self.variances, diag=diag)


def _variances(kernel: TermAdditiveKernel) -> Tensor:
    return kernel.raw_variances_constraint.transform(kernel.raw_variances)


def _set_variances(kernel: TermAdditiveKernel, value: Tensor) -> None:
    value = torch.as_tensor(value).to(kernel.raw_variances)
    kernel.initialize(raw_variances=kernel.raw_variances_constraint.inverse_transform(value))


def term_additive(a: Tensor, b: Tensor, lengthscale: Tensor, variances: Tensor, diag: bool = False) -> Tensor:
    """``TermAdditiveKernel``'s values between term bits a [..., m, t] and b [..., n, t]: [..., m, n]
    (``diag``: [..., m] for a = b)."""
    t = a.shape[-1]
    v_h, v_0, v_terms = variances[0], variances[1], variances[2:]
    if diag:
        return (v_h + v_0 + v_terms.sum()).expand(a.shape[:-1])
    linear = ((2 * a - 1) * v_terms) @ (2 * b - 1).transpose(-1, -2)
    return v_h * torch.exp(-(hamming(a, b) / t) / lengthscale) + v_0 + linear


class RewardGP:
    """Reward surrogate over inputs ``[continuous (n_cont), arm bits (n_cat)]``: X [n, n_cont + n_cat].

    With ``n_cat`` = 10 the last bit is the single-network flag: it gets a Hamming factor of its
    own, exp(-[flag differs] / lambda_split), beside exp(-(Hamming of the nine term bits / 9) /
    lambda), so how much one network resembles the splits is learnt apart from how much the
    splits resemble each other (one network is not "the empty arm plus one term"). Bits after the
    tenth are recipe bits (``arms.RECIPE_FLAGS``, e.g. causal training): a third Hamming factor,
    exp(-(Hamming of the recipe bits / R) / lambda_recipe), learns how much a recipe changes the
    reward apart from the terms.

    ``arm_kernel`` (``ARM_KERNELS``) is the term bits' factor: ``hamming`` (the authors') or
    ``additive`` (``TermAdditiveKernel``)."""

    def __init__(
        self,
        n_cont: int,
        n_cat: int = N_ARM_FEATURES,
        kernel: str = "rbf",
        max_exact: int = 2000,
        arm_kernel: str = "hamming",
    ):
        if kernel not in ("rbf", "matern"):
            raise ValueError(f"kernel must be 'rbf' or 'matern', got {kernel!r}")
        if arm_kernel not in ARM_KERNELS:
            raise ValueError(f"arm_kernel: must be one of {', '.join(ARM_KERNELS)}, got {arm_kernel!r}")
        self.n_cont, self.n_cat, self.kernel, self.max_exact = n_cont, n_cat, kernel, max_exact
        self.arm_kernel = arm_kernel
        self.n_terms = min(n_cat, N_TERMS)  # bits in the shared Hamming factor; then the flag, the recipe
        self.n_recipe = max(n_cat - N_TERMS - 1, 0)
        self.model: SingleTaskGP | None = None
        self._cache: dict[str, Tensor] = {}
        self.hyper: dict[str, Tensor] | None = None  # last good hyper-parameters
        self.fit_failures = 0

    # ---- model -------------------------------------------------------------------------------
    def _build(self, x: Tensor, y: Tensor) -> SingleTaskGP:
        cont_dims = tuple(range(self.n_cont))
        cat_dims = tuple(range(self.n_cont, self.n_cont + self.n_terms))
        # BoTorch's dimension-scaled log-normal lengthscale prior on the continuous part.
        cont = get_covar_module_with_dim_scaled_prior(
            ard_num_dims=self.n_cont, use_rbf_kernel=self.kernel == "rbf", active_dims=cont_dims
        )
        # Arms one bit apart keep a correlation of at least exp(-1 / (9 * 0.1)) = 0.33, and a
        # log-normal prior centres the Hamming lengthscale near 1: without them the marginal
        # likelihood can fall into "every arm is unrelated", where nothing learnt about one arm
        # informs its neighbours.
        if self.arm_kernel == "additive":
            cat = TermAdditiveKernel(self.n_terms, active_dims=cat_dims)
        else:
            cat = BinaryHammingKernel(
                active_dims=cat_dims,
                lengthscale_constraint=GreaterThan(MIN_ARM_LENGTHSCALE),
                lengthscale_prior=LogNormalPrior(0.0, 1.0),
            )
        covar = cont * cat
        flag = self.n_cont + self.n_terms
        for dims in ((flag, self.n_cont + self.n_cat - self.n_recipe), (flag + 1, self.n_cont + self.n_cat)):
            if dims[1] > dims[0]:  # the single-network flag, then the recipe bits: a factor each
                covar = covar * BinaryHammingKernel(
                    active_dims=tuple(range(*dims)),
                    lengthscale_constraint=GreaterThan(MIN_ARM_LENGTHSCALE),
                    lengthscale_prior=LogNormalPrior(0.0, 1.0),
                )
        # Standardised outcomes have unit variance: no output scale, as in BoTorch's defaults.
        return SingleTaskGP(x, y[:, None], covar_module=covar, outcome_transform=Standardize(m=1))

    def _fit_from(self, x: Tensor, y: Tensor, start: dict[str, Tensor] | None) -> tuple[SingleTaskGP, float]:
        """Maximise the marginal likelihood from ``start`` (None: the priors' defaults)."""
        model = self._build(x, y)
        if start is not None:
            model.load_state_dict(start, strict=False)
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": 150}}, max_attempts=2)
        if not all(torch.isfinite(v).all() for v in _hyper_state(model).values()):
            raise RuntimeError("non-finite hyper-parameters")
        model.train()
        with torch.no_grad():
            value = float(mll(model(*model.train_inputs), model.train_targets))
        return model, value

    def fit(self, x: Tensor, y: Tensor, refit: bool = True) -> bool:
        """Condition on (x [n, D], y [n]); with ``refit``, re-estimate hyper-parameters first.

        A refit starts from the previous hyper-parameters (warm start); every ``REFRESH``-th
        observation count it also starts from the priors' defaults and keeps whichever reaches the
        higher marginal likelihood, so an early poor optimum is not inherited forever. Returns
        False when fitting failed (the last good model is kept).
        """
        x, y = x.to(DTYPE), y.to(DTYPE)
        if len(x) > self.max_exact:
            x, y = x[-self.max_exact :], y[-self.max_exact :]
        try:
            if refit and len(x) >= 2:
                model, value = self._fit_from(x, y, self.hyper)
                if self.hyper is not None and len(x) % REFRESH == 0:
                    fresh, fresh_value = self._fit_from(x, y, None)
                    if fresh_value > value:
                        model = fresh
            else:
                model = self._build(x, y)
                if self.hyper is not None:
                    model.load_state_dict(self.hyper, strict=False)
            model.eval()
            cache = self._predictive_cache(model)
        except Exception as exc:  # any failure keeps the last good model
            self.fit_failures += 1
            log.warning("GP fit failed (%s); keeping the last good model", exc)
            return False
        self.model, self.hyper, self._cache = model, _hyper_state(model), cache
        return True

    @staticmethod
    @torch.no_grad()
    def _predictive_cache(model: SingleTaskGP) -> dict[str, Tensor]:
        """Cholesky factor and weights of the exact GP predictor, computed once per fit.

        Suggestions score 512 arms per call; going through ``model.posterior`` rebuilds lazy
        operators and transforms each time (about 20 ms at n = 200), the cached algebra below
        takes a few ms and gives the same numbers (tested against ``model.posterior``).
        """
        x = model.train_inputs[0]
        y = model.train_targets
        k = model.covar_module(x).to_dense()
        k.diagonal().add_(model.likelihood.noise.reshape(()))  # in place: no [n, n] identity at n = 2,000
        chol = None
        jitter = 0.0
        for _ in range(6):
            try:
                chol = torch.linalg.cholesky(k + jitter * torch.eye(len(x), dtype=k.dtype) if jitter else k)
                break
            except RuntimeError:
                jitter = max(jitter * 10, 1e-8)
        if chol is None:
            raise RuntimeError("kernel matrix is not positive definite")
        prior_mean = model.mean_module.constant.detach()
        alpha = torch.cholesky_solve((y - prior_mean)[:, None], chol)[:, 0]
        tf = model.outcome_transform
        cont, cat, *split = model.covar_module.kernels  # split: the flag's factor, then the recipe's
        return {
            "x": x,
            "chol": chol,
            "alpha": alpha,
            "prior_mean": prior_mean,
            "y_mean": tf.means.reshape(()),
            "y_std": tf.stdvs.reshape(()),
            "ls_cont": cont.lengthscale.detach().reshape(-1),  # [n_cont]
            "ls_cat": cat.lengthscale.detach().reshape(()),
            # the additive term kernel's variances (None: the Hamming kernel); k(x, x) [], any x
            "arm_var": cat.variances.detach() if isinstance(cat, TermAdditiveKernel) else None,
            "k_diag": cat.variances.detach().sum() if isinstance(cat, TermAdditiveKernel) else 1.0,
            "ls_split": split[0].lengthscale.detach().reshape(()) if split else None,
            "ls_recipe": split[1].lengthscale.detach().reshape(()) if len(split) > 1 else None,
        }

    def _kernel_cont(self, a: Tensor, b: Tensor) -> Tensor:
        """The continuous factor of the kernel [m, n] (RBF or Matern-5/2 with ARD)."""
        c, n_cont = self._cache, self.n_cont
        ac, bc = a[:, :n_cont] / c["ls_cont"], b[:, :n_cont] / c["ls_cont"]
        sq = ((ac * ac).sum(-1)[:, None] + (bc * bc).sum(-1)[None, :] - 2 * ac @ bc.T).clamp_min(0)
        if self.kernel == "rbf":
            return torch.exp(-0.5 * sq)
        d = sq.clamp_min(1e-30).sqrt() * math.sqrt(5)  # Matern 5/2
        return (1 + d + d * d / 3) * torch.exp(-d)

    def _kernel(self, a: Tensor, b: Tensor) -> Tensor:
        """The fitted product kernel k(a, b) [m, n] in plain torch (GPyTorch's kernel call costs
        about 2.5 ms of bookkeeping per call, this a few tenths; equality is tested)."""
        n_cont = self.n_cont
        return self._kernel_cont(a, b) * self._kernel_arms(a[:, n_cont:], b[:, n_cont:])

    def _kernel_arms(self, a: Tensor, b: Tensor) -> Tensor:
        """The arm factor [m, n] between arm bits ``a`` [m, n_cat] and ``b`` [n, n_cat]."""
        c, t = self._cache, self.n_terms
        if c["arm_var"] is not None:
            k = term_additive(a[:, :t], b[:, :t], c["ls_cat"], c["arm_var"])
        else:
            k = torch.exp(-(hamming(a[:, :t], b[:, :t]) / t) / c["ls_cat"])
        f = self.n_cat - self.n_recipe  # the flag's bits end here
        if c["ls_split"] is not None:
            k = k * torch.exp(-(hamming(a[:, t:f], b[:, t:f]) / (f - t)) / c["ls_split"])
        if c["ls_recipe"] is not None:
            k = k * torch.exp(-(hamming(a[:, f:], b[:, f:]) / self.n_recipe) / c["ls_recipe"])
        return k

    @torch.inference_mode()
    def rank_arms(self, cont: Tensor, arms: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
        """The ``top`` arms of ``arms`` [A, n_cat] by posterior mean at one continuous input ``cont``
        [n_cont]: (indices [top], mean [top], std [top]) of the latent reward.

        The kernel factorises into a continuous part (one row for all arms) and a Hamming part
        (fixed per fit, computed once), so this costs O(A n) for the ranking and O(top n^2) for
        the variances, instead of building A full input rows."""
        c = self._cache
        k_arms = self._arm_block(arms)
        row = torch.cat([cont.to(DTYPE), torch.zeros(self.n_cat, dtype=DTYPE)])[None]
        k_cont = self._kernel_cont(row, c["x"])[0]  # [n]
        latent = c["prior_mean"] + k_arms @ (k_cont * c["alpha"])
        order = torch.argsort(latent, descending=True)[:top]
        cross = k_arms[order] * k_cont  # [top, n]
        v = torch.linalg.solve_triangular(c["chol"], cross.T, upper=False)
        var = (c["k_diag"] - (v * v).sum(0)).clamp_min(0) * c["y_std"] ** 2
        return order, latent[order] * c["y_std"] + c["y_mean"], var.sqrt()

    def _arm_block(self, arms: Tensor) -> Tensor:
        """The Hamming factor of the kernel between ``arms`` [A, n_cat] and the training arms [A, n],
        computed once per fit and arm set."""
        c = self._cache
        if c.get("arms") is not arms:
            c["arms"], c["k_arms"] = arms, self._kernel_arms(arms, c["x"][:, self.n_cont :])
        return c["k_arms"]

    @torch.inference_mode()
    def surface(self, conts: Tensor, arms: Tensor) -> Tensor:
        """Posterior mean reward [G, A] of every arm of ``arms`` [A, n_cat] at each of G continuous
        inputs ``conts`` [G, n_cont]: one [G, n] x [n, A] product (the kernel factorises)."""
        c = self._cache
        k_arms = self._arm_block(arms)
        rows = torch.cat([conts.to(DTYPE), torch.zeros(len(conts), self.n_cat, dtype=DTYPE)], dim=1)
        k_cont = self._kernel_cont(rows, c["x"])  # [G, n]
        return (c["prior_mean"] + (k_cont * c["alpha"]) @ k_arms.T) * c["y_std"] + c["y_mean"]

    @torch.inference_mode()
    def band(self, conts: Tensor, arms: Tensor, which: Tensor) -> tuple[Tensor, Tensor]:
        """(mean [G, k], std [G, k]) of the latent reward for the arms ``arms[which]`` at each of G
        continuous inputs ``conts`` [G, n_cont]."""
        c = self._cache
        k_arms = self._arm_block(arms)[which]  # [k, n]
        rows = torch.cat([conts.to(DTYPE), torch.zeros(len(conts), self.n_cat, dtype=DTYPE)], dim=1)
        k_cont = self._kernel_cont(rows, c["x"])  # [G, n]
        cross = k_cont[:, None, :] * k_arms[None]  # [G, k, n]
        mean = (c["prior_mean"] + cross @ c["alpha"]) * c["y_std"] + c["y_mean"]
        flat = cross.reshape(-1, cross.shape[-1])
        v = torch.linalg.solve_triangular(c["chol"], flat.T, upper=False)
        var = (c["k_diag"] - (v * v).sum(0)).clamp_min(0) * c["y_std"] ** 2
        return mean, var.sqrt().reshape(mean.shape)

    @torch.no_grad()
    def mean(self, x: Tensor) -> Tensor:
        """Posterior mean reward [m] at x [m, D] (no variance: a ranking by mean needs no more)."""
        c = self._cache
        x = x.to(DTYPE)
        return (c["prior_mean"] + self._kernel(x, c["x"]) @ c["alpha"]) * c["y_std"] + c["y_mean"]

    @torch.no_grad()
    def _latent(self, x: Tensor, full: bool) -> tuple[Tensor, Tensor]:
        c = self._cache
        cross = self._kernel(x, c["x"])  # [m, n]
        prior = self._kernel(x, x) if full else None
        mean = c["prior_mean"] + cross @ c["alpha"]
        v = torch.linalg.solve_triangular(c["chol"], cross.T, upper=False)  # [n, m]
        scale = c["y_std"]
        mean = mean * scale + c["y_mean"]
        if full:
            cov = (prior - v.T @ v) * scale**2
            return mean, cov
        # k(x, x) is the same for every x (1 with the Hamming kernel).
        var = (c["k_diag"] - (v * v).sum(0)).clamp_min(0) * scale**2
        return mean, var

    # ---- posterior -----------------------------------------------------------------------------
    def joint(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior of the latent reward at x [m, D]: (mean [m], covariance [m, m]) in reward units."""
        return self._latent(x.to(DTYPE), full=True)

    def marginal(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean [m], std [m]) of the latent reward."""
        mean, var = self._latent(x.to(DTYPE), full=False)
        return mean, var.sqrt()

    @property
    def noise_variance(self) -> float:
        """Observation noise in reward units squared."""
        noise = self.model.likelihood.noise.item()
        return noise * float(self.model.outcome_transform.stdvs.item()) ** 2

    def fitted_values(self) -> dict[str, Any] | None:
        """The fitted kernel in natural units (None before a fit): ``lengthscales`` [n_cont]
        (unit-cube units), ``hamming_lengthscale``, ``noise`` (reward units squared), and the
        outcome standardisation ``y_mean`` / ``y_std``."""
        c = self._cache
        if not c:
            return None
        return {
            "lengthscales": c["ls_cont"].tolist(),
            "hamming_lengthscale": float(c["ls_cat"]),
            "arm_kernel": self.arm_kernel,
            # additive: [v_hamming, v_constant, v per term] (standardised units)
            "arm_variances": None if c.get("arm_var") is None else c["arm_var"].tolist(),
            "single_network_lengthscale": None if c["ls_split"] is None else float(c["ls_split"]),
            "recipe_lengthscale": None if c.get("ls_recipe") is None else float(c["ls_recipe"]),
            "noise": self.noise_variance,
            "y_mean": float(c["y_mean"]),
            "y_std": float(c["y_std"]),
        }

    def hyperparameters(self) -> dict[str, list]:
        return {k: v.tolist() for k, v in (self.hyper or {}).items()}

    def load_hyperparameters(self, values: Mapping[str, list]) -> None:
        self.hyper = {k: torch.tensor(v, dtype=DTYPE) for k, v in values.items()} if values else None


def _hyper_state(model: SingleTaskGP) -> dict[str, Tensor]:
    """The raw hyper-parameters (no data, no outcome-transform statistics)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}

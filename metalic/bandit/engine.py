"""Single and sequential METALIC engines behind one ask/tell API.

- ``suggest(params, q, pending)``: q arms for trainings at ``params`` (the whole training in
  single mode, the Adam phase in sequential mode), aware of trainings still running.
- ``report_adam(params, arm_adam, reward_adam)`` (sequential): report the reward after the Adam
  phase and get the L-BFGS arm, one explicit operation.
- ``observe(...)``: record a finished training and refit the surrogate(s), warm-started.
- ``recommend(params)``: arms ranked by posterior mean, with predicted error and a 95% interval.
- ``snapshot()`` / ``BanditEngine.from_snapshot()``: observations, hyper-parameters, random state
  and version as JSON-ready data; a reloaded engine suggests exactly what the original would.

Each engine has one GP per phase it chooses an arm for. ``adam``: the arm a training starts with
(in single mode the arm of the whole training). ``lbfgs`` (sequential mode): the L-BFGS phase's
arm, given the reward measured after the Adam phase. Sequential targets follow the authors
(reference §4): the Adam GP learns (r_adam + gamma r) / 2 at (params, arm_adam); the L-BFGS GP
learns r at (r_adam, params, arm_lbfgs).

Arms: the 512 subsets of the nine interface terms and the single-network arm (``single-domain``:
one network over the whole domain, no split), 513 in all. A training that starts as one network
stays one, so in sequential mode the single-network arm is an Adam-phase arm only: its L-BFGS
phase is single-network too and teaches the L-BFGS GP nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

import metalic
from metalic import priors
from metalic.arms import SINGLE, Arm, split_arms
from metalic.bandit.policies import Candidates, Policy, parse_policy, policy_from_json
from metalic.bandit.space import DTYPE, SPLIT_FEATURES, ParamSpace, arm_features, arm_table, feature_width
from metalic.bandit.surrogate import RewardGP
from metalic.bandit.transfer import StackedGP
from metalic.families import get_family
from metalic.priors import Prior

SNAPSHOT_FORMAT = "metalic-policy/2"
READS_FORMATS = ("metalic-policy/1", SNAPSHOT_FORMAT)
R_ADAM_SCALE = 4.0  # Adam-phase rewards enter the L-BFGS GP divided by this (rewards span about [-2, 8])


@dataclass(frozen=True)
class Observation:
    """One finished training. Sequential mode also has the L-BFGS arm and the Adam-phase reward."""

    params: dict[str, float]
    arm: Arm
    reward: float
    arm_lbfgs: Arm | None = None
    reward_adam: float | None = None

    def to_json(self) -> dict:
        return {
            "params": self.params,
            "arm": self.arm.label,
            "reward": self.reward,
            "arm_lbfgs": None if self.arm_lbfgs is None else self.arm_lbfgs.label,
            "reward_adam": self.reward_adam,
        }

    @staticmethod
    def from_json(o: Mapping) -> Observation:
        """Back from ``to_json`` (or an older snapshot's context / bits / reward_phase0)."""
        arm_lbfgs = o.get("arm_lbfgs")
        return Observation(
            dict(o["params"] if "params" in o else o["context"]),
            Arm.parse(o["arm"]),
            o["reward"],
            None if arm_lbfgs is None else Arm.parse(arm_lbfgs),
            o["reward_adam"] if "reward_adam" in o else o.get("reward_phase0"),
        )


@dataclass(frozen=True)
class Recommendation:
    arm: Arm
    terms: str
    reward_mean: float
    reward_std: float
    predicted_error: float  # 10^-mean
    error_interval: tuple[float, float]  # 95% credible interval of the relative L2 error
    observations: int = 0  # trainings of this arm (this phase) the engine holds, at any parameters
    prior_observations: int = 0  # ... and in its prior


RANKINGS = ("lcb", "mean")  # recommend(): by the interval's pessimistic end, or by the mean
Z95 = 1.96


@dataclass
class Landscape:
    """``BanditEngine.landscape``: over G parameter points, the ``top`` arms' posterior reward (mean and std
    [G, top], -log10 rel. L2 units) and the recommended arm with its mean [G]."""

    arms: list[str]
    mean: Tensor
    std: Tensor
    best: list[str]
    best_mean: Tensor


@dataclass
class _Phase:
    """One GP and its training inputs; with a prior (``base``: the prior's prediction of this phase,
    a GP or, for a study prior, that study's own stack; ``n_base`` observations behind it) the GP
    learns the residuals from the prior's mean (``metalic.bandit.transfer``)."""

    gp: RewardGP
    x: list[Tensor] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    base: RewardGP | StackedGP | None = None
    n_base: int = 0

    def refit(self, refit: bool = True) -> bool:
        if len(self.y) < 2:
            return True
        x, y = torch.stack(self.x), torch.tensor(self.y, dtype=DTYPE)
        if self.base is not None:
            y = y - self.base.mean(x)
        return self.gp.fit(x, y, refit=refit)

    @property
    def own_ready(self) -> bool:
        """The phase's own GP is fitted (two observations or more)."""
        return self.gp.model is not None and len(self.y) >= 2

    @property
    def ready(self) -> bool:
        """Predictions can be made: the own GP is fitted, or there is a prior."""
        return self.own_ready or self.base is not None

    @property
    def predictor(self) -> RewardGP | StackedGP:
        """What predicts this phase's reward: the own GP, or the prior with the own GP on top."""
        if self.base is None:
            return self.gp
        return StackedGP(self.base, self.n_base, self.gp if self.own_ready else None, len(self.y))


class BanditEngine:
    def __init__(
        self,
        family: str,
        mode: str = "single",
        policy: str | Policy = "ucb",
        seed: int = 0,
        kernel: str = "rbf",
        gamma: float = 0.9,
        max_exact: int = 2000,
        ucb_schedule: str = "constant",
        ucb_coef: float = 1.0,
        prior: Prior | StudyPrior | None = None,
        recipe: Sequence[str] = (),
        arm_kernel: str = "hamming",
    ):
        if mode not in ("single", "sequential"):
            raise ValueError(f"mode: must be 'single' or 'sequential', got {mode!r}")
        self.family = get_family(family)
        self.space = ParamSpace(self.family)
        self.mode = mode
        self.policy = policy if isinstance(policy, Policy) else parse_policy(policy, ucb_schedule, ucb_coef)
        if not self.policy.has_engine:
            raise ValueError(f"policy: {self.policy.label} does not run on an engine")
        self.seed, self.kernel, self.gamma, self.max_exact = seed, kernel, gamma, max_exact
        self.generator = torch.Generator().manual_seed(seed)
        # The recipe bits this engine learns (a training recipe is the Adam phase's: the L-BFGS
        # GP's arms have none). Arms and their GP inputs, per phase.
        self.recipe = tuple(recipe)
        if self.recipe and self.family.time_axis is None:
            raise ValueError(f"recipe: {self.family.name} is steady; a recipe bit needs a time axis")
        self.arms, self.features = arm_table(self.recipe)
        self.width = feature_width(self.recipe)
        d = self.space.dim
        self.arm_kernel = arm_kernel  # the term bits' kernel (surrogate.ARM_KERNELS)
        self.adam = _Phase(RewardGP(d, n_cat=self.width, kernel=kernel, max_exact=max_exact, arm_kernel=arm_kernel))
        self.lbfgs = (
            _Phase(RewardGP(d + 1, kernel=kernel, max_exact=max_exact, arm_kernel=arm_kernel))
            if mode == "sequential"
            else None
        )
        self.prior = prior
        if prior is not None:
            self._stack_on(prior)
        self.observations: list[Observation] = []
        # Observations made before those held here (a restore from a window of the latest ones).
        self.n_before = 0

    def _stack_on(self, prior: Prior | StudyPrior) -> None:
        """Each phase's GP learns the residuals from the prior's prediction of the same phase: a
        shipped prior's GP, or another study's whole predictor (itself perhaps on a prior)."""
        if (prior.family, prior.mode) != (self.family.name, self.mode):
            raise ValueError(f"prior: {prior.ref} is not a prior of {self.family.name} ({self.mode})")
        if self.recipe:
            raise ValueError(f"prior: {prior.ref} has no recipe bits; an engine that learns {self.recipe} has no prior")
        base = prior_engine(prior)
        if (base.prior is not None and not isinstance(prior, StudyPrior)) or not base.adam.own_ready:
            raise ValueError(f"prior: {prior.ref} must be fitted on two or more observations of its own")
        for phase, below in ((self.adam, base.adam), (self.lbfgs, base.lbfgs)):
            if phase is not None and below.ready:  # n_base: every observation behind the prediction
                phase.base, phase.n_base = below.predictor, below.n_base + len(below.y)

    # ---- encoding --------------------------------------------------------------------------------
    def _rows(self, unit: Tensor, features: Tensor, reward_adam: float | None = None) -> Tensor:
        """GP inputs for arms' ``features`` [m, F] at one point ``unit`` of the parameter cube:
        [m, (1 +) d + F] (the L-BFGS GP also reads the Adam-phase reward)."""
        parts = [unit.expand(len(features), -1), features]
        if reward_adam is not None:
            parts.insert(0, torch.full((len(features), 1), reward_adam / R_ADAM_SCALE, dtype=DTYPE))
        return torch.cat(parts, dim=1)

    # ---- asking ------------------------------------------------------------------------------------
    def suggest(
        self,
        params: Mapping[str, float],
        q: int = 1,
        pending: Sequence[tuple[Mapping[str, float], Arm]] = (),
        policy: str | Policy | None = None,
    ) -> list[Arm]:
        """q arms for new trainings at ``params``; ``pending`` = (params, arm) still training.

        ``policy`` overrides the engine's own for this call (e.g. ``"ts"`` or ``"mean"``).
        """
        unit = self.space.encode(params)
        pend = [(self.space.encode(c), Arm.parse(a, "pending arm"), None) for c, a in pending]
        return self._pick(self.adam, unit, None, q, pend, self._policy(policy))

    def report_adam(
        self,
        params: Mapping[str, float],
        arm_adam: Arm,
        reward_adam: float,
        q: int = 1,
        pending: Sequence[tuple[Mapping[str, float], float, Arm]] = (),
        policy: str | Policy | None = None,
    ) -> list[Arm]:
        """Sequential mode: the Adam phase of ``arm_adam`` gave ``reward_adam``; returns the L-BFGS
        arm(s). ``pending`` = (params, reward_adam, arm_lbfgs) of L-BFGS phases still running.
        """
        if self.lbfgs is None:
            raise ValueError("mode: report_adam needs a sequential engine")
        arm_adam = Arm.parse(arm_adam, "arm_adam")
        if not math.isfinite(reward_adam):
            raise ValueError(f"reward_adam: must be finite, got {reward_adam}")
        if arm_adam.single:  # one network stays one network
            return [SINGLE] * q
        unit = self.space.encode(params)
        pend = [(self.space.encode(c), Arm.parse(a, "pending arm"), r) for c, r, a in pending]
        return self._pick(self.lbfgs, unit, reward_adam, q, pend, self._policy(policy))

    def _policy(self, policy: str | Policy | None) -> Policy:
        if policy is None:
            return self.policy
        if isinstance(policy, Policy):
            return policy
        own = self.policy
        return parse_policy(policy, getattr(own, "schedule", "constant"), getattr(own, "coef", 1.0))

    def _pick(
        self, phase: _Phase, unit: Tensor, reward_adam: float | None, q: int, pending: list, policy: Policy
    ) -> list[Arm]:
        """``pending``: (unit params, arm, Adam-phase reward or None) of trainings still running."""
        if q < 1:
            raise ValueError(f"q: must be at least 1, got {q}")
        arms, features = (self.arms, self.features) if phase is self.adam else (split_arms(), SPLIT_FEATURES)
        width = features.shape[1]
        # The same arm already training at this very point would only repeat that training.
        repeated = [
            a.index
            for u, a, r in pending
            if torch.allclose(u, unit) and (reward_adam is None or (r is not None and abs(r - reward_adam) < 1e-12))
            and a.index < len(arms)
        ]  # fmt: skip
        candidates = Candidates(
            arms=arms,
            rows=self._rows(unit, features, reward_adam),
            gp=phase.predictor if phase.ready else None,
            generator=self.generator,
            t=self.n_before + len(phase.y) + 1,
            pending_rows=[
                self._rows(u, arm_features([a if a.index < len(arms) else a.base], width), r)[0] for u, a, r in pending
            ],
            repeated=repeated,
        )
        return policy.pick(candidates, q)

    # ---- telling -----------------------------------------------------------------------------------
    def observe(self, *observations: Observation, refit: bool = True) -> None:
        """Record finished trainings (all validated before any is recorded) and refit once."""
        checked = [self._check(o) for o in observations]
        if checked:  # one tensor op per input, not one per observation (a restore conditions on 2,000)
            units = self.space.encode_valid([o.params for o in checked])  # [n, d]
            arms = arm_features([o.arm for o in checked], self.width)
            self.adam.x.extend(torch.cat([units, arms], dim=1).unbind(0))
            if self.lbfgs is None:
                self.adam.y.extend(o.reward for o in checked)
            else:
                self.adam.y.extend((o.reward_adam + self.gamma * o.reward) / 2 for o in checked)
                split = [i for i, o in enumerate(checked) if not o.arm.single]
                if split:
                    r_adam = torch.tensor([[checked[i].reward_adam / R_ADAM_SCALE] for i in split], dtype=DTYPE)
                    features = arm_features([checked[i].arm_lbfgs.base for i in split])
                    self.lbfgs.x.extend(torch.cat([r_adam, units[split], features], dim=1).unbind(0))
                    self.lbfgs.y.extend(checked[i].reward for i in split)
            self.observations.extend(checked)
        self.refit(refit)

    def refit(self, refit: bool = True) -> None:
        self.adam.refit(refit)
        if self.lbfgs is not None:
            self.lbfgs.refit(refit)

    def _check(self, obs: Observation) -> Observation:
        params = self.family.validate_params(obs.params)
        arm = Arm.parse(obs.arm, "arm")
        if arm.index >= len(self.arms):
            raise ValueError(f"arm: {arm.label} has a recipe bit this engine does not learn")
        if not math.isfinite(obs.reward):
            raise ValueError(f"reward: must be finite (cap it first), got {obs.reward}")
        if self.lbfgs is None:
            return Observation(params, arm, float(obs.reward))
        if obs.arm_lbfgs is None or obs.reward_adam is None:
            raise ValueError("arm_lbfgs: a sequential observation needs arm_lbfgs and reward_adam")
        if not math.isfinite(obs.reward_adam):
            raise ValueError(f"reward_adam: must be finite, got {obs.reward_adam}")
        arm_lbfgs = Arm.parse(obs.arm_lbfgs, "arm_lbfgs")
        if arm.single != arm_lbfgs.single:
            raise ValueError("arm_lbfgs: a training is single-network in both phases or in neither")
        return Observation(params, arm, float(obs.reward), arm_lbfgs, float(obs.reward_adam))

    # ---- recommending ------------------------------------------------------------------------------
    def recommend(
        self, params: Mapping[str, float], top: int = 5, reward_adam: float | None = None, rank: str = "lcb"
    ) -> list[Recommendation]:
        """The ``top`` arms at ``params``, best first. ``rank="lcb"`` (what a user is told) orders
        by the lower end of the reward's 95% interval, i.e. the upper end of the error's: an arm
        nobody tried keeps the GP's wide prior there and does not win on its prior mean alone.
        ``rank="mean"`` orders by posterior mean (the authors' test rollout: pure exploitation).
        With ``reward_adam`` in sequential mode, the ranking is for the L-BFGS phase."""
        if rank not in RANKINGS:
            raise ValueError(f"rank: must be one of {', '.join(RANKINGS)}, got {rank!r}")
        unit = self.space.encode(params)
        phase = self.adam
        if reward_adam is not None:
            if self.lbfgs is None:
                raise ValueError("reward_adam: only a sequential engine ranks L-BFGS arms")
            phase = self.lbfgs
        if not phase.ready:
            raise ValueError("recommend: the surrogate has fewer than two observations")
        cont = unit
        if reward_adam is not None:
            cont = torch.cat([torch.tensor([reward_adam / R_ADAM_SCALE], dtype=DTYPE), unit])
        arms, features = (self.arms, self.features) if phase is self.adam else (split_arms(), SPLIT_FEATURES)
        if rank == "mean":
            order, mean, std = phase.predictor.rank_arms(cont, features, top)
        else:  # every arm's interval: [1, A] means and stds
            means, stds = phase.predictor.band(cont[None], features, torch.arange(len(features)))
            order = torch.argsort(means[0] - Z95 * stds[0], descending=True)[:top]
            mean, std = means[0, order], stds[0, order]
        lbfgs = phase is not self.adam
        own = _arm_counts(self.observations, lbfgs)
        # the prior's own trainings (a study prior's: that study's, not what it stands on)
        prior = _arm_counts(prior_engine(self.prior).observations, lbfgs) if self.prior is not None else {}
        out = []
        for i, m, s in zip(order.tolist(), mean.tolist(), std.tolist(), strict=True):
            arm = arms[i]
            interval = (10 ** (-(m + Z95 * s)), 10 ** (-(m - Z95 * s)))
            out.append(Recommendation(arm, arm.label, m, s, 10 ** (-m), interval, own.get(i, 0), prior.get(i, 0)))
        return out

    def landscape(self, points: Sequence[Mapping[str, float]], top: int = 5) -> Landscape:
        """The learned policy over G parameter points (a slice of the parameter box): the
        recommended arm at each, and mean / std of the posterior reward of the ``top`` arms that
        matter most there (those recommended somewhere, most often first, then the best on
        average). The Adam GP: the whole training in single mode, the Adam phase in sequential mode."""
        if not self.adam.ready:
            raise ValueError("landscape: the surrogate has fewer than two observations")
        units = torch.stack([self.space.encode(c) for c in points])
        gp = self.adam.predictor
        surface = gp.surface(units, self.features)  # [G, A]
        best_mean, best = surface.max(dim=1)
        wins = torch.bincount(best, minlength=len(self.features))
        by_mean = torch.argsort(surface.mean(dim=0), descending=True)
        order = by_mean[torch.argsort(wins[by_mean], descending=True, stable=True)][:top]  # wins, then mean
        mean, std = gp.band(units, self.features, order)
        arms = self.arms
        return Landscape(
            arms=[arms[i].label for i in order.tolist()],
            mean=mean,
            std=std,
            best=[arms[i].label for i in best.tolist()],
            best_mean=best_mean,
        )

    # ---- persistence -------------------------------------------------------------------------------
    @property
    def n_observations(self) -> int:
        """All observations this engine has learnt from (including those before a windowed restore)."""
        return self.n_before + len(self.observations)

    def snapshot(self, observations: bool = True) -> dict:
        """JSON-ready state. ``observations=False`` leaves them out (a store keeps them as rows and
        passes them back to ``from_snapshot``); ``observation_count`` says how many there were."""
        return {
            "format": SNAPSHOT_FORMAT,
            "version": metalic.__version__,
            "family": self.family.name,
            "mode": self.mode,
            "policy": self.policy.to_json(),
            "seed": self.seed,
            "kernel": self.kernel,
            "arm_kernel": self.arm_kernel,
            "gamma": self.gamma,
            "max_exact": self.max_exact,
            "prior": None if self.prior is None else self.prior.ref,
            **({"recipe": list(self.recipe)} if self.recipe else {}),
            "observations": [o.to_json() for o in self.observations] if observations else None,
            "observation_count": self.n_observations,
            "hyperparameters": {
                "adam": self.adam.gp.hyperparameters(),
                "lbfgs": self.lbfgs.gp.hyperparameters() if self.lbfgs is not None else {},
            },
            "rng_state": self.generator.get_state().tolist(),
        }

    @classmethod
    def from_snapshot(
        cls,
        snap: Mapping,
        observations: Sequence[Observation] | None = None,
        prior: Prior | StudyPrior | None = None,
    ) -> BanditEngine:
        """The engine a snapshot describes, conditioned on its observations without a refit.

        ``observations``: given when the snapshot was taken without them; they may be only the most
        recent ``max_exact`` of ``snap["observation_count"]`` (all the GP ever conditions on).
        ``prior``: what the snapshot's ``prior`` names, when it is not an installed prior file (a
        ``StudyPrior``, which the store resolves). Snapshots of the earlier format
        (``metalic-policy/1``) load too.
        """
        if snap.get("format") not in READS_FORMATS:
            raise ValueError("snapshot: not a metalic policy snapshot")
        policy = policy_from_json(snap["policy"])
        ref = snap.get("prior")
        if prior is not None and prior.ref != ref:
            raise ValueError(f"snapshot: stands on {ref}, not on {prior.ref}")
        if prior is None and ref:
            if ref.startswith(STUDY_PRIOR):
                raise ValueError(f"snapshot: stands on {ref}; restore it through the store that holds that study")
            prior = priors.load(ref)
        engine = cls(
            snap["family"],
            snap["mode"],
            policy,
            snap["seed"],
            snap["kernel"],
            snap["gamma"],
            snap["max_exact"],
            prior=prior,
            recipe=tuple(snap.get("recipe", ())),
            arm_kernel=snap.get("arm_kernel", "hamming"),
        )
        hyper = snap["hyperparameters"]
        engine.adam.gp.load_hyperparameters(hyper["adam"] if "adam" in hyper else hyper["phase0"])
        if engine.lbfgs is not None:
            engine.lbfgs.gp.load_hyperparameters(hyper["lbfgs"] if "lbfgs" in hyper else hyper["phase1"])
        if observations is None:
            if snap.get("observations") is None:
                raise ValueError("snapshot: taken without observations; pass them to from_snapshot")
            observations = [Observation.from_json(o) for o in snap["observations"]]
        total = int(snap.get("observation_count", len(observations)))
        if len(observations) > total:
            raise ValueError(f"snapshot: {len(observations)} observations given for a count of {total}")
        if len(observations) < min(total, engine.max_exact):
            raise ValueError(f"snapshot: needs the latest {min(total, engine.max_exact)} observations")
        # Condition on the stored data with the stored hyper-parameters: no refit, same posterior.
        engine.observe(*observations, refit=False)
        engine.n_before = total - len(observations)
        engine.generator.set_state(torch.tensor(snap["rng_state"], dtype=torch.uint8))
        return engine


def _arm_counts(observations: Sequence[Observation], lbfgs: bool) -> dict[int, int]:
    """Trainings per arm index: the Adam-phase (or whole-training) arm, or the L-BFGS arm."""
    counts: dict[int, int] = {}
    for o in observations:
        arm = o.arm_lbfgs if lbfgs else o.arm
        if arm is not None and not (lbfgs and arm.single):
            counts[arm.index] = counts.get(arm.index, 0) + 1
    return counts


STUDY_PRIOR = "study:"  # how a study prior's ref begins: study:<id>@v<version>


@dataclass(frozen=True, eq=False)
class StudyPrior:
    """Another study's engine at one snapshot version, as a prior: a service study at a new budget
    starts from what its family learned at the nearest budget (``metalic.store.studies``). The
    engine is restored by the store and never observes again; ``ref`` = ``study:<id>@v<version>``
    names it in the new study and its snapshots, so a restore stacks on the same version."""

    ref: str
    engine: BanditEngine
    provenance: dict

    @property
    def family(self) -> str:
        return self.engine.family.name

    @property
    def mode(self) -> str:
        return self.engine.mode

    @property
    def trainings(self) -> int:
        """Every training behind it: the study's own and those of what it stands on."""
        below = self.engine.prior
        return self.engine.n_observations + (below.trainings if below is not None else 0)


def prior_engine(prior: Prior | StudyPrior) -> BanditEngine:
    """The engine of a prior: a study prior's own; a prior file's snapshot conditioned on its
    observations with its stored hyper-parameters (no fit; once per loaded prior)."""
    return prior.engine if isinstance(prior, StudyPrior) else _file_engine(prior)


@functools.cache  # a Prior hashes by identity (eq=False): once per loaded prior
def _file_engine(prior: Prior) -> BanditEngine:
    return BanditEngine.from_snapshot(prior.snapshot)

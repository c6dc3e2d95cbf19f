"""Single and sequential METALIC engines behind one ask/tell API.

- ``suggest(context, q, pending)``: q arms for trainings at ``context`` (the whole training in
  single mode, the Adam phase in sequential mode), aware of trainings still running.
- ``report_phase0(context, arm0, reward0)`` (sequential): report the reward after the Adam phase
  and get the L-BFGS arm, one explicit operation.
- ``observe(...)``: record a finished training and refit the surrogate(s), warm-started.
- ``recommend(context)``: arms ranked by posterior mean, with predicted error and a 95% interval.
- ``snapshot()`` / ``BanditEngine.from_snapshot()``: observations, hyper-parameters, random state
  and version as JSON-ready data; a reloaded engine suggests exactly what the original would.

Sequential targets follow the authors (reference §4): the phase-0 GP learns (r0 + gamma r1) / 2 at
(context, arm0); the phase-1 GP learns r1 at (r0, context, arm1).

Arms: the 512 subsets of the nine interface terms and the single-network arm (``single-domain``:
one network over the whole domain, no split), 513 in all. A training that starts as one network
stays one, so in sequential mode the single-network arm is a phase-0 arm only: its L-BFGS phase
is single-network too and teaches the phase-1 GP nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

import metalic
from metalic.bandit.space import (
    ALL_ARMS,
    DTYPE,
    TERM_ARMS,
    ContextSpace,
    arm_features,
    arm_index,
    arm_of,
    check_arm,
)
from metalic.bandit.surrogate import RewardGP, conditioned_covariance, gp_ucb_beta, joint_draws
from metalic.conditions import SINGLE_NETWORK, Arm, arm_label, is_single_network
from metalic.families import get_family

SNAPSHOT_FORMAT = "metalic-policy/1"
HEURISTICS = ("ucb", "ts", "mean", "random", "fixed:<terms>")
R0_SCALE = 4.0  # phase-0 rewards enter the phase-1 GP divided by this (rewards span about [-2, 8])


@dataclass(frozen=True)
class Policy:
    """``kind`` in ucb, ts, mean, random, fixed; ``arm`` for fixed; UCB weight constant or GP-UCB."""

    kind: str
    arm: Arm | None = None
    ucb_schedule: str = "constant"  # "constant" (the authors: mean + c std) or "gp-ucb"
    ucb_coef: float = 1.0

    @staticmethod
    def parse(text: str, ucb_schedule: str = "constant", ucb_coef: float = 1.0) -> Policy:
        name = text.strip().lower()
        if ucb_schedule not in ("constant", "gp-ucb"):
            raise ValueError(f"ucb_schedule must be 'constant' or 'gp-ucb', got {ucb_schedule!r}")
        if name.startswith("fixed:"):
            return Policy("fixed", check_arm(name[len("fixed:") :], "heuristic fixed arm"))
        if name not in ("ucb", "ts", "mean", "random"):
            raise ValueError(f"heuristic: unknown heuristic {text!r} (one of {', '.join(HEURISTICS)})")
        return Policy(name, None, ucb_schedule, ucb_coef)

    @property
    def label(self) -> str:
        return f"fixed:{arm_label(self.arm)}" if self.kind == "fixed" else self.kind


@dataclass(frozen=True)
class Observation:
    """One finished training. Sequential mode also has the L-BFGS arm and the phase-0 reward."""

    context: dict[str, float]
    arm: Arm
    reward: float
    arm_lbfgs: Arm | None = None
    reward_phase0: float | None = None


@dataclass(frozen=True)
class Recommendation:
    arm: Arm
    terms: str
    reward_mean: float
    reward_std: float
    predicted_error: float  # 10^-mean
    error_interval: tuple[float, float]  # 95% credible interval of the relative L2 error


@dataclass
class Landscape:
    """``BanditEngine.landscape``: over G contexts, the ``top`` arms' posterior reward (mean and std
    [G, top], -log10 rel. L2 units) and the recommended arm with its mean [G]."""

    arms: list[str]
    mean: Tensor
    std: Tensor
    best: list[str]
    best_mean: Tensor


@dataclass
class _Phase:
    """One GP and its training inputs."""

    gp: RewardGP
    x: list[Tensor] = field(default_factory=list)
    y: list[float] = field(default_factory=list)

    def refit(self, refit: bool = True) -> bool:
        if len(self.y) < 2:
            return True
        return self.gp.fit(torch.stack(self.x), torch.tensor(self.y, dtype=DTYPE), refit=refit)

    @property
    def ready(self) -> bool:
        return self.gp.model is not None and len(self.y) >= 2


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
    ):
        if mode not in ("single", "sequential"):
            raise ValueError(f"mode: must be 'single' or 'sequential', got {mode!r}")
        self.family = get_family(family)
        self.space = ContextSpace(self.family)
        self.mode = mode
        self.policy = policy if isinstance(policy, Policy) else Policy.parse(policy, ucb_schedule, ucb_coef)
        self.seed, self.kernel, self.gamma, self.max_exact = seed, kernel, gamma, max_exact
        self.generator = torch.Generator().manual_seed(seed)
        d = self.space.dim
        self.phase0 = _Phase(RewardGP(d, kernel=kernel, max_exact=max_exact))
        self.phase1 = _Phase(RewardGP(d + 1, kernel=kernel, max_exact=max_exact)) if mode == "sequential" else None
        self.observations: list[Observation] = []
        # Observations made before those held here (a restore from a window of the latest ones).
        self.n_before = 0

    # ---- encoding --------------------------------------------------------------------------------
    def _rows(self, unit_context: Tensor, arms: Tensor, r0: float | None = None) -> Tensor:
        """GP inputs for arms [m, 10] (``arm_features``) at one context: [m, (1 +) d + 10]."""
        parts = [unit_context.expand(len(arms), -1), arms]
        if r0 is not None:
            parts.insert(0, torch.full((len(arms), 1), r0 / R0_SCALE, dtype=DTYPE))
        return torch.cat(parts, dim=1)

    # ---- asking ------------------------------------------------------------------------------------
    def suggest(
        self,
        context: Mapping[str, float],
        q: int = 1,
        pending: Sequence[tuple[Mapping[str, float], Arm]] = (),
        policy: str | Policy | None = None,
    ) -> list[Arm]:
        """q arms for new trainings at ``context``; ``pending`` = (context, arm) still training.

        ``policy`` overrides the engine's own for this call (e.g. ``"ts"`` or ``"mean"``).
        """
        unit = self.space.encode(context)
        pend = [(self.space.encode(c), check_arm(a, "pending arm")) for c, a in pending]
        return self._select(self.phase0, unit, None, q, pend, self._policy(policy))

    def report_phase0(
        self,
        context: Mapping[str, float],
        arm0: Arm,
        reward0: float,
        q: int = 1,
        pending: Sequence[tuple[Mapping[str, float], float, Arm]] = (),
        policy: str | Policy | None = None,
    ) -> list[Arm]:
        """Sequential mode: the Adam phase of ``arm0`` gave ``reward0``; returns the L-BFGS arm(s).

        ``pending`` = (context, reward0, arm1) of L-BFGS phases still running.
        """
        if self.phase1 is None:
            raise ValueError("mode: report_phase0 needs a sequential engine")
        arm0 = check_arm(arm0, "arm0")
        if not math.isfinite(reward0):
            raise ValueError(f"reward0: must be finite, got {reward0}")
        if is_single_network(arm0):  # one network stays one network
            return [SINGLE_NETWORK] * q
        unit = self.space.encode(context)
        pend = [(self.space.encode(c), check_arm(a, "pending arm"), r) for c, r, a in pending]
        return self._select(self.phase1, unit, reward0, q, pend, self._policy(policy))

    def _policy(self, policy: str | Policy | None) -> Policy:
        if policy is None:
            return self.policy
        if isinstance(policy, Policy):
            return policy
        return Policy.parse(policy, self.policy.ucb_schedule, self.policy.ucb_coef)

    def _select(self, phase: _Phase, unit: Tensor, r0: float | None, q: int, pending: list, pol: Policy) -> list[Arm]:
        if q < 1:
            raise ValueError(f"q: must be at least 1, got {q}")
        arms = ALL_ARMS if phase is self.phase0 else TERM_ARMS  # phase 1 cannot merge subdomains
        if pol.kind == "fixed":
            if phase is not self.phase0 and is_single_network(pol.arm):
                raise ValueError("policy: the single-network arm cannot start at the L-BFGS phase")
            return [pol.arm] * q
        if pol.kind == "random" or not phase.ready:
            # Random arms (distinct within the call) until the surrogate has data.
            order = torch.randperm(len(arms), generator=self.generator)[:q]
            return [arm_of(int(i)) for i in order]
        candidates = self._rows(unit, arms, r0)
        if q == 1 and not pending and pol.kind in ("ucb", "mean"):
            # Only marginal variances are needed: skip the 512 x 512 covariance.
            mean, std = phase.gp.marginal(candidates)
            coef = self._ucb_coef(phase, pol) if pol.kind == "ucb" else 0.0
            return [arm_of(int(torch.argmax(mean + coef * std)))]
        pend_rows = [self._rows(u, arm_features([a]), p[0] if len(p) else None)[0] for u, a, *p in pending]
        x = torch.cat([candidates, torch.stack(pend_rows)]) if pend_rows else candidates
        mean, cov = phase.gp.joint(x)
        noise = phase.gp.noise_variance
        n = len(arms)
        taken = list(range(n, len(x)))  # pending rows
        # The same arm already training at this very context would only repeat that training.
        chosen: list[int] = [
            arm_index(a)
            for u, a, *p in pending
            if torch.allclose(u, unit) and (r0 is None or (len(p) and abs(p[0] - r0) < 1e-12)) and arm_index(a) < n
        ]
        skip = len(chosen)
        for _ in range(q):
            cond = conditioned_covariance(cov, taken, noise)
            if pol.kind == "ucb":
                score = mean[:n] + self._ucb_coef(phase, pol) * cond.diagonal()[:n].clamp_min(0).sqrt()
            elif pol.kind == "ts":
                score = joint_draws(mean[:n], cond[:n, :n], 1, self.generator)[0]
            else:  # mean
                score = mean[:n].clone()
            if chosen:
                score[torch.tensor(chosen)] = -math.inf
            best = int(torch.argmax(score))
            chosen.append(best)
            taken.append(best)
        return [arm_of(i) for i in chosen[skip:]]

    def _ucb_coef(self, phase: _Phase, pol: Policy) -> float:
        return pol.ucb_coef if pol.ucb_schedule == "constant" else gp_ucb_beta(self.n_before + len(phase.y) + 1)

    # ---- telling -----------------------------------------------------------------------------------
    def observe(self, *observations: Observation, refit: bool = True) -> None:
        """Record finished trainings (all validated before any is recorded) and refit once."""
        checked = [self._check(o) for o in observations]
        for obs in checked:
            unit = self.space.encode(obs.context)
            arm = arm_features([obs.arm])
            if self.phase1 is None:
                self.phase0.x.append(self._rows(unit, arm)[0])
                self.phase0.y.append(obs.reward)
            else:
                self.phase0.x.append(self._rows(unit, arm)[0])
                self.phase0.y.append((obs.reward_phase0 + self.gamma * obs.reward) / 2)
                if not is_single_network(obs.arm):
                    self.phase1.x.append(self._rows(unit, arm_features([obs.arm_lbfgs]), obs.reward_phase0)[0])
                    self.phase1.y.append(obs.reward)
            self.observations.append(obs)
        self.refit(refit)

    def refit(self, refit: bool = True) -> None:
        self.phase0.refit(refit)
        if self.phase1 is not None:
            self.phase1.refit(refit)

    def _check(self, obs: Observation) -> Observation:
        context = self.family.validate_params(obs.context)
        arm = check_arm(obs.arm, "arm")
        if not math.isfinite(obs.reward):
            raise ValueError(f"reward: must be finite (cap it first), got {obs.reward}")
        if self.phase1 is None:
            return Observation(context, arm, float(obs.reward))
        if obs.arm_lbfgs is None or obs.reward_phase0 is None:
            raise ValueError("arm_lbfgs: a sequential observation needs arm_lbfgs and reward_phase0")
        if not math.isfinite(obs.reward_phase0):
            raise ValueError(f"reward_phase0: must be finite, got {obs.reward_phase0}")
        arm_lbfgs = check_arm(obs.arm_lbfgs, "arm_lbfgs")
        if is_single_network(arm) != is_single_network(arm_lbfgs):
            raise ValueError("arm_lbfgs: a training is single-network in both phases or in neither")
        return Observation(context, arm, float(obs.reward), arm_lbfgs, float(obs.reward_phase0))

    # ---- recommending ------------------------------------------------------------------------------
    def recommend(
        self, context: Mapping[str, float], top: int = 5, reward_phase0: float | None = None
    ) -> list[Recommendation]:
        """Arms ranked by posterior mean reward (exploitation). With ``reward_phase0`` in
        sequential mode, the ranking is for the L-BFGS phase."""
        unit = self.space.encode(context)
        phase, r0 = self.phase0, None
        if reward_phase0 is not None:
            if self.phase1 is None:
                raise ValueError("reward_phase0: only a sequential engine ranks L-BFGS arms")
            phase, r0 = self.phase1, reward_phase0
        if not phase.ready:
            raise ValueError("recommend: the surrogate has fewer than two observations")
        cont = unit if r0 is None else torch.cat([torch.tensor([r0 / R0_SCALE], dtype=DTYPE), unit])
        order, mean, std = phase.gp.rank_arms(cont, ALL_ARMS if phase is self.phase0 else TERM_ARMS, top)
        out = []
        for i, m, s in zip(order.tolist(), mean.tolist(), std.tolist(), strict=True):
            arm = arm_of(i)
            out.append(
                Recommendation(
                    arm, arm_label(arm), m, s, 10 ** (-m), (10 ** (-(m + 1.96 * s)), 10 ** (-(m - 1.96 * s)))
                )
            )
        return out

    def landscape(self, contexts: Sequence[Mapping[str, float]], top: int = 5) -> Landscape:
        """The learned policy over G contexts (a slice of the parameter box): the recommended arm
        at each, and mean / std of the posterior reward of the ``top`` arms that matter most there
        (those recommended somewhere, most often first, then the best on average). Phase 0: the
        whole training in single mode, the Adam phase in sequential mode."""
        if not self.phase0.ready:
            raise ValueError("landscape: the surrogate has fewer than two observations")
        units = torch.stack([self.space.encode(c) for c in contexts])
        gp = self.phase0.gp
        surface = gp.surface(units, ALL_ARMS)  # [G, 512]
        best_mean, best = surface.max(dim=1)
        wins = torch.bincount(best, minlength=len(ALL_ARMS))
        by_mean = torch.argsort(surface.mean(dim=0), descending=True)
        order = by_mean[torch.argsort(wins[by_mean], descending=True, stable=True)][:top]  # wins, then mean
        mean, std = gp.band(units, ALL_ARMS, order)
        return Landscape(
            arms=[arm_label(arm_of(i)) for i in order.tolist()],
            mean=mean,
            std=std,
            best=[arm_label(arm_of(i)) for i in best.tolist()],
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
            "policy": {
                "kind": self.policy.kind,
                "arm": self.policy.arm,
                "ucb_schedule": self.policy.ucb_schedule,
                "ucb_coef": self.policy.ucb_coef,
            },
            "seed": self.seed,
            "kernel": self.kernel,
            "gamma": self.gamma,
            "max_exact": self.max_exact,
            "observations": [asdict(o) for o in self.observations] if observations else None,
            "observation_count": self.n_observations,
            "hyperparameters": {
                "phase0": self.phase0.gp.hyperparameters(),
                "phase1": self.phase1.gp.hyperparameters() if self.phase1 is not None else {},
            },
            "rng_state": self.generator.get_state().tolist(),
        }

    @classmethod
    def from_snapshot(cls, snap: Mapping, observations: Sequence[Observation] | None = None) -> BanditEngine:
        """The engine a snapshot describes, conditioned on its observations without a refit.

        ``observations``: given when the snapshot was taken without them; they may be only the most
        recent ``max_exact`` of ``snap["observation_count"]`` (all the GP ever conditions on).
        """
        if snap.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("snapshot: not a metalic policy snapshot")
        p = snap["policy"]
        policy = Policy(p["kind"], tuple(p["arm"]) if p["arm"] is not None else None, p["ucb_schedule"], p["ucb_coef"])
        engine = cls(
            snap["family"],
            snap["mode"],
            policy,
            snap["seed"],
            snap["kernel"],
            snap["gamma"],
            snap["max_exact"],
        )
        engine.phase0.gp.load_hyperparameters(snap["hyperparameters"]["phase0"])
        if engine.phase1 is not None:
            engine.phase1.gp.load_hyperparameters(snap["hyperparameters"]["phase1"])
        if observations is None:
            if snap.get("observations") is None:
                raise ValueError("snapshot: taken without observations; pass them to from_snapshot")
            observations = [
                Observation(
                    o["context"],
                    tuple(o["arm"]),
                    o["reward"],
                    tuple(o["arm_lbfgs"]) if o["arm_lbfgs"] is not None else None,
                    o["reward_phase0"],
                )
                for o in snap["observations"]
            ]
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

"""Policies: how an arm is picked for a training. One registry, ``POLICIES``, holds every name.

A policy is written ``name`` or ``name:argument`` (``ucb``, ``ts``, ``fixed:u,flux``). The CLI,
REST bodies and campaign files call it a heuristic; it is the same thing. Adding a policy is one
class with ``@register``: its ``pick`` chooses q arms from the ``Candidates`` an engine offers
at one parameter point, and its class attributes tell a campaign how to treat it.

- ``learns``: its engine learns from observations (it shares a campaign's random warm-up, and a
  solve may ask for it as ``learned:<name>``);
- ``has_engine``: it needs an engine at all (the single-domain baseline does not).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from metalic.arms import SINGLE_NETWORK_LABEL, Arm
from metalic.bandit.acquisition import conditioned_covariance, gp_ucb_beta, joint_draws

if TYPE_CHECKING:  # the registry itself stays light: no BoTorch import for a list of names
    from metalic.bandit.surrogate import RewardGP

UCB_SCHEDULES = ("constant", "gp-ucb")


@dataclass
class Candidates:
    """The arms a policy picks from at one parameter point (and, in the L-BFGS phase, one Adam-phase
    reward), with what the engine knows there.

    ``rows`` [n, D]: the GP inputs of ``arms``; ``pending_rows`` [p, D]: trainings still running,
    whose results will come (kriging believer: they shrink the variance, not the mean);
    ``repeated``: indices of arms already training at this very point (never picked again);
    ``gp``: None until the surrogate has two observations; ``t``: the round number GP-UCB's weight
    grows with."""

    arms: tuple[Arm, ...]
    rows: Tensor
    gp: RewardGP | None
    generator: torch.Generator
    t: int
    pending_rows: list[Tensor] = field(default_factory=list)
    repeated: list[int] = field(default_factory=list)

    def random(self, q: int) -> list[Arm]:
        """q distinct random arms."""
        order = torch.randperm(len(self.arms), generator=self.generator)[:q]
        return [self.arms[int(i)] for i in order]

    def greedy(self, q: int, score: Callable[[Tensor, Tensor, Tensor | None], Tensor], joint: bool) -> list[Arm]:
        """q arms, each the best by ``score(mean [n], std [n], cov [n, n] | None)`` after
        conditioning on the pending trainings and the arms picked before it. Without pending
        trainings, for q = 1 and a score that needs no covariance (``joint`` False), only the
        marginal variances are computed (no n x n covariance)."""
        n = len(self.arms)
        if q == 1 and not self.pending_rows and not joint:
            mean, std = self.gp.marginal(self.rows)
            return [self.arms[int(torch.argmax(score(mean, std, None)))]]
        x = torch.cat([self.rows, torch.stack(self.pending_rows)]) if self.pending_rows else self.rows
        mean, cov = self.gp.joint(x)
        noise = self.gp.noise_variance
        taken = list(range(n, len(x)))  # pending rows
        chosen = list(self.repeated)
        for _ in range(q):
            cond = conditioned_covariance(cov, taken, noise)
            s = score(mean[:n], cond.diagonal()[:n].clamp_min(0).sqrt(), cond[:n, :n])
            if chosen:
                s[torch.tensor(chosen)] = -math.inf
            best = int(torch.argmax(s))
            chosen.append(best)
            taken.append(best)
        return [self.arms[i] for i in chosen[len(self.repeated) :]]


class Policy:
    """A way to pick arms. ``name`` is the registry key; ``label`` how it is written back."""

    name: ClassVar[str]
    learns: ClassVar[bool] = True
    has_engine: ClassVar[bool] = True

    @classmethod
    def from_text(cls, argument: str, ucb_schedule: str, ucb_coef: float) -> Policy:
        if argument:
            raise ValueError(f"heuristic: {cls.name} takes no argument, got {cls.name}:{argument}")
        return cls()

    @property
    def label(self) -> str:
        return self.name

    def pick(self, candidates: Candidates, q: int) -> list[Arm]:
        """q arms for trainings at the candidates' point (random until the GP has data)."""
        if candidates.gp is None:
            return candidates.random(q)
        return self._pick(candidates, q)

    def _pick(self, candidates: Candidates, q: int) -> list[Arm]:
        raise NotImplementedError

    def to_json(self) -> dict:
        return {"name": self.label}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.label)

    def __repr__(self) -> str:
        return f"Policy({self.label!r})"


POLICIES: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    POLICIES[cls.name] = cls
    return cls


@register
class UCB(Policy):
    """Mean + c std of the posterior reward (c = 1 as the authors, or the GP-UCB schedule)."""

    name = "ucb"

    def __init__(self, schedule: str = "constant", coef: float = 1.0):
        if schedule not in UCB_SCHEDULES:
            raise ValueError(f"ucb_schedule must be 'constant' or 'gp-ucb', got {schedule!r}")
        self.schedule, self.coef = schedule, coef

    @classmethod
    def from_text(cls, argument: str, ucb_schedule: str, ucb_coef: float) -> Policy:
        super().from_text(argument, ucb_schedule, ucb_coef)
        return cls(ucb_schedule, ucb_coef)

    def _pick(self, candidates: Candidates, q: int) -> list[Arm]:
        coef = self.coef if self.schedule == "constant" else gp_ucb_beta(candidates.t)
        return candidates.greedy(q, lambda mean, std, _: mean + coef * std, joint=False)

    def to_json(self) -> dict:
        return {"name": self.name, "ucb_schedule": self.schedule, "ucb_coef": self.coef}


@register
class ThompsonSampling(Policy):
    """One joint draw of the posterior over every candidate arm; the best arm of the draw."""

    name = "ts"

    def _pick(self, candidates: Candidates, q: int) -> list[Arm]:
        gen = candidates.generator
        return candidates.greedy(q, lambda mean, _, cov: joint_draws(mean, cov, 1, gen)[0], joint=True)


@register
class PosteriorMean(Policy):
    """The arm of highest posterior mean (pure exploitation)."""

    name = "mean"

    def _pick(self, candidates: Candidates, q: int) -> list[Arm]:
        return candidates.greedy(q, lambda mean, std, _: mean.clone(), joint=False)


@register
class RandomArm(Policy):
    """Distinct random arms: the baseline every learning policy should beat."""

    name = "random"

    def _pick(self, candidates: Candidates, q: int) -> list[Arm]:
        return candidates.random(q)


@register
class FixedArm(Policy):
    """The same arm every time (``fixed:u,flux``): the baseline of one interface-term set."""

    name = "fixed"
    learns = False

    def __init__(self, arm: Arm):
        self.arm = arm

    @classmethod
    def from_text(cls, argument: str, ucb_schedule: str, ucb_coef: float) -> Policy:
        return cls(Arm.parse(argument, "heuristic fixed arm"))

    @property
    def label(self) -> str:
        return f"fixed:{self.arm.label}"

    def pick(self, candidates: Candidates, q: int) -> list[Arm]:
        if self.arm not in candidates.arms:
            raise ValueError(f"policy: the {self.arm.label} arm cannot start at the L-BFGS phase")
        return [self.arm] * q

    def to_json(self) -> dict:
        return {"name": self.name, "arm": self.arm.label}


@register
class SingleDomain(Policy):
    """The campaign baseline of one network over the whole domain, trained as an unsplit problem
    (no engine: its trainings teach nothing)."""

    name = SINGLE_NETWORK_LABEL
    learns = False
    has_engine = False

    def pick(self, candidates: Candidates, q: int) -> list[Arm]:
        raise ValueError(f"policy: {self.name} is a campaign baseline, not an engine's policy")


def learning_policies() -> tuple[str, ...]:
    """Names a solve can ask for as ``learned:<name>``."""
    return tuple(name for name, cls in POLICIES.items() if cls.learns)


def policy_names() -> tuple[str, ...]:
    """How each registered policy is written (``fixed:<terms>`` for an argument)."""
    return tuple(f"{name}:<terms>" if name == FixedArm.name else name for name in POLICIES)


def parse_policy(text: str, ucb_schedule: str = "constant", ucb_coef: float = 1.0) -> Policy:
    """A policy from its name (ValueError naming the registered ones)."""
    if ucb_schedule not in UCB_SCHEDULES:
        raise ValueError(f"ucb_schedule must be 'constant' or 'gp-ucb', got {ucb_schedule!r}")
    name, _, argument = text.strip().lower().partition(":")
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"heuristic: unknown heuristic {text!r} (one of {', '.join(policy_names())})")
    return cls.from_text(argument, ucb_schedule, ucb_coef)


def policy_from_json(data: dict | str) -> Policy:
    """Back from ``Policy.to_json()``, or from an older snapshot's ``{kind, arm, ucb_schedule, ucb_coef}``."""
    if isinstance(data, str):
        return parse_policy(data)
    if "kind" in data:  # metalic-policy/1
        if data["kind"] == "fixed":
            return FixedArm(Arm.parse(data["arm"]))
        return parse_policy(data["kind"], data.get("ucb_schedule", "constant"), data.get("ucb_coef", 1.0))
    if data["name"] == FixedArm.name:
        return FixedArm(Arm.parse(data["arm"]))
    return parse_policy(data["name"], data.get("ucb_schedule", "constant"), data.get("ucb_coef", 1.0))

"""Encodings shared by the surrogates: PDE parameters to the unit cube, arms to their GP features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache

import torch

from metalic.arms import N_BASE, N_BASE_FEATURES, N_FEATURES, RECIPE_FLAGS, Arm, arm_set, split_arms
from metalic.families.base import Family

DTYPE = torch.float64
N_ARM_FEATURES = N_BASE_FEATURES  # a study without recipe bits: the nine term bits, the single-network bit


def _features(arms: Sequence[Arm]) -> torch.Tensor:
    return torch.tensor([a.features() for a in arms], dtype=DTYPE).reshape(len(arms), N_FEATURES)


# Row i: the features of ``Arm.from_index(i)``, every arm with every recipe [N_BASE * 2^R, N_FEATURES].
_BY_INDEX = _features([Arm.from_index(i) for i in range(N_BASE * 2 ** len(RECIPE_FLAGS))])


def arm_features(arms: Sequence[Arm], width: int = N_ARM_FEATURES) -> torch.Tensor:
    """The GP's arm inputs [m, width] (``Arm.features``, looked up by index): ``width`` =
    ``feature_width(recipe_flags)`` of the study (the term bits, the single-network bit, the
    recipe bits it learns). ValueError for an arm with a recipe bit beyond the width."""
    known = N_BASE * 2 ** (width - N_BASE_FEATURES)  # the arms whose recipe bits fit the width
    bad = next((a for a in arms if a.index >= known), None)
    if bad is not None:
        raise ValueError(f"arm: {bad.label} has a recipe bit this study does not learn")
    return _BY_INDEX[[a.index for a in arms], :width]


def feature_width(recipe_flags: Sequence[str] = ()) -> int:
    return N_BASE_FEATURES + len(recipe_flags)


@cache
def arm_table(recipe_flags: tuple[str, ...] = ()) -> tuple[tuple[Arm, ...], torch.Tensor]:
    """A study's arms (``arms.arm_set``) and their GP inputs [A, feature_width(recipe_flags)]."""
    arms = arm_set(recipe_flags)
    return arms, _BY_INDEX[: len(arms), : feature_width(recipe_flags)].contiguous()


# Every arm's inputs, row i = ``all_arms()[i]`` (the 512 term subsets, then the single network):
# [513, 10]; SPLIT_FEATURES: the 512 term subsets [512, 10].
ALL_FEATURES = arm_table()[1]
SPLIT_FEATURES = arm_features(split_arms())


class ParamSpace:
    """A family's parameters as a point of the unit cube [0, 1]^d (the GP's parameter input, the
    bandit literature's context)."""

    def __init__(self, family: Family):
        self.family = family
        self.lo = torch.tensor([p.lo for p in family.params], dtype=DTYPE)
        self.hi = torch.tensor([p.hi for p in family.params], dtype=DTYPE)

    @property
    def dim(self) -> int:
        return len(self.family.params)

    def encode(self, params: Mapping[str, float]) -> torch.Tensor:
        """Validated parameters -> [d] in [0, 1]. ValueError names the bad field."""
        values = self.family.validate_params(params)
        x = torch.tensor([values[n] for n in self.family.param_names], dtype=DTYPE)
        return (x - self.lo) / (self.hi - self.lo)

    def encode_valid(self, params: Sequence[Mapping[str, float]]) -> torch.Tensor:
        """Already validated (complete) parameter sets -> [n, d] in [0, 1]."""
        names = self.family.param_names
        x = torch.tensor([[p[n] for n in names] for p in params], dtype=DTYPE).reshape(len(params), self.dim)
        return (x - self.lo) / (self.hi - self.lo)

    def decode(self, unit: torch.Tensor) -> dict[str, float]:
        x = self.lo + unit.to(DTYPE) * (self.hi - self.lo)
        return {n: float(v) for n, v in zip(self.family.param_names, x.tolist(), strict=True)}

    def sample(self, n: int, generator: torch.Generator) -> list[dict[str, float]]:
        """n parameter points uniform in the parameter box."""
        return [self.decode(u) for u in torch.rand(n, self.dim, generator=generator, dtype=DTYPE)]

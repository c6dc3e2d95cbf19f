"""Encodings shared by the surrogates: contexts to the unit cube, arms to 0/1 bits."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch

from metalic.conditions import N_TERMS, Arm, parse_arm
from metalic.families.base import Family

DTYPE = torch.float64

# All 2^9 = 512 arms, row i = the bits of i with bit 0 (term "u") first: [512, 9].
ALL_ARMS = torch.tensor(list(itertools.product((0, 1), repeat=N_TERMS)), dtype=DTYPE).flip(-1)


def arm_index(arm: Arm) -> int:
    """Row of ``arm`` in ALL_ARMS."""
    return sum(int(b) << i for i, b in enumerate(arm))


def arm_of(index: int) -> Arm:
    return tuple(int(b) for b in ALL_ARMS[index].tolist())


class ContextSpace:
    """A family's parameters as a point of the unit cube [0, 1]^d (the GP's context input)."""

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

    def decode(self, unit: torch.Tensor) -> dict[str, float]:
        x = self.lo + unit.to(DTYPE) * (self.hi - self.lo)
        return {n: float(v) for n, v in zip(self.family.param_names, x.tolist(), strict=True)}

    def sample(self, n: int, generator: torch.Generator) -> list[dict[str, float]]:
        """n contexts uniform in the parameter box."""
        return [self.decode(u) for u in torch.rand(n, self.dim, generator=generator, dtype=DTYPE)]


def check_arm(arm: Arm | Sequence[int] | str, field: str = "arm") -> Arm:
    """parse_arm with the field's name in the error."""
    try:
        return parse_arm(arm)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None

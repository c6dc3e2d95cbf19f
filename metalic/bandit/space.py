"""Encodings shared by the surrogates: contexts to the unit cube, arms to 0/1 bits."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch

from metalic.conditions import N_TERMS, SINGLE_NETWORK, Arm, is_single_network, parse_arm
from metalic.families.base import Family

DTYPE = torch.float64
N_ARM_FEATURES = N_TERMS + 1  # the nine term bits and the single-network bit

# The 2^9 = 512 term subsets, row i = the bits of i with bit 0 (term "u") first, and a tenth
# column that is 0 for them: [512, 10]; ALL_ARMS adds the single-network arm as row 512: [513, 10].
TERM_ARMS = torch.cat(
    [
        torch.tensor(list(itertools.product((0, 1), repeat=N_TERMS)), dtype=DTYPE).flip(-1),
        torch.zeros(2**N_TERMS, 1, dtype=DTYPE),
    ],
    dim=1,
)
SINGLE_INDEX = 2**N_TERMS
ALL_ARMS = torch.cat([TERM_ARMS, torch.tensor([SINGLE_NETWORK], dtype=DTYPE)])


def arm_index(arm: Arm) -> int:
    """Row of ``arm`` in ALL_ARMS."""
    if is_single_network(arm):
        return SINGLE_INDEX
    return sum(int(b) << i for i, b in enumerate(arm[:N_TERMS]))


def arm_of(index: int) -> Arm:
    return SINGLE_NETWORK if index == SINGLE_INDEX else tuple(int(b) for b in ALL_ARMS[index, :N_TERMS].tolist())


def arm_features(arms: Sequence[Arm]) -> torch.Tensor:
    """The GP's arm inputs: [m, 10] (nine term bits, then the single-network bit)."""
    return ALL_ARMS[[arm_index(a) for a in arms]]


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

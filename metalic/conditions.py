"""The interface-term catalogue. An arm is a 0/1 mask over these nine terms.

Every term is a pure function of per-side quantities on the interface points, written with the
interface normal n (unit vector along one coordinate axis, from side a to side b) and tangent tau:

| bit | name           | term (mean over interface points, summed over interfaces)        |
|-----|----------------|------------------------------------------------------------------|
| 0   | u              | (u_a - u_b)^2                                                    |
| 1   | uavg           | (u_a - m)^2 + (u_b - m)^2, m = (u_a + u_b) / 2                   |
| 2   | res            | r_a^2 + r_b^2 (each side's PDE residual)                         |
| 3   | res_continuity | (r_a - r_b)^2                                                    |
| 4   | flux           | (F_a . n - F_b . n)^2, F the family's flux vector, else grad u   |
| 5   | uyy            | (d2u_a/dn2 - d2u_b/dn2)^2                                        |
| 6   | gres           | abs(grad r_a)^2 + abs(grad r_b)^2                                |
| 7   | ux             | (du_a/dtau - du_b/dtau)^2                                        |
| 8   | uxx            | (d2u_a/dtau2 - d2u_b/dtau2)^2                                    |

The names are the authors'. For interfaces y = const or t = const (every family's default split
but Burgers') the normal is the second coordinate, so these equal the authors' terms exactly. For
Burgers' interfaces x = +-0.1 the authors' ``uyy``, ``ux``, ``uxx`` are jumps of u_tt, u_x, u_xx;
here they are the normal / tangential ones, i.e. jumps of u_xx, u_t, u_tt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Term:
    bit: int
    name: str
    formula: str
    needs: tuple[str, ...]  # side quantities: u, r, f_n, u_nn, grad_r_sq, u_tau, u_tautau
    value: Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]


def _jump_sq(q: str) -> Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]:
    return lambda a, b: (a[q] - b[q]) ** 2


def _uavg(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    m = 0.5 * (a["u"] + b["u"])
    return (a["u"] - m) ** 2 + (b["u"] - m) ** 2


TERMS: tuple[Term, ...] = (
    Term(0, "u", "(u_a - u_b)^2", ("u",), _jump_sq("u")),
    Term(1, "uavg", "(u_a - m)^2 + (u_b - m)^2, m = (u_a + u_b)/2", ("u",), _uavg),
    Term(2, "res", "r_a^2 + r_b^2", ("r",), lambda a, b: a["r"] ** 2 + b["r"] ** 2),
    Term(3, "res_continuity", "(r_a - r_b)^2", ("r",), _jump_sq("r")),
    Term(4, "flux", "(F_a.n - F_b.n)^2", ("f_n",), _jump_sq("f_n")),
    Term(5, "uyy", "(u_nn,a - u_nn,b)^2", ("u_nn",), _jump_sq("u_nn")),
    Term(
        6, "gres", "|grad r_a|^2 + |grad r_b|^2", ("grad_r_sq",), lambda a, b: a["grad_r_sq"] + b["grad_r_sq"]
    ),
    Term(7, "ux", "(u_tau,a - u_tau,b)^2", ("u_tau",), _jump_sq("u_tau")),
    Term(8, "uxx", "(u_tautau,a - u_tautau,b)^2", ("u_tautau",), _jump_sq("u_tautau")),
)
N_TERMS = len(TERMS)
TERM_NAMES = tuple(t.name for t in TERMS)

Arm = tuple[int, ...]


def parse_arm(spec: str | Sequence[int] | Sequence[bool]) -> Arm:
    """An arm from names (``"u,flux,res_continuity"``), a 9-character bit string (``"100010000"``,
    bit i = term i), ``"all"``, ``"none"``, or a sequence of 9 zeros and ones.

    Raises ValueError naming the bad element.
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("all", "*"):
            return (1,) * N_TERMS
        if text in ("none", ""):
            return (0,) * N_TERMS
        if len(text) == N_TERMS and set(text) <= {"0", "1"}:
            return tuple(int(c) for c in text)
        bits = [0] * N_TERMS
        for name in (n.strip() for n in text.split(",")):
            if name not in TERM_NAMES:
                raise ValueError(f"unknown interface term {name!r} (terms: {', '.join(TERM_NAMES)})")
            bits[TERM_NAMES.index(name)] = 1
        return tuple(bits)
    bits = list(spec)
    if len(bits) != N_TERMS:
        raise ValueError(f"an arm has {N_TERMS} bits, got {len(bits)}")
    if any(int(b) not in (0, 1) or int(b) != b for b in bits):
        raise ValueError("arm bits must be 0 or 1")
    return tuple(int(b) for b in bits)


def arm_label(arm: Arm) -> str:
    """Comma-separated names of the switched-on terms, ``none`` for the empty arm."""
    names = [t.name for t, bit in zip(TERMS, arm, strict=True) if bit]
    return ",".join(names) if names else "none"


def needed_quantities(arms: Sequence[Arm]) -> set[str]:
    """Side quantities that the union of ``arms`` needs."""
    out: set[str] = set()
    for t in TERMS:
        if any(arm[t.bit] for arm in arms):
            out.update(t.needs)
    return out

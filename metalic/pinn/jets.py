"""Forward propagation of partial derivatives ("jets") through tanh layers in closed form.

A jet is the list of tensors D^alpha v for the multi-indices of a fixed, downward-closed set
(alpha = (i, j) means d^i/dx0^i d^j/dx1^j). Linear layers act on every component alike; tanh is
pushed through with the multivariate Faa di Bruno formula

    D^alpha tanh(z) = sum over set partitions P of alpha's directions:
                      tanh^(|P|)(z) * prod_{B in P} D^{alpha_B} z,

with tanh^(m) a polynomial in y = tanh(z) (tanh' = 1 - y^2, ...). Partitions giving the same
product are merged with a count. Only the requested derivatives are computed, and components
known to be zero (``None``: second and higher derivatives of the first, affine layer) are
skipped, so the first layer costs little more than a plain forward pass. This replaces nested
reverse-mode autograd calls, which rebuild a graph per derivative order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from torch import Tensor

MultiIndex = tuple[int, int]


def downward_closure(indices: Iterable[MultiIndex]) -> list[MultiIndex]:
    """All beta <= alpha for the given alphas, sorted by total order then lexicographically."""
    out = {(i, j) for a, b in indices for i in range(a + 1) for j in range(b + 1)}
    out.add((0, 0))
    return sorted(out, key=lambda m: (m[0] + m[1], m))


def _set_partitions(items: list[int]):
    """All set partitions of ``items`` (positions), as lists of blocks."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _set_partitions(rest):
        yield [[first], *partition]
        for k in range(len(partition)):
            yield [*partition[:k], [first, *partition[k]], *partition[k + 1 :]]


def faa_di_bruno(alpha: MultiIndex) -> dict[int, Counter]:
    """For D^alpha f(z): {m: Counter{sorted tuple of block multi-indices: count}}."""
    directions = [0] * alpha[0] + [1] * alpha[1]
    out: dict[int, Counter] = {}
    for partition in _set_partitions(list(range(len(directions)))):
        blocks = []
        for block in partition:
            n0 = sum(1 for p in block if directions[p] == 0)
            blocks.append((n0, len(block) - n0))
        out.setdefault(len(partition), Counter())[tuple(sorted(blocks))] += 1
    return out


def tanh_derivative_polys(order: int) -> list[np.ndarray]:
    """Coefficients (ascending powers of y) of d^m tanh / dz^m as polynomials in y = tanh z."""
    polys = [np.array([0.0, 1.0])]  # y
    one_minus_y2 = np.array([1.0, 0.0, -1.0])
    for _ in range(order):
        p = polys[-1]
        dp = np.array([i * p[i] for i in range(1, len(p))]) if len(p) > 1 else np.zeros(1)
        polys.append(np.polynomial.polynomial.polymul(dp, one_minus_y2))
    return polys


class TanhJet:
    """Precomputed Faa di Bruno rules for tanh over a downward-closed multi-index set."""

    def __init__(self, indices: Sequence[MultiIndex]):
        self.indices = downward_closure(indices)
        self.position = {m: k for k, m in enumerate(self.indices)}
        self.rules = {alpha: faa_di_bruno(alpha) for alpha in self.indices[1:]}
        self.max_order = max(sum(a) for a in self.indices)
        self.polys = [[float(c) for c in p] for p in tanh_derivative_polys(self.max_order)]

    def __call__(self, z: Sequence[Tensor | None]) -> list[Tensor]:
        """``z[k]`` is D^{indices[k]} of the pre-activation (``None`` for zero); returns tanh's jet."""
        pos = self.position
        y = z[0].tanh()
        powers = {0: None, 1: y}

        def power(n: int) -> Tensor:
            if n not in powers:
                powers[n] = power(n - 1) * y
            return powers[n]

        sigma: dict[int, Tensor] = {}

        def sigma_of(m: int) -> Tensor:
            if m not in sigma:
                total = None
                for n, c in enumerate(self.polys[m]):
                    if c == 0:
                        continue
                    term = power(n) * c if n > 0 else None
                    if term is None:
                        total = c + (total if total is not None else 0)
                    else:
                        total = term if total is None else total + term
                sigma[m] = total
            return sigma[m]

        out = [y]
        for alpha in self.indices[1:]:
            total = None
            for m, products in self.rules[alpha].items():
                inner = None
                for blocks, count in products.items():
                    factors = [z[pos[b]] for b in blocks]
                    if any(f is None for f in factors):
                        continue
                    prod = factors[0]
                    for f in factors[1:]:
                        prod = prod * f
                    if count != 1:
                        prod = count * prod
                    inner = prod if inner is None else inner + prod
                if inner is None:
                    continue
                term = sigma_of(m) * inner
                total = term if total is None else total + term
            out.append(total if total is not None else 0 * y)
        return out

"""The Burgers reference grid (Hopf-Cole, 256 x 101, 1,000 quadrature nodes) against the earlier
implementation, kept here as the same-run baseline: three log-sum-exps per time on freshly
allocated [256, 1000] arrays. Values must agree to 1e-12.

    python benchmarks/reference_speed.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import describe

from metalic.families.solvers import burgers_hopf_cole


def baseline(nu: float, x: np.ndarray, t: np.ndarray, nodes: int = 1000) -> np.ndarray:
    out = np.empty((len(x), len(t)))
    for j, tj in enumerate(t):
        if tj <= 0:
            out[:, j] = -np.sin(np.pi * x)
            continue
        radius = np.sqrt(4 * tj / np.pi + 160 * nu * tj) + 0.05
        eta = np.linspace(-radius, radius, nodes)
        y = x[:, None] - eta[None, :]
        log_w = -(eta[None, :] ** 2) / (4 * nu * tj) - np.cos(np.pi * y) / (2 * np.pi * nu)
        s = np.sin(np.pi * y)
        log_den = logsumexp(log_w, axis=1)
        num_pos = logsumexp(log_w, b=np.clip(s, 0, None), axis=1)
        num_neg = logsumexp(log_w, b=np.clip(-s, 0, None), axis=1)
        out[:, j] = -(np.exp(num_pos - log_den) - np.exp(num_neg - log_den))
    return out


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    print(f"machine: {describe(torch.device('cpu'))}")
    x, t = np.linspace(-1, 1, 256), np.linspace(0, 1, 101)
    print("| nu | baseline s | now s | speed-up | max abs difference |")
    print("|---|---|---|---|---|")
    for nu in (0.001, 0.01, 0.05):
        diff = np.abs(baseline(nu, x, t) - burgers_hopf_cole(nu, x, t)).max()
        assert diff < 1e-12, diff
        old = best_of(lambda nu=nu: baseline(nu, x, t))
        new = best_of(lambda nu=nu: burgers_hopf_cole(nu, x, t))
        print(f"| {nu} | {old:.3f} | {new:.3f} | {old / new:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()

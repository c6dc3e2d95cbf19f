"""Error of the stitched multi-domain solution against the reference grid, and the bandit reward."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from metalic.domain import Decomposition
from metalic.pinn.network import StackedMLP

ERROR_CAP = 100.0  # a NaN or larger relative error is recorded as this (reference §1)


@dataclass(frozen=True)
class Metrics:
    """relative L2 and max abs error on the reference grid; reward = -log10(capped relative L2)."""

    rel_l2: float
    max_abs: float
    reward: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def capped_error(rel_l2: float) -> float:
    """NaN or anything above ERROR_CAP becomes ERROR_CAP; a tiny floor keeps the log finite."""
    if rel_l2 is None or not math.isfinite(rel_l2) or rel_l2 > ERROR_CAP:
        return ERROR_CAP
    return max(rel_l2, 1e-16)


def outcome_error(rel_l2: float | None, status: str) -> float:
    """The error a training counts for in accumulated errors: capped, and the cap itself for a
    diverged run (whatever its frozen weights score)."""
    return ERROR_CAP if status == "diverged" else capped_error(rel_l2)


def reward_of(rel_l2: float) -> float:
    """-log10 of the capped relative L2 error (>= -2)."""
    return -math.log10(capped_error(rel_l2))


@torch.no_grad()
def predict_stitched(net: StackedMLP, decomposition: Decomposition, points: np.ndarray) -> np.ndarray:
    """Each point evaluated by the network of the subdomain owning it: ``points`` [N, 2] -> [K, N]."""
    owner = decomposition.locate(points)
    s_count = decomposition.n_subdomains
    counts = np.bincount(owner, minlength=s_count)
    width = max(int(counts.max()), 1)
    x = np.zeros((s_count, width, 2))
    slot = np.zeros(len(points), dtype=np.int64)
    for s in range(s_count):
        idx = np.nonzero(owner == s)[0]
        x[s, : len(idx)] = points[idx]
        slot[idx] = np.arange(len(idx))
    ref = net.theta
    xt = torch.as_tensor(x, device=ref.device, dtype=ref.dtype).expand(net.n_runs, -1, -1, -1)
    u = net(xt).double().cpu().numpy()  # [K, S, width]
    return u[:, owner, slot]


def metrics_of(prediction: np.ndarray, reference: np.ndarray) -> Metrics:
    """``prediction``, ``reference``: same shape, any; non-finite predictions give the capped reward."""
    diff = prediction - reference
    rel = float(np.linalg.norm(diff) / max(np.linalg.norm(reference), 1e-300))
    if not np.isfinite(rel):
        rel = math.nan
    max_abs = float(np.max(np.abs(diff))) if np.all(np.isfinite(diff)) else math.nan
    return Metrics(rel_l2=rel, max_abs=max_abs, reward=reward_of(rel))


def error_over_time(prediction: np.ndarray, reference: np.ndarray, time_axis: int) -> np.ndarray:
    """The error at each time of the reference grid: e(t) = RMS over the other coordinates of
    (prediction - reference) at t, divided by the RMS of the whole reference. [n_t]; the overall
    rel. L2 is the RMS of e(t) over t, so e(t) shows where in time the error comes from."""
    diff = np.moveaxis(np.asarray(prediction, float) - np.asarray(reference, float), time_axis, -1)
    rows = np.sqrt(np.mean(diff.reshape(-1, diff.shape[-1]) ** 2, axis=0))
    return rows / max(float(np.sqrt(np.mean(np.asarray(reference, float) ** 2))), 1e-300)

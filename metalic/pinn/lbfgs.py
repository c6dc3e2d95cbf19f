"""Batched L-BFGS: K independent minimisations of f_k(theta_k) in lockstep.

Per run, this is the algorithm of ``torch.optim.LBFGS`` without line search (fixed step ``lr``,
first step scaled by min(1, 1/|g|_1)), with the same curvature test, history and stopping
tolerances, so a batch of one reproduces it. Each run keeps its own history, step and stop
reason; a stopped run's weights stay fixed while the others continue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# Stop reasons, per run.
RUNNING = "running"
MAX_ITER = "max_iter"
TOL_GRAD = "tolerance_grad"
TOL_STEP = "tolerance_change_step"
TOL_LOSS = "tolerance_change_loss"
NO_DESCENT = "no_descent_direction"
DIVERGED = "diverged"
CANCELLED = "cancelled"


@dataclass
class LbfgsResult:
    iterations: list[int]  # iterations performed per run
    reasons: list[str]  # why each run stopped


def batched_lbfgs(
    closure: Callable[[Tensor], tuple[Tensor, Tensor]],
    theta: Tensor,
    max_iter: int,
    lr: float = 0.1,
    history: int = 50,
    tolerance_grad: float = 1e-9,
    tolerance_change: float = 1e-12,
    active: Tensor | None = None,
    callback: Callable[[int, Tensor], Tensor | None] | None = None,
) -> LbfgsResult:
    """Minimise in place. ``theta`` [K, n]; ``closure(theta) -> (loss [K], grad [K, n])``.

    ``active`` [K] bool marks runs to optimise (others are left untouched and reported
    ``diverged``). A run whose loss or gradient turns non-finite stops with ``diverged`` and its
    last finite weights. ``callback(iteration, loss [K])`` runs after every iteration; it may
    return a bool mask [K] of runs to stop now (reason ``cancelled``).
    """
    k, n = theta.shape
    dev, dt = theta.device, theta.dtype
    active = torch.ones(k, dtype=torch.bool, device=dev) if active is None else active.clone()
    reasons = [RUNNING if a else DIVERGED for a in active.tolist()]
    iterations = [0] * k
    if max_iter <= 0:
        return LbfgsResult(iterations, [MAX_ITER if r == RUNNING else r for r in reasons])

    ys_hist = torch.zeros(k, history, n, device=dev, dtype=dt)  # y_i = g_{i+1} - g_i
    ss_hist = torch.zeros(k, history, n, device=dev, dtype=dt)  # s_i = step
    ro = torch.zeros(k, history, device=dev, dtype=dt)
    count = torch.zeros(k, dtype=torch.long, device=dev)  # stored pairs
    head = torch.zeros(k, dtype=torch.long, device=dev)  # next slot to write
    h_diag = torch.ones(k, device=dev, dtype=dt)
    rows = torch.arange(k, device=dev)

    def stop(mask: Tensor, reason: str) -> None:
        for j in torch.nonzero(mask & active).flatten().tolist():
            reasons[j] = reason
        active.logical_and_(~mask)

    loss, g = closure(theta)
    stop(~torch.isfinite(loss) | ~torch.isfinite(g).all(-1), DIVERGED)
    stop(g.abs().amax(-1) <= tolerance_grad, TOL_GRAD)
    d = -g
    t = torch.zeros(k, device=dev, dtype=dt)
    prev_g, prev_loss = g, loss
    for it in range(1, max_iter + 1):
        if not active.any():
            break
        if it > 1:
            y = g - prev_g
            s = d * t[:, None]
            ys = (y * s).sum(-1)
            accept = active & (ys > 1e-10)
            if accept.any():
                idx = rows[accept]
                slot = head[accept]
                ys_hist[idx, slot] = y[accept]
                ss_hist[idx, slot] = s[accept]
                ro[idx, slot] = 1.0 / ys[accept]
                h_diag = torch.where(accept, ys / (y * y).sum(-1), h_diag)
                head = torch.where(accept, (head + 1) % history, head)
                count = torch.where(accept, (count + 1).clamp_max(history), count)
            # two-loop recursion, newest pair first
            q = -g
            alphas = []
            for i in range(history):
                valid = (i < count).to(dt)
                if not valid.any():
                    break
                slot = (head - 1 - i) % history
                s_i, y_i, ro_i = ss_hist[rows, slot], ys_hist[rows, slot], ro[rows, slot] * valid
                al = ro_i * (s_i * q).sum(-1)
                q = q - al[:, None] * y_i
                alphas.append((slot, al, ro_i))
            r = q * h_diag[:, None]
            for slot, al, ro_i in reversed(alphas):
                s_i, y_i = ss_hist[rows, slot], ys_hist[rows, slot]
                be = ro_i * (y_i * r).sum(-1)
                r = r + s_i * (al - be)[:, None]
            d = torch.where(active[:, None], r, d)
        prev_g, prev_loss = g, loss
        t = torch.clamp(1.0 / g.abs().sum(-1), max=1.0) * lr if it == 1 else torch.full_like(t, lr)
        gtd = (g * d).sum(-1)
        stop(gtd > -tolerance_change, NO_DESCENT)
        if not active.any():
            break
        step = torch.where(active[:, None], d * t[:, None], torch.zeros_like(d))
        with torch.no_grad():
            theta.add_(step)
        for j in torch.nonzero(active).flatten().tolist():
            iterations[j] = it
        loss, g = closure(theta)
        bad = active & (~torch.isfinite(loss) | ~torch.isfinite(g).all(-1))
        if bad.any():
            with torch.no_grad():  # back to the last finite weights
                theta.sub_(torch.where(bad[:, None], step, torch.zeros_like(step)))
            stop(bad, DIVERGED)
        if callback is not None:
            cancel = callback(it, loss)
            if cancel is not None:
                stop(cancel.to(active.device), CANCELLED)
                if not active.any():
                    break
        if it == max_iter:
            stop(active, MAX_ITER)
            break
        stop(g.abs().amax(-1) <= tolerance_grad, TOL_GRAD)
        stop(step.abs().amax(-1) <= tolerance_change, TOL_STEP)
        stop((loss - prev_loss).abs() < tolerance_change, TOL_LOSS)
    for j, r in enumerate(reasons):
        if r == RUNNING:
            reasons[j] = MAX_ITER
    return LbfgsResult(iterations, reasons)

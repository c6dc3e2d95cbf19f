"""Batched L-BFGS: K independent minimisations of f_k(theta_k) in lockstep.

Per run, this is the algorithm of ``torch.optim.LBFGS`` without line search (fixed step ``lr``,
first step scaled by min(1, 1/|g|_1)), with the same curvature test, history and stopping
tolerances, so a batch of one reproduces it. Each run keeps its own history, step and stop
reason; a stopped run's weights stay fixed while the others continue.

A fixed step has no defence against a step that lands far uphill: on a stiff PINN loss one such
step can throw a run's loss up by orders of magnitude, or to NaN, after which it never recovers
(``docs/results.md``: every diverged training of the campaign benchmarks diverged that way, in
L-BFGS). ``step_guard`` > 0 rejects a step whose loss is non-finite or above ``step_guard`` times
the loss before it: the run goes back to where it was, forgets its curvature pairs (a restart,
scaled as torch's first step) and halves its step; an accepted step doubles it back towards
``lr``. A run whose step falls below lr / 2**``GIVE_UP_HALVINGS`` stops ``step_rejected`` with
its last accepted weights. ``step_guard = 0`` is torch's algorithm exactly.
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
STEP_REJECTED = "step_rejected"  # the guard shrank the step below lr / 2**GIVE_UP_HALVINGS

GIVE_UP_HALVINGS = 12  # a guarded run stops once its step is below lr / 2**12


@dataclass
class LbfgsResult:
    iterations: list[int]  # iterations performed per run (rejected steps included)
    reasons: list[str]  # why each run stopped
    rejected: list[int] | None = None  # steps the guard rejected per run (None: no guard)


def _inverse_hessian_times(
    g: Tensor, ss_hist: Tensor, ys_hist: Tensor, head: Tensor, count: Tensor, h_diag: Tensor, stored: int
) -> Tensor:
    """H g for every run [K, n], H the L-BFGS inverse-Hessian approximation of its history.

    The compact form (Byrd, Nocedal and Schnabel 1994): with the run's pairs S, Y [m, n] in
    chronological order, gamma = ``h_diag``, R the upper triangle of S Y^T and D its diagonal,
    H g = gamma g + S^T p1 + gamma Y^T p2 with p2 = -R^-1 (S g) and
    p1 = R^-T ((D + gamma Y Y^T) R^-1 (S g) - gamma Y g). It equals the two-loop recursion of
    ``torch.optim.LBFGS`` (tested to 1e-10 in float64) in about 20 batched operations instead of
    about 10 per stored pair, which on a CPU made the L-BFGS step cost as much as the loss.
    ``stored``: a bound on every run's pair count, known on the host (no read of ``count``); runs
    with fewer pairs are padded with zero pairs whose R diagonal is 1: they add nothing.
    """
    history, n = ss_hist.shape[1:]
    m = stored
    gamma = h_diag[:, None]
    if m == 0:
        return gamma * g
    i = torch.arange(m, device=g.device)
    valid = i[None, :] < count[:, None]  # [K, m]
    order = ((head[:, None] - count[:, None] + i[None, :]) % history).clamp_min(0)  # oldest first
    pick = order[:, :, None].expand(-1, -1, n)
    mask = valid[:, :, None].to(g.dtype)
    s_mat = ss_hist.gather(1, pick) * mask  # [K, m, n]
    y_mat = ys_hist.gather(1, pick) * mask
    sy = s_mat @ y_mat.transpose(1, 2)  # [K, m, m]: s_i . y_j
    eye = torch.eye(m, device=g.device, dtype=g.dtype)
    r = torch.triu(sy) + eye * (~valid)[:, None, :].to(g.dtype)
    d_diag = torch.diagonal(sy, dim1=1, dim2=2)  # [K, m] (0 for padding)
    a = s_mat @ g[:, :, None]  # [K, m, 1]
    b = gamma[:, :, None] * (y_mat @ g[:, :, None])
    r_inv_a = torch.linalg.solve_triangular(r, a, upper=True)
    t = d_diag[:, :, None] * r_inv_a + gamma[:, :, None] * (y_mat @ (y_mat.transpose(1, 2) @ r_inv_a)) - b
    p1 = torch.linalg.solve_triangular(r.transpose(1, 2), t, upper=False)
    p2 = -r_inv_a
    return gamma * g + (s_mat.transpose(1, 2) @ p1)[:, :, 0] + gamma * (y_mat.transpose(1, 2) @ p2)[:, :, 0]


def _propose(
    g: Tensor, prev_g: Tensor, d: Tensor, t: Tensor, theta: Tensor, ys_hist: Tensor, ss_hist: Tensor, head: Tensor,
    count: Tensor, h_diag: Tensor, active: Tensor, reason: Tensor, iterations: Tensor, it: Tensor, lr: float,
    tolerance_change: float, stored: int, scale: Tensor,
) -> tuple[Tensor, ...]:  # fmt: skip
    """Iteration ``it`` > 1 up to the closure: the last step's curvature pair into the history (the
    free ring slot at ``head``, written unconditionally; only an accepted pair advances ``head``),
    the new direction, the descent test and the step, taken on ``theta`` in place. Tensors in,
    tensors out, so that it can be compiled as one graph (``stored`` is then the history size).
    ``scale`` [K]: each run's step as a fraction of ``lr`` (all 1 without the guard).
    Returns (d, t, step, before, active, reason, iterations, head, count, h_diag)."""
    history = ys_hist.shape[1] - 1
    rows = torch.arange(g.shape[0], device=g.device)
    y = g - prev_g
    s = d * t[:, None]
    ys = (y * s).sum(-1)
    accept = active & (ys > 1e-10)
    ys_hist[rows, head] = y
    ss_hist[rows, head] = s
    h_diag = torch.where(accept, ys / (y * y).sum(-1), h_diag)
    head = torch.where(accept, (head + 1) % (history + 1), head)
    count = torch.where(accept, (count + 1).clamp_max(history), count)
    direction = _inverse_hessian_times(g, ss_hist, ys_hist, head, count, h_diag, stored)
    d = torch.where(active[:, None], -direction, d)
    t = lr * scale
    return (d, t, *_take_step(g, d, t, theta, active, reason, iterations, it, tolerance_change), head, count, h_diag)


def _take_step(
    g: Tensor, d: Tensor, t: Tensor, theta: Tensor, active: Tensor, reason: Tensor, iterations: Tensor, it: Tensor,
    tolerance_change: float,
) -> tuple[Tensor, ...]:  # fmt: skip
    """The descent test (a run whose direction does not descend stops), then ``theta`` += t d for
    the runs still active. Returns (step, before, active, reason, iterations); ``before`` is
    ``theta`` as it was, to restore exactly (theta + step - step is not theta)."""
    no_descent = active & ((g * d).sum(-1) > -tolerance_change)
    reason = torch.where(no_descent, _CODE[NO_DESCENT], reason)
    active = active & ~no_descent
    step = torch.where(active[:, None], d * t[:, None], torch.zeros_like(d))
    before = theta.clone()
    theta.add_(step)
    iterations = torch.where(active, it, iterations)
    return step, before, active, reason, iterations


def _settle(
    theta: Tensor, before: Tensor, loss: Tensor, g: Tensor, prev_loss: Tensor, step: Tensor, active: Tensor,
    reason: Tensor, iterations: Tensor, it: Tensor, tolerance_grad: float, tolerance_change: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """After the closure of iteration ``it``: a run whose loss or gradient turned non-finite goes
    back to its last finite weights, that step not counted, and stops ``diverged``; then the three
    tolerance tests. Returns (active, reason, iterations)."""
    bad = active & (~torch.isfinite(loss) | ~torch.isfinite(g).all(-1))
    theta.copy_(torch.where(bad[:, None], before, theta))
    iterations = torch.where(bad, it - 1, iterations)
    reason = torch.where(bad, _CODE[DIVERGED], reason)
    active, reason = _tolerance_stops(loss, g, prev_loss, step, active & ~bad, reason, tolerance_grad, tolerance_change)
    return active, reason, iterations


def _tolerance_stops(
    loss: Tensor, g: Tensor, prev_loss: Tensor, step: Tensor, active: Tensor, reason: Tensor, tolerance_grad: float,
    tolerance_change: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``torch.optim.LBFGS``'s three tolerance tests, in its order, for the ``active`` runs.
    Returns (active, reason)."""
    code = torch.where((loss - prev_loss).abs() < tolerance_change, _CODE[TOL_LOSS], 0)
    code = torch.where(step.abs().amax(-1) <= tolerance_change, _CODE[TOL_STEP], code)
    code = torch.where(g.abs().amax(-1) <= tolerance_grad, _CODE[TOL_GRAD], code)
    ended = active & (code > 0)
    return active & ~ended, torch.where(ended, code, reason)


def _guarded_settle(
    theta: Tensor, before: Tensor, loss: Tensor, g: Tensor, prev_loss: Tensor, prev_g: Tensor, step: Tensor,
    active: Tensor, reason: Tensor, tolerance_grad: float, tolerance_change: float, scale: Tensor, count: Tensor,
    h_diag: Tensor, rejected: Tensor, step_guard: float,
) -> tuple[Tensor, ...]:  # fmt: skip
    """``_settle`` behind the step guard: a step whose loss is non-finite or above ``step_guard``
    times the loss before it is undone (``theta``, loss and gradient back to ``before``), the run's
    curvature pairs are dropped with ``h_diag`` set to torch's first-step scale min(1, 1/|g|_1),
    and its step is halved; an accepted step doubles it, up to 1. A rejected run stays active (no
    tolerance test: its loss did not change) unless its step has fallen below
    2**-GIVE_UP_HALVINGS, then it stops ``step_rejected``; the accepted ones take the tolerance
    tests. Returns (loss, g, active, reason, scale, count, h_diag, rejected)."""
    bad = active & (~torch.isfinite(loss) | ~torch.isfinite(g).all(-1) | (loss > step_guard * prev_loss))
    theta.copy_(torch.where(bad[:, None], before, theta))
    loss = torch.where(bad, prev_loss, loss)
    g = torch.where(bad[:, None], prev_g, g)
    restart = torch.clamp(1.0 / prev_g.abs().sum(-1), max=1.0)
    count = torch.where(bad, 0, count)
    h_diag = torch.where(bad, restart, h_diag)
    scale = torch.where(bad, scale * 0.5, torch.where(active, (scale * 2.0).clamp_max(1.0), scale))
    rejected = rejected + bad.to(rejected.dtype)
    accepted, reason = _tolerance_stops(loss, g, prev_loss, step, active & ~bad, reason, tolerance_grad,
                                        tolerance_change)  # fmt: skip
    give_up = bad & (scale < 2.0**-GIVE_UP_HALVINGS)
    reason = torch.where(give_up, _CODE[STEP_REJECTED], reason)
    return loss, g, accepted | (bad & ~give_up), reason, scale, count, h_diag, rejected


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
    check_every: int = 25,
    compile_steps: bool = False,
    step_guard: float = 0.0,
) -> LbfgsResult:
    """Minimise in place. ``theta`` [K, n]; ``closure(theta) -> (loss [K], grad [K, n])``.

    ``active`` [K] bool marks runs to optimise (others are left untouched and reported
    ``diverged``). A run whose loss or gradient turns non-finite stops with ``diverged`` and its
    last finite weights. ``callback(iteration, loss [K])`` runs after every iteration; it may
    return a bool mask [K] of runs to stop now (reason ``cancelled``, unless the run stopped for
    another reason at that iteration).

    No value is read back to the host inside the loop: stop reasons and iteration counts are
    device tensors (read once at the end), history writes go to a free ring slot unconditionally, and
    whether any run is still active is asked only every ``check_every`` iterations (a stopped run
    is masked out meanwhile, so the results do not depend on it).

    ``compile_steps``: run the work around the closure (history, direction, step; the checks
    after it) as two ``torch.compile``d graphs, with every run's history padded to its full size
    (padding pairs add nothing). About 140 small operations per iteration become two calls.

    ``step_guard``: 0 for torch's fixed step; > 0 rejects a step that raises a run's loss above
    that factor (or to a non-finite value) and halves that run's step (module docstring).
    """
    k, n = theta.shape
    dev, dt = theta.device, theta.dtype
    active = torch.ones(k, dtype=torch.bool, device=dev) if active is None else active.clone().to(dev)
    reason = torch.where(active, 0, _CODE[DIVERGED])  # [K] codes into _REASONS (0: running)
    iterations = torch.zeros(k, dtype=torch.long, device=dev)
    if max_iter <= 0:
        return _result(iterations, torch.where(reason == 0, _CODE[MAX_ITER], reason))
    propose, settle, guarded_settle = _compiled_steps() if compile_steps else (_propose, _settle, _guarded_settle)

    # A ring of history + 1 slots: the slot at ``head`` never holds a stored pair.
    ys_hist = torch.zeros(k, history + 1, n, device=dev, dtype=dt)  # y_i = g_{i+1} - g_i
    ss_hist = torch.zeros(k, history + 1, n, device=dev, dtype=dt)  # s_i = step
    count = torch.zeros(k, dtype=torch.long, device=dev)  # stored pairs (at most ``history``)
    head = torch.zeros(k, dtype=torch.long, device=dev)  # next slot to write
    h_diag = torch.ones(k, device=dev, dtype=dt)
    scale = torch.ones(k, device=dev, dtype=dt)  # each run's step as a fraction of lr (the guard's)
    rejected = torch.zeros(k, dtype=torch.long, device=dev)  # steps the guard undid

    loss, g, active, reason = _first_evaluation(closure, theta, active, reason, tolerance_grad)
    d, prev_g = -g, g
    t = torch.clamp(1.0 / g.abs().sum(-1), max=1.0) * lr  # the first step, scaled as torch's
    counter = torch.arange(max_iter + 1, device=dev)  # the iteration numbers, made on the device once
    for it in range(1, max_iter + 1):
        if (it - 1) % check_every == 0 and not bool(active.any()):
            break
        it_t = counter[it]
        if it == 1:
            step, before, active, reason, iterations = _take_step(g, d, t, theta, active, reason, iterations, it_t,
                                                                  tolerance_change)  # fmt: skip
        else:
            stored = history if compile_steps else min(it - 1, history)  # a bound on every run's pair count
            d, t, step, before, active, reason, iterations, head, count, h_diag = propose(
                g, prev_g, d, t, theta, ys_hist, ss_hist, head, count, h_diag, active, reason, iterations, it_t, lr,
                tolerance_change, stored, scale,
            )  # fmt: skip
        prev_g, prev_loss = g, loss
        loss, g = closure(theta)
        last = it == max_iter  # torch's order: the iteration budget is tested before the tolerances
        tol_grad, tol_change = (-1.0, -1.0) if last else (tolerance_grad, tolerance_change)
        if step_guard > 0:
            guarded = _guarded_settle if last else guarded_settle
            loss, g, active, reason, scale, count, h_diag, rejected = guarded(
                theta, before, loss, g, prev_loss, prev_g, step, active, reason, tol_grad, tol_change, scale, count,
                h_diag, rejected, step_guard,
            )  # fmt: skip
        else:
            active, reason, iterations = (_settle if last else settle)(
                theta, before, loss, g, prev_loss, step, active, reason, iterations, it_t, tol_grad, tol_change
            )  # fmt: skip
        if last:
            reason = torch.where(active, _CODE[MAX_ITER], reason)
        if callback is not None:
            cancel = callback(it, loss)
            if cancel is not None:
                cancel = cancel.to(dev) & active
                reason = torch.where(cancel, _CODE[CANCELLED], reason)
                active = active & ~cancel
    return _result(iterations, torch.where(reason == 0, _CODE[MAX_ITER], reason), rejected if step_guard > 0 else None)


def _first_evaluation(
    closure: Callable[[Tensor], tuple[Tensor, Tensor]], theta: Tensor, active: Tensor, reason: Tensor,
    tolerance_grad: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """The loss and gradient at the start; runs that start non-finite stop ``diverged``, runs that
    start at a stationary point stop ``tolerance_grad``. Returns (loss, grad, active, reason)."""
    loss, g = closure(theta)
    bad = ~torch.isfinite(loss) | ~torch.isfinite(g).all(-1)
    reason = torch.where(active & bad, _CODE[DIVERGED], reason)
    active = active & ~bad
    reason = torch.where(active & (g.abs().amax(-1) <= tolerance_grad), _CODE[TOL_GRAD], reason)
    return loss, g, active & (reason == 0), reason


def _compiled_steps() -> tuple[Callable, Callable, Callable]:
    """``_propose``, ``_settle`` and ``_guarded_settle`` compiled once per process (graphs per
    shape, dtype and device)."""
    if not _COMPILED:
        _COMPILED.extend((torch.compile(_propose), torch.compile(_settle), torch.compile(_guarded_settle)))
    return _COMPILED[0], _COMPILED[1], _COMPILED[2]


_COMPILED: list[Callable] = []


_REASONS = (RUNNING, MAX_ITER, TOL_GRAD, TOL_STEP, TOL_LOSS, NO_DESCENT, DIVERGED, CANCELLED, STEP_REJECTED)
_CODE = {r: i for i, r in enumerate(_REASONS)}


def _result(iterations: Tensor, reason: Tensor, rejected: Tensor | None = None) -> LbfgsResult:
    """The two (three with the guard) reads back to the host of a whole L-BFGS phase."""
    return LbfgsResult(
        iterations.tolist(), [_REASONS[c] for c in reason.tolist()], None if rejected is None else rejected.tolist()
    )

"""Train a batch of multi-domain PINNs: Adam, then L-BFGS, each phase with its own arm per run.

Runs in a batch share the family, decomposition and network shape; each has its own parameters,
seed and arms. Losses are summed over runs, which leaves every run's gradient (and so its Adam
update) exactly what it would be alone; L-BFGS is batched per run (``lbfgs``). A run whose loss
turns NaN or infinite is frozen and reported as ``diverged``; the others go on.
"""

from __future__ import annotations

import copy
import gc
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from metalic.conditions import TERM_NAMES, Arm, needed_quantities, parse_arm
from metalic.families.base import Family
from metalic.pinn.adam import FlatAdam
from metalic.pinn.evaluate import Metrics, metrics_of, predict_stitched, reward_of
from metalic.pinn.heap import keep_freed_memory
from metalic.pinn.lbfgs import CANCELLED, DIVERGED, batched_lbfgs
from metalic.pinn.loss import LossParts, PinnLoss
from metalic.pinn.network import StackedMLP
from metalic.pinn.problem import BatchProblem, PinnConfig, build_problem
from metalic.settings import resolve_device, resolve_dtype

BLOW_UP = 1e12  # a loss above this counts as diverged
COMPILE_AUTO_ITERATIONS = 4000


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser budgets and settings (the authors' defaults)."""

    adam_iters: int = 1000
    adam_lr: float = 1e-3
    lbfgs_iters: int = 1000
    lbfgs_lr: float = 0.1
    lbfgs_history: int = 50
    tolerance_grad: float = 1e-9
    tolerance_change: float = 1e-12
    # torch.compile the loss (forward and backward): ~4x faster per step on CPU, but compiling
    # takes 15-40 s. None = only when the budget is large enough to pay that back.
    compile: bool | None = None
    # Also compile the L-BFGS work around the loss (``lbfgs.batched_lbfgs(compile_steps=True)``):
    # about 140 small operations per iteration become two calls. None = when the loss is compiled
    # on an accelerator, where each operation is a kernel launch; on a CPU it saved 0.4-0.5 ms per
    # iteration (docs/benchmarks.md) for about 10 s more of a cold compile.
    compile_lbfgs: bool | None = None

    def use_compile(self) -> bool:
        if self.compile is not None:
            return self.compile
        return self.adam_iters + self.lbfgs_iters >= COMPILE_AUTO_ITERATIONS

    def use_compile_lbfgs(self, device: torch.device) -> bool:
        if self.compile_lbfgs is not None:
            return self.compile_lbfgs
        return self.use_compile() and device.type != "cpu"

    def validate(self) -> None:
        for name in ("adam_iters", "lbfgs_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        for name in ("adam_lr", "lbfgs_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lbfgs_history < 1:
            raise ValueError("lbfgs_history must be at least 1")


@dataclass(frozen=True)
class RunSpec:
    """One training: PDE parameters, the arm for each phase (L-BFGS defaults to the Adam arm), seed."""

    params: Mapping[str, float]
    arm_adam: Arm
    arm_lbfgs: Arm | None = None
    seed: int = 0

    @property
    def arms(self) -> tuple[Arm, Arm]:
        return self.arm_adam, self.arm_lbfgs if self.arm_lbfgs is not None else self.arm_adam


@dataclass
class RunOutcome:
    """What one run did: final loss parts, per-phase iterations, and the stop reason."""

    status: str  # "ok", "diverged" or "cancelled"
    loss: float
    loss_parts: dict[str, float]
    adam_iterations: int
    lbfgs_iterations: int
    lbfgs_stop: str
    phase_losses: dict[str, float] = field(default_factory=dict)  # loss at the end of each phase
    diverged_at: str | None = None
    phase0_rel_l2: float | None = None  # error after Adam, when measured (sequential bandit)


@dataclass
class Progress:
    """Passed to the progress callback: phase ('adam' / 'lbfgs'), iteration, per-run loss [K].
    ``runs``: the caller's indices of those K runs when it trains them as part of a larger batch."""

    phase: str
    iteration: int
    total: int
    loss: list[float]
    runs: list[int] | None = None


@dataclass
class TrainedBatch:
    family: Family
    problem: BatchProblem
    net: StackedMLP
    specs: list[RunSpec]
    pinn_config: PinnConfig
    train_config: TrainConfig
    outcomes: list[RunOutcome]
    seconds: float


def current_metrics(family: Family, problem: BatchProblem, net: StackedMLP) -> list[Metrics]:
    """Every run's error on its own reference grid with the current weights.

    Runs whose grids share their points are predicted in one batched call; a run whose grid differs
    (another resolution for its parameters) is predicted on its own points.
    """
    grids = [family.reference_grid(p) for p in problem.params]
    by_points: dict[tuple, list[int]] = {}
    for j, g in enumerate(grids):
        key = tuple((len(a), float(a[0]), float(a[-1]), hash(a.tobytes())) for a in g.axes)
        by_points.setdefault(key, []).append(j)
    out: list[Metrics | None] = [None] * len(grids)
    for runs in by_points.values():
        pred = predict_stitched(net, problem.decomposition, grids[runs[0]].points())
        for j in runs:
            out[j] = metrics_of(pred[j], grids[j].u.ravel())
    return out


def _parts_of(parts: LossParts, j: int, arm: Arm) -> dict[str, float]:
    """Loss parts of run j; interface terms only for the bits switched on in ``arm`` (unweighted)."""
    out = {"total": parts.total[j].item(), "data": parts.data[j].item(), "residual": parts.residual[j].item()}
    out.update({f"iface_{n}": parts.terms[j, i].item() for i, n in enumerate(TERM_NAMES) if arm[i]})
    return out


# Compiled losses kept per process (a worker's, a campaign's): one compile per batch shape and
# derivative set, (shape key, quantities) -> (problem, network, loss, compiled call).
_COMPILED: OrderedDict[tuple, tuple[BatchProblem, StackedMLP, PinnLoss, Callable]] = OrderedDict()
COMPILED_KEEP = 4


def _shape_key(problem: BatchProblem, net: StackedMLP, config: PinnConfig) -> tuple:
    tensors = (problem.x_main, problem.g_data, problem.m_data, problem.x_iface, problem.side_a, problem.side_b)
    return (
        problem.family.name,
        repr(config),
        net.widths,
        net.period,
        net.harmonics,
        str(net.theta.device),
        net.theta.dtype,
        tuple(tuple(t.shape) for t in (*tensors, problem.iface_points, problem.iface_axis, net.theta)),
    )


def compiled_loss(
    problem: BatchProblem, net: StackedMLP, config: PinnConfig, arms: Tensor, held: list
) -> tuple[StackedMLP, PinnLoss, Callable]:
    """A compiled loss for this batch shape and the derivatives ``arms`` [R, 9] need, made once
    per process and reused: the new training's points, data, parameters and initial weights are
    copied into the tensors the compiled graph was traced on (same objects, same shapes: its
    guards hold, nothing recompiles). A kept loss that computes more derivatives than needed is
    reused too (a compile costs 10-40 s on a CPU; the extra derivatives cost less per step).
    Returns (the network to train, the loss, its compiled call); the kept loss's key is appended
    to ``held`` and stays reserved until the caller removes it from ``_IN_USE``."""
    shape = _shape_key(problem, net, config)
    needed = frozenset(needed_quantities([tuple(int(b) for b in row) for row in arms.tolist()]))
    key = (shape, needed)
    if key not in _COMPILED:
        key = next((k for k in reversed(_COMPILED) if k[0] == shape and k[1] >= needed and k not in _IN_USE), key)
    if key in _IN_USE:  # another training of this process holds it: one of its own, not kept
        loss_fn = PinnLoss(problem, net, config, arms)
        return net, loss_fn, compile_loss(loss_fn)
    hit = _COMPILED.get(key)
    if hit is None:
        kept_problem = replace(problem, params=list(problem.params))
        for name in _PROBLEM_TENSORS:
            setattr(kept_problem, name, getattr(problem, name).clone())
        kept_problem.param_tensors = {n: t.clone() for n, t in problem.param_tensors.items()}
        kept_net = copy.deepcopy(net)
        loss_fn = PinnLoss(kept_problem, kept_net, config, arms)
        hit = (kept_problem, kept_net, loss_fn, compile_loss(loss_fn))
        _COMPILED[key] = hit
        while len(_COMPILED) > COMPILED_KEEP:
            _COMPILED.popitem(last=False)
    _COMPILED.move_to_end(key)
    kept_problem, kept_net, loss_fn, call = hit
    with torch.no_grad():
        for name in _PROBLEM_TENSORS:
            getattr(kept_problem, name).copy_(getattr(problem, name))
        for n, t in problem.param_tensors.items():
            kept_problem.param_tensors[n].copy_(t)
        kept_problem.params = list(problem.params)
        kept_net.theta.copy_(net.theta)
        kept_net.center.copy_(net.center)
        kept_net.scale.copy_(net.scale)
    kept_net.theta.grad = None
    _IN_USE.add(key)
    held.append(key)
    return kept_net, loss_fn, call


_IN_USE: set[tuple] = set()  # keys of kept losses a training is using now

# Dynamo keeps at most ``recompile_limit`` (8) graphs per code object and then runs that code
# eager, and every compiled loss of a process is a graph of ``PinnLoss.__call__`` (one per batch
# shape, derivative set and kept loss; an evicted loss's graph stays counted): a long-lived worker
# that had seen 8 of them trained every later batch eager. Measured: K = 1..11 one after another,
# graphs stopped at 8. The limit for this code is raised to ``LOSS_GRAPHS``.
LOSS_GRAPHS = 64
COMPILE_BACKEND = "inductor"


def compile_loss(loss_fn: PinnLoss) -> Callable:
    """``torch.compile`` of ``loss_fn.__call__``, with room for ``LOSS_GRAPHS`` graphs per process."""
    import torch._dynamo

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, LOSS_GRAPHS)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * LOSS_GRAPHS)
    return torch.compile(loss_fn.__call__, backend=COMPILE_BACKEND)


_PROBLEM_TENSORS = ("x_main", "g_data", "m_data", "x_iface", "side_a", "side_b", "iface_points", "iface_axis")


def train_batch(
    family: Family,
    specs: Sequence[RunSpec],
    pinn_config: PinnConfig | None = None,
    train_config: TrainConfig | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    progress: Callable[[Progress], None] | None = None,
    progress_every: int = 50,
    between_phases: Callable[[list[Metrics]], Sequence[Arm]] | None = None,
    should_stop: Callable[[], Collection[int]] | None = None,
) -> TrainedBatch:
    """Train ``len(specs)`` runs of ``family`` together; see the module docstring.

    ``between_phases(metrics_after_adam) -> arms``: the sequential bandit's hook. It is called
    once after the Adam phase with every run's error on the reference grid and returns the L-BFGS
    arm of each run, replacing ``spec.arm_lbfgs``.

    ``should_stop() -> run indices``: polled at every progress point (every ``progress_every``
    iterations of either phase); the runs it names are frozen and reported ``cancelled``, and the
    training ends early once no run is left.
    """
    pinn_config = pinn_config or PinnConfig()
    train_config = train_config or TrainConfig()
    train_config.validate()
    if not specs:
        raise ValueError("at least one run is required")
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype)
    specs = [
        RunSpec(s.params, parse_arm(s.arm_adam), None if s.arm_lbfgs is None else parse_arm(s.arm_lbfgs), s.seed)
        for s in specs
    ]
    start = time.perf_counter()
    keep_freed_memory()  # once per process: no page faults per step (pinn/heap.py)
    held: list = []  # kept compiled losses this training uses
    try:
        return _train(
            family,
            specs,
            pinn_config,
            train_config,
            dev,
            dt,
            progress,
            progress_every,
            between_phases,
            should_stop,
            start,
            held,
        )
    finally:
        # The loops freeze long-lived objects out of the collector; give them back whatever happened.
        gc.unfreeze()
        _IN_USE.difference_update(held)


def _train(
    family, specs, pinn_config, train_config, dev, dt, progress, progress_every, between_phases, should_stop, start,
    held,
) -> TrainedBatch:  # fmt: skip
    problem = build_problem(family, [s.params for s in specs], [s.seed for s in specs], pinn_config, dev, dt)
    boxes = problem.decomposition.bounding_boxes()
    layers, period = pinn_config.layers_for(family), family.network_period(pinn_config.side_data)
    net = StackedMLP(layers, len(specs), boxes, [s.seed for s in specs], dev, dt, period, family.harmonics)
    arms_adam = torch.tensor([s.arms[0] for s in specs], device=dev, dtype=dt)
    arms_lbfgs = torch.tensor([s.arms[1] for s in specs], device=dev, dtype=dt)
    own_net = net  # what the caller gets back; a reused compiled loss trains its own copy
    if train_config.use_compile():
        net, loss_fn, loss_call = compiled_loss(problem, net, pinn_config, torch.cat([arms_adam, arms_lbfgs]), held)
    else:
        loss_fn = PinnLoss(problem, net, pinn_config, torch.cat([arms_adam, arms_lbfgs]))
        loss_call = loss_fn.__call__
    k = len(specs)
    active = torch.ones(k, dtype=torch.bool, device=dev)
    diverged_at: list[str | None] = [None] * k
    cancelled = [False] * k
    adam_done: list[int | None] = [None] * k  # set when a run is frozen early

    def mark_bad(loss: Tensor, where: str) -> None:
        bad = active & (~torch.isfinite(loss) | (loss.abs() > BLOW_UP))
        for j in torch.nonzero(bad).flatten().tolist():
            diverged_at[j] = where
        active.logical_and_(~bad)

    def stop_requested() -> Tensor | None:
        """Mask [K] of live runs that ``should_stop`` names now (None when there are none)."""
        if should_stop is None:
            return None
        names = [j for j in should_stop() if 0 <= j < k and not cancelled[j] and diverged_at[j] is None]
        if not names:
            return None
        for j in names:
            cancelled[j] = True
        mask = torch.zeros(k, dtype=torch.bool, device=dev)
        mask[names] = True
        return mask

    # ---- phase 1: Adam ------------------------------------------------------------------------
    # The loop never waits for the device: a run whose loss turns non-finite or blows up is marked
    # on the device (``bad_at``) and frozen by masking (no gradient, no Adam moments, so its
    # weights stay those that gave the bad loss); the host reads the marks at progress points.
    theta = net.theta
    opt = FlatAdam(theta, lr=train_config.adam_lr)
    n_adam = train_config.adam_iters
    bad_at = torch.zeros(k, dtype=torch.long, device=dev)  # the Adam iteration a run went bad at

    def read_bad() -> None:
        for j, at in enumerate(bad_at.tolist()):
            if at and diverged_at[j] is None:
                diverged_at[j], adam_done[j] = f"adam iteration {at}", at - 1

    for it in range(1, n_adam + 1):
        theta.grad = None
        parts = loss_call(arms_adam)
        total = parts.total.detach()
        bad = active & (~torch.isfinite(total) | (total.abs() > BLOW_UP))
        bad_at = torch.where(bad, it, bad_at)
        active.logical_and_(~bad)
        torch.where(active, parts.total, torch.zeros_like(parts.total)).sum().backward()
        opt.freeze(~active[:, None])
        opt.step()
        if it == 2:
            # Everything alive now (compiled graphs, the problem, the model) lives for the whole
            # training: take it out of the collector's generations so that the periodic full
            # collections stop rescanning it (they cost more than the step itself on CPU).
            gc.freeze()
        if it % progress_every == 0 or it == n_adam:
            read_bad()
            if progress is not None:
                progress(Progress("adam", it, n_adam, total.tolist()))
            stop = stop_requested()
            if stop is not None:
                for j in torch.nonzero(stop & active).flatten().tolist():
                    adam_done[j] = it
                active.logical_and_(~stop)
        if it % 25 == 0 and not bool(active.any()):
            break
    read_bad()
    adam_done = [n_adam if done is None else done for done in adam_done]
    phase0_metrics: list[Metrics] | None = None
    if between_phases is not None and active.any():
        phase0_metrics = current_metrics(family, problem, net)
        capped = Metrics(math.nan, math.nan, reward_of(math.nan))  # a diverged run's, whatever it scores
        phase0_metrics = [capped if diverged_at[j] else m for j, m in enumerate(phase0_metrics)]
        chosen = [parse_arm(a) for a in between_phases(phase0_metrics)]
        if len(chosen) != k:
            raise ValueError(f"between_phases returned {len(chosen)} arms for {k} runs")
        specs = [replace(s, arm_lbfgs=a) for s, a in zip(specs, chosen, strict=True)]
        arms_lbfgs = torch.tensor(chosen, device=dev, dtype=dt)
        if not set(loss_fn.quantities) >= needed_quantities(chosen):  # new terms: new derivatives
            loss_fn = PinnLoss(problem, net, pinn_config, torch.cat([arms_adam, arms_lbfgs]))
            loss_call = compile_loss(loss_fn) if train_config.use_compile() else loss_fn.__call__

    with torch.no_grad():
        after_adam = loss_fn(arms_adam).total
    mark_bad(after_adam, "end of adam")

    # ---- phase 2: L-BFGS ----------------------------------------------------------------------
    def closure(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            theta.grad = None  # the next backward makes a new tensor: this one may be kept
            total = loss_call(arms_lbfgs).total
            torch.nan_to_num(total, nan=0.0, posinf=0.0, neginf=0.0).sum().backward()
        loss = torch.where(total.detach().abs() > BLOW_UP, math.nan, total.detach())
        grad = torch.where(torch.isfinite(loss)[:, None], theta.grad, math.nan)  # no mask: no sync
        return loss, grad

    n_lbfgs = train_config.lbfgs_iters

    def lbfgs_progress(it: int, loss: Tensor) -> Tensor | None:
        if it == 2:
            gc.freeze()  # as in the Adam loop: the first closure call may have compiled
        if it % progress_every == 0 or it == n_lbfgs:
            if progress is not None:
                progress(Progress("lbfgs", it, n_lbfgs, loss.tolist()))
            return stop_requested()
        return None

    with torch.no_grad():
        result = batched_lbfgs(
            closure,
            theta.data,
            n_lbfgs if active.any() else 0,
            lr=train_config.lbfgs_lr,
            history=train_config.lbfgs_history,
            tolerance_grad=train_config.tolerance_grad,
            tolerance_change=train_config.tolerance_change,
            active=active,
            callback=lbfgs_progress,
            compile_steps=train_config.use_compile_lbfgs(dev),
        )

    gc.unfreeze()
    with torch.no_grad():
        final = loss_fn(arms_lbfgs)
    outcomes = []
    for j in range(k):
        reason = CANCELLED if cancelled[j] else result.reasons[j]
        if reason == DIVERGED and diverged_at[j] is None:
            diverged_at[j] = f"lbfgs iteration {result.iterations[j] + 1}"
        status = "cancelled" if cancelled[j] else "diverged" if diverged_at[j] is not None else "ok"
        outcomes.append(
            RunOutcome(
                status=status,
                loss=final.total[j].item(),
                loss_parts=_parts_of(final, j, specs[j].arms[1]),
                adam_iterations=adam_done[j],
                lbfgs_iterations=result.iterations[j],
                lbfgs_stop=reason,
                phase_losses={"adam": after_adam[j].item(), "lbfgs": final.total[j].item()},
                phase0_rel_l2=None if phase0_metrics is None else phase0_metrics[j].rel_l2,
                diverged_at=diverged_at[j],
            )
        )
    if net is not own_net:
        with torch.no_grad():
            own_net.theta.copy_(net.theta)
    seconds = time.perf_counter() - start
    return TrainedBatch(family, problem, own_net, specs, pinn_config, train_config, outcomes, seconds)

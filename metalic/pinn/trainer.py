"""Train a batch of multi-domain PINNs: the Adam phase, then the L-BFGS phase, each with its own
arm per run.

Runs in a batch share the family, decomposition and network shape; each has its own parameters,
seed and arms. Losses are summed over runs, which leaves every run's gradient (and so its Adam
update) exactly what it would be alone; L-BFGS is batched per run (``lbfgs``). A run whose loss
turns NaN or infinite is frozen and reported as ``diverged``; the others go on.

``train_batch`` sets the batch up (``_setup``), runs ``_adam_phase``, asks the optional
between-phases hook for the L-BFGS arms (``_choose_lbfgs_arms``), runs ``_lbfgs_phase`` and reads
each run's outcome (``_outcomes``). What the phases share lives in ``_Batch`` (the loss and its
weights) and ``_RunState`` (which runs still train, and why the others stopped).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from metalic.arms import Arm, needed_quantities
from metalic.conditions import TERM_NAMES
from metalic.families.base import Family
from metalic.pinn import compiled
from metalic.pinn.adam import FlatAdam
from metalic.pinn.causal import CausalSchedule, CausalState
from metalic.pinn.evaluate import Metrics, metrics_of, predict_stitched, reward_of
from metalic.pinn.heap import keep_freed_memory
from metalic.pinn.lbfgs import CANCELLED, DIVERGED, MAX_ITER, LbfgsResult, batched_lbfgs
from metalic.pinn.loss import LossParts, PinnLoss
from metalic.pinn.network import StackedMLP
from metalic.pinn.problem import BatchProblem, PinnConfig, build_problem, pair_view
from metalic.settings import resolve_device, resolve_dtype

BLOW_UP = 1e12  # a loss above this counts as diverged
COMPILE_AUTO_ITERATIONS = 4000


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser budgets and settings (the authors' defaults)."""

    adam: int = 1000
    adam_lr: float = 1e-3
    lbfgs: int = 1000
    lbfgs_lr: float = 0.1
    lbfgs_history: int = 50
    # The L-BFGS step guard (``lbfgs.batched_lbfgs(step_guard=...)``): a step that raises a run's
    # loss above this factor, or to NaN, is undone and the run's step halved. 0: torch's fixed step,
    # with which about one training in 40 of the campaign benchmarks diverged (docs/results.md).
    lbfgs_guard: float = 10.0
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
    # Causal training of the runs that ask for it (``RunSpec.causal``): the eps schedule, each value
    # held until the smallest weight passes the tolerance (``causal``). Adam phase only: L-BFGS
    # minimises a fixed loss, the plain residual.
    causal: CausalSchedule = field(default_factory=CausalSchedule)
    # Time-marching: the subdomains are time slabs trained one after another, each phase's budget
    # split evenly between them; slab s trains (its residual and data, its interface with the slab
    # before) while the slabs before it keep their weights. False: the whole domain at once.
    march: bool = False

    def use_compile(self) -> bool:
        if self.compile is not None:
            return self.compile
        return self.adam + self.lbfgs >= COMPILE_AUTO_ITERATIONS

    def use_compile_lbfgs(self, device: torch.device) -> bool:
        if self.compile_lbfgs is not None:
            return self.compile_lbfgs
        return self.use_compile() and device.type != "cpu"

    def validate(self) -> None:
        for name in ("adam", "lbfgs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        for name in ("adam_lr", "lbfgs_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lbfgs_history < 1:
            raise ValueError("lbfgs_history must be at least 1")
        if not (self.lbfgs_guard == 0 or self.lbfgs_guard > 1):
            raise ValueError(f"lbfgs_guard must be 0 (off) or a factor above 1, got {self.lbfgs_guard}")
        self.causal.validate()


@dataclass(frozen=True)
class RunSpec:
    """What the trainer needs of one run: PDE parameters, the arm of each phase (L-BFGS defaults to
    the Adam arm), the seed of its points and initial weights."""

    params: Mapping[str, float]
    arm_adam: Arm
    arm_lbfgs: Arm | None = None
    seed: int = 0
    causal: bool = False  # causal weights on the residual in the Adam phase (``causal``)

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
    lbfgs_rejected: int = 0  # L-BFGS steps the step guard undid (``TrainConfig.lbfgs_guard``)
    diverged_at: str | None = None
    rel_l2_adam: float | None = None  # error after the Adam phase, when measured (sequential bandit)
    causal: dict | None = None  # a causal run's last eps, stage, smallest weight, finishing iteration


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
    mask = arm.term_mask
    out.update({f"iface_{n}": parts.terms[j, i].item() for i, n in enumerate(TERM_NAMES) if mask[i]})
    return out


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
        replace(s, arm_adam=Arm.parse(s.arm_adam), arm_lbfgs=None if s.arm_lbfgs is None else Arm.parse(s.arm_lbfgs))
        for s in specs
    ]
    start = time.perf_counter()
    keep_freed_memory()  # once per process: no page faults per step (pinn/heap.py)
    held: list = []  # kept compiled losses this training uses
    try:
        batch, own_net = _setup(family, specs, pinn_config, train_config, dev, dt, held)
        state = _RunState(len(specs), dev, should_stop)
        adam_metrics = None
        if batch.march is not None:
            if between_phases is not None:
                raise ValueError("time-marching trains each slab's phases in turn: no L-BFGS arm after the Adam phase")
            result = _marching(batch, state, train_config, progress, progress_every)
            with torch.no_grad():
                after_adam = batch.loss_fn(batch.weights_adam).total  # every slab, at the end
        else:
            _adam_phase(batch, state, train_config, progress, progress_every)
            if between_phases is not None and state.active.any():
                adam_metrics = _measure_adam_phase(batch, state)
                specs = _choose_lbfgs_arms(batch, specs, between_phases(adam_metrics), train_config)
            with torch.no_grad():
                after_adam = batch.loss_fn(batch.weights_adam).total
            state.mark_bad(after_adam, "end of adam")
            result = _lbfgs_phase(batch, state, train_config, progress, progress_every)
        gc.unfreeze()
        outcomes = _outcomes(batch, state, specs, result, after_adam, adam_metrics)
        if batch.net is not own_net:
            with torch.no_grad():
                own_net.theta.copy_(batch.net.theta)
        seconds = time.perf_counter() - start
        return TrainedBatch(family, batch.problem, own_net, specs, pinn_config, train_config, outcomes, seconds)
    finally:
        # The loops freeze long-lived objects out of the collector; give them back whatever happened.
        gc.unfreeze()
        compiled.release(held)


@dataclass
class _Batch:
    """The batch as its phases train it: the problem, the network being trained (a kept compiled
    loss trains its own copy), the loss and its compiled or eager call, each run's term weights
    per phase [K, 9]."""

    family: Family
    problem: BatchProblem
    config: PinnConfig
    net: StackedMLP
    loss_fn: PinnLoss
    loss_call: Callable[[Tensor], LossParts]
    weights_adam: Tensor
    weights_lbfgs: Tensor
    causal: CausalState | None = None  # when a run trains causally
    march: _March | None = None  # when the slabs train one after another
    masks: _Masks | None = None  # a marching stage's pair view: what trains

    def loss_at(self, weights: Tensor, eps: Tensor | None = None) -> LossParts:
        """The loss with ``weights`` [K, 9] and the causal runs' ``eps`` [K], on a marching stage's
        slab when this is one."""
        if self.masks is None:
            return self.loss_call(weights) if eps is None else self.loss_call(weights, eps)
        return self.loss_call(weights, eps, self.masks.sub_on, self.masks.iface_on)


@dataclass
class _March:
    """Time-marching: the slabs in time order. Stage n trains ``order[n]`` on the pair view
    (``problem.pair_view``) of it and the slab before it; the first slab is paired with the next
    one, whose residual, data and interface are masked out. In a pair view, ``sub_on`` [2] marks
    the slab whose residual and data count, ``iface_on`` [1] the interface, ``params_on`` [1, n] the
    weights that move."""

    order: list[int]

    @property
    def stages(self) -> int:
        return len(self.order)

    def pair(self, n: int) -> tuple[int, int, int]:
        """(a, b, which): stage n's pair view of slabs a, b, of which slab ``which`` (0 or 1) trains."""
        if n == 0:
            return self.order[0], self.order[1], 0
        return self.order[n - 1], self.order[n], 1

    @staticmethod
    def of(family: Family, problem: BatchProblem) -> _March:
        dec = problem.decomposition
        if family.time_axis is None or any(i.axis != family.time_axis for i in dec.interfaces):
            raise ValueError("time-marching needs a split into time slabs (a time-dependent family split along t)")
        axis = family.time_axis
        return _March(sorted(range(dec.n_subdomains), key=lambda s: min(b.lo[axis] for b in dec.subdomains[s])))


@dataclass
class _Masks:
    """One stage of a marching training on a pair view (see ``_March``)."""

    sub_on: Tensor
    iface_on: Tensor
    params_on: Tensor


def _weights(arms: Sequence[Arm], like: Tensor) -> Tensor:
    return torch.tensor([a.loss_weights for a in arms], device=like.device, dtype=like.dtype)


def _setup(
    family: Family, specs: list[RunSpec], pinn_config: PinnConfig, train_config: TrainConfig, dev, dt, held: list
) -> tuple[_Batch, StackedMLP]:
    """The batch's points, network and loss; returns it and the network the caller gets back."""
    causal = [s.causal for s in specs]
    problem = build_problem(
        family, [s.params for s in specs], [s.seed for s in specs], pinn_config, dev, dt, causal=any(causal)
    )
    boxes = problem.decomposition.bounding_boxes()
    layers, period = pinn_config.layers_for(family), family.network_period(pinn_config.side_data)
    net = StackedMLP(layers, len(specs), boxes, [s.seed for s in specs], dev, dt, period, family.harmonics)
    quantities = needed_quantities(a for s in specs for a in s.arms)
    march = _March.of(family, problem) if train_config.march and problem.decomposition.n_subdomains > 1 else None
    if train_config.use_compile() and march is None:  # marching compiles its stages' loss instead
        trained, loss_fn, loss_call = compiled.lease(problem, net, pinn_config, quantities, held)
    else:
        trained, loss_fn = net, PinnLoss(problem, net, pinn_config, quantities)
        loss_call = loss_fn.__call__
    weights_adam = _weights([s.arms[0] for s in specs], net.theta)
    weights_lbfgs = _weights([s.arms[1] for s in specs], net.theta)
    state = CausalState(train_config.causal, torch.tensor(causal, device=dev)) if any(causal) else None
    batch = _Batch(family, problem, pinn_config, trained, loss_fn, loss_call, weights_adam, weights_lbfgs, state, march)
    return batch, net


class _RunState:
    """Which runs still train (``active`` [K], a device tensor the host reads only at progress
    points) and why the others stopped: diverged (where), cancelled, or the Adam iteration they
    stopped at."""

    def __init__(self, k: int, device: torch.device, should_stop: Callable[[], Collection[int]] | None):
        self.k, self.device, self.should_stop = k, device, should_stop
        self.active = torch.ones(k, dtype=torch.bool, device=device)
        self.diverged_at: list[str | None] = [None] * k
        self.cancelled = [False] * k
        self.adam_done: list[int | None] = [None] * k  # set when a run is frozen early

    def mark_bad(self, loss: Tensor, where: str) -> None:
        """Freeze the live runs whose loss [K] is non-finite or blew up (a host read)."""
        bad = self.active & (~torch.isfinite(loss) | (loss.abs() > BLOW_UP))
        for j in torch.nonzero(bad).flatten().tolist():
            self.diverged_at[j] = where
        self.active.logical_and_(~bad)

    def stop_requested(self) -> Tensor | None:
        """Mask [K] of live runs that ``should_stop`` names now (None when there are none)."""
        if self.should_stop is None:
            return None
        k = self.k
        names = [j for j in self.should_stop() if 0 <= j < k and not self.cancelled[j] and self.diverged_at[j] is None]
        if not names:
            return None
        for j in names:
            self.cancelled[j] = True
        mask = torch.zeros(k, dtype=torch.bool, device=self.device)
        mask[names] = True
        return mask

    def read_adam_marks(self, bad_at: Tensor) -> None:
        """Runs the Adam loop marked bad on the device (``bad_at``: the iteration, 0 = fine)."""
        for j, at in enumerate(bad_at.tolist()):
            if at and self.diverged_at[j] is None:
                self.diverged_at[j], self.adam_done[j] = f"adam iteration {at}", at - 1


def _adam_phase(
    batch: _Batch,
    state: _RunState,
    config: TrainConfig,
    progress: Callable | None,
    progress_every: int,
    offset: int = 0,
    total: int | None = None,
) -> None:
    """The Adam loop. It never waits for the device: a run whose loss turns non-finite or blows up
    is marked on the device (``bad_at``) and frozen by masking (no gradient, no Adam moments, so its
    weights stay those that gave the bad loss); the host reads the marks at progress points."""
    theta, active = batch.net.theta, state.active
    opt = FlatAdam(theta, lr=config.adam_lr)
    n_adam = config.adam
    bad_at = torch.zeros(state.k, dtype=torch.long, device=state.device)  # the Adam iteration a run went bad at
    causal, masks = batch.causal, batch.masks
    if causal is not None and masks is not None:
        causal.restart()  # each slab of a marching training runs the eps schedule from its start
    for it in range(1, n_adam + 1):
        theta.grad = None
        parts = batch.loss_at(batch.weights_adam, None if causal is None else causal.eps(theta))
        loss = parts.total.detach()
        bad = active & (~torch.isfinite(loss) | (loss.abs() > BLOW_UP))
        bad_at = torch.where(bad, offset + it, bad_at)
        active.logical_and_(~bad)
        training = active
        if causal is not None:  # a causal run whose last stage finished keeps its weights
            training = active & ~causal.done
            causal.update(parts.min_weight, it)
        torch.where(training, parts.total, torch.zeros_like(parts.total)).sum().backward()
        frozen = ~training[:, None]
        opt.freeze(frozen if masks is None else frozen | ~masks.params_on)
        opt.step()
        if it == 2:
            # Everything alive now (compiled graphs, the problem, the model) lives for the whole
            # training: take it out of the collector's generations so that the periodic full
            # collections stop rescanning it (they cost more than the step itself on CPU).
            gc.freeze()
        if it % progress_every == 0 or it == n_adam:
            state.read_adam_marks(bad_at)
            if progress is not None:
                progress(Progress("adam", offset + it, total or n_adam, loss.tolist()))
            stop = state.stop_requested()
            if stop is not None:
                for j in torch.nonzero(stop & active).flatten().tolist():
                    state.adam_done[j] = offset + it
                active.logical_and_(~stop)
        if it % 25 == 0 and not bool(active.any()):
            break
    state.read_adam_marks(bad_at)
    if causal is not None and masks is None:  # a finished causal run's Adam phase ended with its last stage
        for j, at in enumerate(causal.done_at.tolist()):
            if at and state.adam_done[j] is None:
                state.adam_done[j] = at
    if total is None:
        state.adam_done = [n_adam if done is None else done for done in state.adam_done]


def _measure_adam_phase(batch: _Batch, state: _RunState) -> list[Metrics]:
    """Every run's error after the Adam phase (a diverged run's is the capped one, whatever it scores)."""
    metrics = current_metrics(batch.family, batch.problem, batch.net)
    capped = Metrics(math.nan, math.nan, reward_of(math.nan))
    return [capped if state.diverged_at[j] else m for j, m in enumerate(metrics)]


def _choose_lbfgs_arms(
    batch: _Batch, specs: list[RunSpec], chosen: Sequence[Arm], config: TrainConfig
) -> list[RunSpec]:
    """The between-phases hook's L-BFGS arms into the specs and the batch's L-BFGS weights; a new
    loss when they switch on terms whose derivatives the current one does not compute."""
    chosen = [Arm.parse(a) for a in chosen]
    if len(chosen) != len(specs):
        raise ValueError(f"between_phases returned {len(chosen)} arms for {len(specs)} runs")
    batch.weights_lbfgs = _weights(chosen, batch.weights_adam)
    if not set(batch.loss_fn.quantities) >= needed_quantities(chosen):  # new terms: new derivatives
        quantities = needed_quantities([*(s.arms[0] for s in specs), *chosen])
        batch.loss_fn = PinnLoss(batch.problem, batch.net, batch.config, quantities)
        batch.loss_call = compiled.compile_loss(batch.loss_fn) if config.use_compile() else batch.loss_fn.__call__
    return [replace(s, arm_lbfgs=a) for s, a in zip(specs, chosen, strict=True)]


def _lbfgs_phase(
    batch: _Batch, state: _RunState, config: TrainConfig, progress: Callable | None, progress_every: int
) -> LbfgsResult:
    """The batched L-BFGS loop over the runs still active after the Adam phase."""
    return _lbfgs_run(batch, state, config, progress, progress_every, config.lbfgs, 0, state.active)


def _marching(
    batch: _Batch, state: _RunState, config: TrainConfig, progress: Callable | None, progress_every: int
) -> LbfgsResult:
    """Time-marching: slab by slab in time order, the Adam phase and then the L-BFGS phase of that
    slab, each with an even share of its budget. A stage trains on the pair view of its slab and
    the slab before it (``_March``): the slab's residual and data, the terms of its interface with
    the earlier slab (whose weights stay put), so a step costs two subdomains, not S. Every stage
    has the same shapes, so a compiled loss is traced once and leased by each stage. A run that
    diverged or was cancelled in one slab stays stopped. Returns the L-BFGS outcome over all slabs."""
    march, problem, net = batch.march, batch.problem, batch.net
    quantities = frozenset(batch.loss_fn.quantities)
    k, like = state.k, net.theta

    def share(n: int) -> list[int]:
        return [n // march.stages + (s < n % march.stages) for s in range(march.stages)]

    adam, lbfgs = share(config.adam), share(config.lbfgs)
    iterations, reasons, rejected = [0] * k, [MAX_ITER] * k, [0] * k
    stopped: set[int] = set()  # runs whose L-BFGS share diverged or was cancelled
    done_adam = done_lbfgs = 0
    for n in range(march.stages):
        a, b, which = march.pair(n)
        view, pair = pair_view(problem, a, b), net.subdomains([a, b])
        stage_held: list = []
        if config.use_compile():
            trained, loss_fn, call = compiled.lease(view, pair, batch.config, quantities, stage_held)
        else:
            trained, loss_fn = pair, PinnLoss(view, pair, batch.config, quantities)
            call = loss_fn.__call__
        moves = torch.zeros(1, trained.n_weights, dtype=torch.bool, device=like.device)
        moves[0, trained.subdomain_index([which])] = True
        masks = _Masks(
            torch.tensor([which == 0, which == 1], dtype=like.dtype, device=like.device),
            torch.tensor([float(n > 0)], dtype=like.dtype, device=like.device),
            moves,
        )
        stage = replace(batch, problem=view, net=trained, loss_fn=loss_fn, loss_call=call, masks=masks)
        try:
            _adam_phase(stage, state, replace(config, adam=adam[n]), progress, progress_every, done_adam, config.adam)
            entered = state.active.tolist()
            result = _lbfgs_run(stage, state, config, progress, progress_every, lbfgs[n], done_lbfgs, state.active)
            with torch.no_grad():  # the trained slab back into the batch's network
                net.theta[:, net.subdomain_index([(a, b)[which]])] = trained.theta[:, trained.subdomain_index([which])]
        finally:
            compiled.release(stage_held)
        for j in range(k):
            if entered[j]:
                iterations[j] += result.iterations[j]
                rejected[j] += 0 if result.rejected is None else result.rejected[j]
                reasons[j] = result.reasons[j]
                if result.reasons[j] in (DIVERGED, CANCELLED):
                    stopped.add(j)
                    state.active[j] = False  # it does not train the later slabs
        done_adam, done_lbfgs = done_adam + adam[n], done_lbfgs + lbfgs[n]
    state.adam_done = [config.adam if d is None else d for d in state.adam_done]
    for j in range(k):
        if not bool(state.active[j]) and j not in stopped:
            reasons[j] = DIVERGED  # as batched_lbfgs reports a run that did not enter the phase
    return LbfgsResult(iterations, reasons, rejected)


def _lbfgs_run(
    batch: _Batch,
    state: _RunState,
    config: TrainConfig,
    progress: Callable | None,
    progress_every: int,
    budget: int,
    offset: int,
    active: Tensor,
) -> LbfgsResult:
    """One batched L-BFGS call of ``budget`` iterations (progress counted from ``offset``); on a
    marching stage, the other slab's gradient is zero."""
    theta = batch.net.theta
    keep = None if batch.masks is None else batch.masks.params_on

    def closure(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            theta.grad = None  # the next backward makes a new tensor: this one may be kept
            total = batch.loss_at(batch.weights_lbfgs).total
            torch.nan_to_num(total, nan=0.0, posinf=0.0, neginf=0.0).sum().backward()
        loss = torch.where(total.detach().abs() > BLOW_UP, math.nan, total.detach())
        grad = theta.grad if keep is None else theta.grad * keep
        grad = torch.where(torch.isfinite(loss)[:, None], grad, math.nan)  # no mask: no sync
        return loss, grad

    n_lbfgs = config.lbfgs

    def on_iteration(it: int, loss: Tensor) -> Tensor | None:
        if it == 2:
            gc.freeze()  # as in the Adam loop: the first closure call may have compiled
        if (offset + it) % progress_every == 0 or offset + it == n_lbfgs:
            if progress is not None:
                progress(Progress("lbfgs", offset + it, n_lbfgs, loss.tolist()))
            return state.stop_requested()
        return None

    with torch.no_grad():
        return batched_lbfgs(
            closure,
            theta.data,
            budget if active.any() else 0,
            lr=config.lbfgs_lr,
            history=config.lbfgs_history,
            tolerance_grad=config.tolerance_grad,
            tolerance_change=config.tolerance_change,
            active=active,
            callback=on_iteration,
            compile_steps=config.use_compile_lbfgs(theta.device),
            step_guard=config.lbfgs_guard,
        )


def _outcomes(
    batch: _Batch,
    state: _RunState,
    specs: list[RunSpec],
    result: LbfgsResult,
    after_adam: Tensor,
    adam_metrics: list[Metrics] | None,
) -> list[RunOutcome]:
    """What each run did, read once at the end of the training."""
    with torch.no_grad():
        final = batch.loss_fn(batch.weights_lbfgs)
    outcomes = []
    for j in range(state.k):
        reason = CANCELLED if state.cancelled[j] else result.reasons[j]
        if reason == DIVERGED and state.diverged_at[j] is None:
            state.diverged_at[j] = f"lbfgs iteration {result.iterations[j] + 1}"
        status = "cancelled" if state.cancelled[j] else "diverged" if state.diverged_at[j] is not None else "ok"
        outcomes.append(
            RunOutcome(
                status=status,
                loss=final.total[j].item(),
                loss_parts=_parts_of(final, j, specs[j].arms[1]),
                adam_iterations=state.adam_done[j],
                lbfgs_iterations=result.iterations[j],
                lbfgs_stop=reason,
                lbfgs_rejected=0 if result.rejected is None else result.rejected[j],
                phase_losses={"adam": after_adam[j].item(), "lbfgs": final.total[j].item()},
                rel_l2_adam=None if adam_metrics is None else adam_metrics[j].rel_l2,
                diverged_at=state.diverged_at[j],
                causal=batch.causal.report(j) if batch.causal is not None and specs[j].causal else None,
            )
        )
    return outcomes

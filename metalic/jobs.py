"""A solve request -> a batch of trainings -> per-request results: the one place "solve" is glued.

- ``SolveRequest``: what a user asks for (family, parameters, arm choice, budgets, point counts,
  seed, ...), validated once; a bad field raises ``pydantic.ValidationError`` naming it.
- ``Training``: a request whose arms are decided (the caller, the dispatcher or a campaign resolves
  ``learned``); in sequential mode the L-BFGS arm may be left to a bandit engine that picks it
  after the Adam phase.
- ``run_solve_batch(trainings, ...)``: trains compatible trainings (same ``batch_key``) as one
  ``train_batch`` and returns one ``SolveResult`` per training: status, errors, reward, timings,
  phase losses, the trained model and the solution grid as bytes.

The CLI's ``solve``, campaigns and the service's workers all call ``run_solve_batch``.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from metalic.conditions import (
    SINGLE_NETWORK,
    SINGLE_NETWORK_LABEL,
    Arm,
    arm_label,
    is_single_network,
    parse_arm,
    term_bits,
)
from metalic.families import get_family
from metalic.pinn.artefact import evaluate_batch, models_from_batch
from metalic.pinn.evaluate import Metrics, reward_of
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import Progress, RunSpec, TrainConfig, TrainedBatch, train_batch
from metalic.settings import get_settings, resolve_device

if TYPE_CHECKING:  # the bandit (BoTorch) is imported only where an engine is used
    from metalic.bandit.engine import BanditEngine

LEARNED = "learned"
POLICIES = ("ucb", "ts", "mean", "random")


@dataclass(frozen=True)
class ArmChoice:
    """An arm as asked: explicit terms, or ``learned`` (with an optional policy for this request)."""

    arm: Arm | None  # explicit bits, None when learned
    policy: str | None = None  # learned: None = the study's own policy, else one of POLICIES

    @property
    def learned(self) -> bool:
        return self.arm is None

    @staticmethod
    def parse(text: str) -> ArmChoice:
        """``learned``, ``learned:ts`` (ucb, ts, mean, random), or terms for ``parse_arm``."""
        value = text.strip().lower()
        if value == LEARNED:
            return ArmChoice(None)
        if value.startswith(LEARNED + ":"):
            policy = value.split(":", 1)[1]
            if policy not in POLICIES:
                raise ValueError(f"learned policy must be one of {', '.join(POLICIES)}, got {policy!r}")
            return ArmChoice(None, policy)
        return ArmChoice(parse_arm(value))

    def __str__(self) -> str:
        if self.arm is not None:
            return arm_label(self.arm)
        return LEARNED if self.policy is None else f"{LEARNED}:{self.policy}"


class SolveRequest(BaseModel):
    """One PDE instance to solve. Budgets and point counts are bounded by the settings' caps.

    ``mode``: ``single`` (one arm for both phases) or ``sequential`` (``arm`` for the Adam phase,
    ``arm_lbfgs`` for the L-BFGS phase, by default learned after the Adam phase).
    ``device``: the device class that should train it (``auto``: any worker).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str
    params: dict[str, float] = Field(default_factory=dict)
    mode: Literal["single", "sequential"] = "single"
    arm: str = LEARNED
    arm_lbfgs: str | None = Field(None, validate_default=True)
    adam: int = Field(1000, ge=0, description="Adam iterations")
    lbfgs: int = Field(1000, ge=0, description="L-BFGS iterations")
    adam_lr: float = Field(1e-3, gt=0, le=1.0)
    lbfgs_lr: float = Field(0.1, gt=0, le=10.0)
    collocation: int = Field(1000, ge=1, description="collocation points per subdomain")
    boundary: int = Field(100, ge=1, description="boundary / initial points per subdomain")
    interface_points: int | None = Field(None, ge=2, description="points per interface (None: the family's)")
    subdomains: int | None = Field(None, ge=1, description="N equal slabs (None: the family's split)")
    final_time_data: bool = False
    side_data: bool = Field(
        False, description="periodic family: data on the x-edges from the reference, no periodic network"
    )
    seed: int = Field(0, ge=0, lt=2**31)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"

    # ---- field checks (in declaration order: a check may read the fields above it) -------------
    @field_validator("family")
    @classmethod
    def _family(cls, value: str) -> str:
        return get_family(value).name

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        if "family" not in info.data:
            return value
        return get_family(info.data["family"]).validate_params(value)

    @field_validator("arm")
    @classmethod
    def _arm(cls, value: str) -> str:
        return str(ArmChoice.parse(value))

    @field_validator("arm_lbfgs")
    @classmethod
    def _arm_lbfgs(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("mode") != "sequential":
            if value is not None:
                raise ValueError("only a sequential request has its own L-BFGS arm (set mode to 'sequential')")
            return None
        if value is None:
            value = LEARNED
        choice = ArmChoice.parse(value)
        first = ArmChoice.parse(info.data["arm"]) if "arm" in info.data else None
        if first is not None and first.arm is not None and is_single_network(first.arm):
            if choice.arm is not None and not is_single_network(choice.arm):
                raise ValueError(f"a {SINGLE_NETWORK_LABEL} Adam phase goes on as one network (omit arm_lbfgs)")
        elif choice.arm is not None and is_single_network(choice.arm):
            raise ValueError(f"{SINGLE_NETWORK_LABEL}: also the Adam phase's arm (a split cannot merge)")
        return str(choice)

    @field_validator("adam", "lbfgs", "collocation", "boundary", "interface_points", "subdomains")
    @classmethod
    def _caps(cls, value: int | None, info: ValidationInfo) -> int | None:
        if info.context and info.context.get("trusted"):  # a worker re-reading a queued request
            return value
        caps = get_settings()
        limit = {
            "adam": caps.max_adam_iters,
            "lbfgs": caps.max_lbfgs_iters,
            "collocation": caps.max_collocation,
            "boundary": caps.max_boundary,
            "interface_points": caps.max_interface_points,
            "subdomains": caps.max_subdomains,
        }[info.field_name]
        if value is not None and value > limit:
            raise ValueError(f"at most {limit} (server cap)")
        return value

    @field_validator("final_time_data", "side_data")
    @classmethod
    def _family_supports(cls, value: bool, info: ValidationInfo) -> bool:
        """Final-time data needs a time axis; side data a periodic coordinate."""
        if not value or "family" not in info.data:
            return value
        family = get_family(info.data["family"])
        if info.field_name == "final_time_data" and family.time_axis is None:
            raise ValueError(f"needs a time-dependent family; {family.name} is steady")
        if info.field_name == "side_data" and family.period is None:
            raise ValueError(f"needs a periodic family; {family.name} is not periodic")
        return value

    # ---- derived -------------------------------------------------------------------------------
    @property
    def arm_choice(self) -> ArmChoice:
        return ArmChoice.parse(self.arm)

    @property
    def arm_lbfgs_choice(self) -> ArmChoice | None:
        return None if self.arm_lbfgs is None else ArmChoice.parse(self.arm_lbfgs)

    def pinn_config(self) -> PinnConfig:
        return PinnConfig(
            n_collocation=self.collocation,
            n_boundary=self.boundary,
            n_interface=self.interface_points,
            subdomains=self.subdomains,
            final_time_data=self.final_time_data,
            side_data=self.side_data,
        )

    def train_config(self, compile: bool | None = None) -> TrainConfig:
        return TrainConfig(
            adam_iters=self.adam,
            lbfgs_iters=self.lbfgs,
            adam_lr=self.adam_lr,
            lbfgs_lr=self.lbfgs_lr,
            compile=compile,
        )

    def profile(self) -> dict[str, Any]:
        """What fixes the reward function of an arm besides the parameters: budgets, points, split,
        network, dtype. One bandit study learns one (family, mode, profile)."""
        pinn = self.pinn_config()
        return {
            "adam": self.adam,
            "lbfgs": self.lbfgs,
            "adam_lr": self.adam_lr,
            "lbfgs_lr": self.lbfgs_lr,
            "collocation": self.collocation,
            "boundary": self.boundary,
            "interface_points": self.interface_points,
            "subdomains": self.subdomains,
            "final_time_data": self.final_time_data,
            **({"side_data": True} if self.side_data else {}),  # absent when off: older studies' keys stay
            "layers": list(pinn.layers_for(get_family(self.family))),
            "dtype": self.dtype,
        }

    def profile_key(self) -> str:
        return profile_key(self.profile())

    def batch_key(self) -> str:
        """Requests with equal keys train together in one batch (arms, parameters, seeds may differ)."""
        return f"{self.family}/{self.profile_key()}/{self.device}"


def profile_key(profile: Mapping[str, Any]) -> str:
    """Short stable name of a profile: the readable budgets and a digest of the rest."""
    digest = hashlib.sha256(json.dumps(profile, sort_keys=True).encode()).hexdigest()[:10]
    return f"a{profile['adam']}-l{profile['lbfgs']}-c{profile['collocation']}-{digest}"


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line: ``field: message`` for the first error (``params.nu: ...``)."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "request"
    message = first["msg"].removeprefix("Value error, ")
    return f"{loc}: {message}"


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Every error as ``{"field": "params", "message": "..."}``."""
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "request", "message": e["msg"].removeprefix("Value error, ")}
        for e in exc.errors()
    ]


@dataclass(frozen=True)
class Training:
    """A request with its arms decided.

    ``arm_lbfgs``: None = the Adam arm (single mode). In sequential mode either an explicit arm or
    ``lbfgs_policy`` (a policy of the engine ``engines[engine_key]`` that picks the L-BFGS arm
    from the reward measured after the Adam phase).
    """

    request: SolveRequest
    arm_adam: Arm
    arm_lbfgs: Arm | None = None
    lbfgs_policy: str | None = None
    engine_key: str | None = None

    @staticmethod
    def explicit(request: SolveRequest) -> Training:
        """For a request whose arms are all explicit (ValueError when one is ``learned``)."""
        first, second = request.arm_choice, request.arm_lbfgs_choice
        if first.learned or (second is not None and second.learned):
            raise ValueError("arm: 'learned' needs a bandit study (submit it to the service)")
        return Training(request, first.arm, None if second is None else second.arm)


@dataclass
class SolveResult:
    """What one training gave. ``reward`` = -log10(capped rel. L2); a diverged run gets the capped
    reward (-2) whatever its frozen weights score. Bytes: the model file and the solution ``.npz``."""

    status: str  # ok / diverged / cancelled
    arm_adam: Arm
    arm_lbfgs: Arm
    rel_l2: float | None
    max_abs: float | None
    reward: float | None
    reward_phase0: float | None
    rel_l2_phase0: float | None
    outcome: dict[str, Any]
    seconds: float  # this run's share of the batch's wall time
    batch_seconds: float
    batch_size: int
    device: str
    model: bytes | None = field(default=None, repr=False)
    solution: bytes | None = field(default=None, repr=False)

    @staticmethod
    def from_summary(data: Mapping[str, Any]) -> SolveResult:
        """Back from ``summary()`` (without the bytes)."""
        fields = {k: v for k, v in data.items() if k not in ("arm_adam_terms", "arm_lbfgs_terms")}
        fields["arm_adam"] = tuple(fields["arm_adam"])
        fields["arm_lbfgs"] = tuple(fields["arm_lbfgs"])
        return SolveResult(**fields)

    def summary(self) -> dict[str, Any]:
        """JSON-ready (no bytes; non-finite numbers as None)."""
        out = asdict(self)
        out.pop("model")
        out.pop("solution")
        out["arm_adam_terms"] = arm_label(self.arm_adam)
        out["arm_lbfgs_terms"] = arm_label(self.arm_lbfgs)
        return _finite(out)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def solution_npz(coords: Sequence[str], axes: Sequence[np.ndarray], prediction: np.ndarray, reference: np.ndarray):
    """Compressed ``.npz`` bytes: ``axis0`` [N0], ``axis1`` [N1], ``prediction`` and ``reference``
    [N0, N1] (float32), ``coords`` (the two coordinate names)."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        coords=np.array(coords),
        axis0=np.asarray(axes[0], dtype=np.float64),
        axis1=np.asarray(axes[1], dtype=np.float64),
        prediction=np.asarray(prediction, dtype=np.float32),
        reference=np.asarray(reference, dtype=np.float32),
    )
    return buffer.getvalue()


def read_solution(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def run_solve_batch(
    trainings: Sequence[Training],
    device: str | torch.device | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], Collection[int]] | None = None,
    engines: Mapping[str, BanditEngine] | None = None,
    compile: bool | None = None,
    progress_every: int = 10,
    artefacts: bool = True,
    prefetch: bool | None = None,
    pad: bool | None = None,
) -> list[SolveResult]:
    """Train ``trainings`` (all with one ``batch_key``) as one batch; one result per training.

    ``progress(Progress)`` gets every run's loss every ``progress_every`` iterations;
    ``should_stop() -> run indices`` is polled at the same points (those runs end ``cancelled``).
    ``engines``: the bandit engines that choose L-BFGS arms after the Adam phase (sequential).
    Runs with the single-network arm train as their own sub-batch, one network each, after the
    others (``Progress.runs`` says which runs a report is about).
    ``prefetch``: solve the runs' reference grids in background threads during the training (None:
    when it trains on an accelerator; on the CPU the solver threads would slow the training's cores).
    ``pad``: train K runs as the next power of two (copies of the last run, their results dropped),
    so that a long-lived worker compiles one loss per size class, not per batch size (None: when
    the loss is compiled on an accelerator, where the extra runs cost little).
    """
    if not trainings:
        return []
    keys = {t.request.batch_key() for t in trainings}
    if len(keys) != 1:
        raise ValueError(f"trainings of one batch must share a batch key, got {sorted(keys)}")
    engines = engines or {}
    for t in trainings:
        if t.lbfgs_policy is not None and t.engine_key not in engines:
            raise ValueError(f"training needs engine {t.engine_key!r} to choose its L-BFGS arm")
    device = device if isinstance(device, torch.device) else resolve_device(device)  # once, for every group
    if prefetch is None:
        prefetch = device.type != "cpu"
    if prefetch:
        # Every run is scored on its reference grid after training (and after Adam in sequential
        # mode): solve the grids in background threads now, while the device trains.
        get_family(trainings[0].request.family).prefetch_references([t.request.params for t in trainings])
    single = [j for j, t in enumerate(trainings) if is_single_network(t.arm_adam)]
    split = [j for j in range(len(trainings)) if j not in single]
    start = time.perf_counter()
    results: dict[int, SolveResult] = {}
    for runs in (split, single):
        if not runs:
            continue
        group = [trainings[j] for j in runs]
        report = None if progress is None else _progress_of(runs, progress)
        stop = None if should_stop is None else _stops_of(runs, should_stop)
        for j, res in zip(runs, _train_group(group, runs is single, device, report, stop, engines, compile,
                                             progress_every, artefacts, pad), strict=True):  # fmt: skip
            results[j] = res
    wall = time.perf_counter() - start
    for res in results.values():
        res.seconds, res.batch_seconds, res.batch_size = wall / len(trainings), wall, len(trainings)
    return [results[j] for j in range(len(trainings))]


def _progress_of(runs: list[int], progress: Callable[[Progress], None]) -> Callable[[Progress], None]:
    return lambda p: progress(replace(p, runs=[runs[i] for i in p.runs] if p.runs is not None else list(runs)))


def _stops_of(runs: list[int], should_stop: Callable[[], Collection[int]]) -> Callable[[], list[int]]:
    def local() -> list[int]:
        named = set(should_stop())
        return [i for i, j in enumerate(runs) if j in named]

    return local


def _train_group(
    trainings: list[Training],
    single_network: bool,
    device: torch.device,
    progress,
    should_stop,
    engines: Mapping[str, BanditEngine],
    compile: bool | None,
    progress_every: int,
    artefacts: bool,
    pad: bool | None,
) -> list[SolveResult]:
    """One train_batch call: every training multi-domain, or every one single-network (one
    subdomain, no interface terms; its arms stay the single-network arm in the results)."""
    first = trainings[0].request
    train_config = first.train_config(compile)
    if pad is None:
        pad = train_config.use_compile() and device.type != "cpu"
    k = len(trainings)
    extra = (1 << (k - 1).bit_length()) - k if pad else 0  # copies of the last training, dropped after
    family = get_family(first.family)
    pinn = first.pinn_config()
    if single_network:
        pinn = replace(pinn, subdomains=1)
    specs = [
        RunSpec(t.request.params, term_bits(t.arm_adam), None if t.arm_lbfgs is None else term_bits(t.arm_lbfgs),
                t.request.seed)
        for t in trainings
    ]  # fmt: skip
    sequential = any(t.request.mode == "sequential" for t in trainings)
    hook = _lbfgs_chooser(trainings, engines) if sequential else None
    if extra:
        specs += [specs[-1]] * extra
        hook, progress, should_stop = _padded(k, extra, hook, progress, should_stop)
    batch = train_batch(
        family,
        specs,
        pinn,
        train_config,
        device=device,
        dtype=first.dtype,
        progress=progress,
        progress_every=progress_every,
        between_phases=hook,
        should_stop=should_stop,
    )
    if extra:
        batch = _unpadded(batch, k)
    metrics = evaluate_batch(batch)
    models = models_from_batch(batch, metrics) if artefacts else [None] * len(trainings)
    results = []
    for j, (spec, outcome, m) in enumerate(zip(batch.specs, batch.outcomes, metrics, strict=True)):
        arm0, arm1 = (SINGLE_NETWORK, SINGLE_NETWORK) if single_network else spec.arms
        diverged = outcome.status == "diverged"
        cancelled = outcome.status == "cancelled"
        # The phase-0 reward is what the between-phases hook saw (and told an engine).
        r0 = None if outcome.phase0_rel_l2 is None else reward_of(outcome.phase0_rel_l2)
        solution = None
        if artefacts and not cancelled:
            grid = family.reference_grid(spec.params)
            pred = models[j].predict(grid.points()).reshape(grid.u.shape)
            solution = solution_npz(family.coords, grid.axes, pred, grid.u)
        results.append(
            SolveResult(
                status=outcome.status,
                arm_adam=arm0,
                arm_lbfgs=arm1,
                rel_l2=None if cancelled else m.rel_l2,
                max_abs=None if cancelled else m.max_abs,
                reward=None if cancelled else reward_of(math.nan) if diverged else m.reward,
                reward_phase0=r0,
                rel_l2_phase0=outcome.phase0_rel_l2,
                outcome=asdict(outcome),
                seconds=0.0,  # set by run_solve_batch for the whole batch
                batch_seconds=0.0,
                batch_size=len(trainings),
                device=str(batch.net.theta.device),
                model=models[j].to_bytes() if artefacts and not cancelled else None,
                solution=solution,
            )
        )
    return results


def _padded(k: int, extra: int, hook, progress, should_stop):
    """The trainer's callbacks for K real runs trained among K + ``extra``: the padding runs take
    the last real run's L-BFGS arm, are left out of progress reports, and are stopped with the last
    real run still going (so that a batch whose runs are all cancelled ends)."""
    padding = list(range(k, k + extra))

    def choose(metrics: list[Metrics]) -> list[Arm]:
        arms = list(hook(metrics[:k]))
        return arms + [arms[-1]] * extra

    def report(p: Progress) -> None:
        progress(replace(p, loss=p.loss[:k]))

    named: set[int] = set()

    def stop() -> list[int]:
        now = [j for j in should_stop() if j < k]
        named.update(now)
        return now + padding if len(named) == k else now

    return (None if hook is None else choose, None if progress is None else report,
            None if should_stop is None else stop)  # fmt: skip


def _unpadded(batch: TrainedBatch, k: int) -> TrainedBatch:
    """The first ``k`` runs of a padded batch: their specs, outcomes, problem rows and weights."""
    net = copy.deepcopy(batch.net)
    net.theta = torch.nn.Parameter(batch.net.theta.detach()[:k].clone())
    net.center, net.scale, net.n_runs = net.center[:k], net.scale[:k], k
    problem = batch.problem.first_runs(k)
    return replace(batch, problem=problem, net=net, specs=batch.specs[:k], outcomes=batch.outcomes[:k])


def _lbfgs_chooser(
    trainings: Sequence[Training], engines: Mapping[str, BanditEngine]
) -> Callable[[list[Metrics]], list[Arm]]:
    """The trainer's between-phases hook: explicit L-BFGS arms stay; learned ones come from their
    engine's ``report_phase0``, pending-aware within the batch (runs in order, per engine)."""

    def choose(metrics: list[Metrics]) -> list[Arm]:
        pending: dict[str, list] = {}
        arms: list[Arm] = []
        for t, m in zip(trainings, metrics, strict=True):
            if t.lbfgs_policy is None:
                arms.append(term_bits(t.arm_lbfgs if t.arm_lbfgs is not None else t.arm_adam))
                continue
            engine = engines[t.engine_key]
            r0 = reward_of(m.rel_l2)
            seen = pending.setdefault(t.engine_key, [])
            arm = engine.report_phase0(t.request.params, t.arm_adam, r0, pending=seen, policy=t.lbfgs_policy)[0]
            seen.append((t.request.params, r0, arm))
            arms.append(term_bits(arm))  # what the trainer trains with (the single network: none)
        return arms

    return choose

"""A solve request -> runs -> batches of trainings -> per-request results: the one place "solve"
is glued together.

- ``SolveRequest``: what a user asks for (family, parameters, arm choice, budgets, point counts,
  seed, ...), validated once; a bad field raises ``pydantic.ValidationError`` naming it.
- ``Run``: a request whose arms are decided (the caller, the dispatcher or a campaign resolves
  ``learned``); in sequential mode the L-BFGS arm may be left to an ``LbfgsChooser`` (a bandit
  engine) that picks it after the Adam phase.
- ``run_solve_batch(runs, ...)``: trains runs of one batch key as one batch (its ``train_batch``
  calls planned by ``batching.plan_groups``) and returns one ``SolveResult`` per run: status,
  errors, reward, timings, phase losses, the trained model and the solution grid as bytes.

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
from dataclasses import fields as fields_of
from typing import Any, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from metalic.arms import SINGLE_NETWORK_LABEL, Arm
from metalic.bandit.policies import learning_policies
from metalic.batching import Group, batch_key, pad_batches, plan_groups
from metalic.families import get_family
from metalic.pinn.artefact import evaluate_batch, models_from_batch
from metalic.pinn.causal import DEFAULT_CHUNKS, DEFAULT_EPS, CausalSchedule
from metalic.pinn.evaluate import Metrics, error_over_time, reward_of
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import Progress, RunSpec, TrainConfig, TrainedBatch, train_batch
from metalic.settings import get_settings, resolve_device

LEARNED = "learned"


class Recipe(BaseModel):
    """How a training runs beyond its arms. ``causal``: causal weights on the residual in the Adam
    phase (``metalic.pinn.causal``), with the ``eps`` schedule over ``chunks`` time chunks.
    ``march``: the time slabs train one after another (``TrainConfig.march``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    causal: bool = False
    eps: tuple[float, ...] = Field(DEFAULT_EPS, min_length=1, max_length=16, description="the causal eps schedule")
    chunks: int = Field(DEFAULT_CHUNKS, ge=1, le=1024, description="time chunks of the domain (causal)")
    march: bool = Field(False, description="train the time slabs one after another (a split along t)")

    @field_validator("eps")
    @classmethod
    def _eps(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        CausalSchedule(eps=value).validate()
        return value

    @property
    def plain(self) -> bool:
        return not (self.causal or self.march)

    def profile(self) -> dict[str, Any]:
        """What a study's profile records of a recipe other than the default: causal (the eps
        schedule and chunks also serve arms that carry the causal bit) and marching."""
        return {"causal": self.causal, "eps": list(self.eps), "chunks": self.chunks, "march": self.march}


@dataclass(frozen=True)
class ArmChoice:
    """An arm as asked: an explicit arm, or ``learned`` (with an optional policy for this request)."""

    arm: Arm | None  # None when learned
    policy: str | None = None  # learned: None = the study's own policy, else a learning policy's name

    @property
    def learned(self) -> bool:
        return self.arm is None

    @staticmethod
    def parse(text: str) -> ArmChoice:
        """``learned``, ``learned:ts`` (ucb, ts, mean, random), or an arm for ``Arm.parse``."""
        value = text.strip().lower()
        if value == LEARNED:
            return ArmChoice(None)
        if value.startswith(LEARNED + ":"):
            policy = value.split(":", 1)[1]
            if policy not in learning_policies():
                raise ValueError(f"learned policy must be one of {', '.join(learning_policies())}, got {policy!r}")
            return ArmChoice(None, policy)
        return ArmChoice(Arm.parse(value))

    def __str__(self) -> str:
        if self.arm is not None:
            return self.arm.label
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
    prior: bool = Field(
        True,
        description="a learned arm comes from the study that starts from the family's shipped prior; "
        "false: from a study of the same budgets that learns from its own trainings only",
    )
    recipe: Recipe = Field(default_factory=Recipe, description="causal training (a time-dependent family)")

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
        if first is not None and first.arm is not None and first.arm.single:
            if choice.arm is not None and not choice.arm.single:
                raise ValueError(f"a {SINGLE_NETWORK_LABEL} Adam phase goes on as one network (omit arm_lbfgs)")
        elif choice.arm is not None and choice.arm.single:
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

    @model_validator(mode="after")
    def _recipe(self) -> SolveRequest:
        """Recipe bits and causal training need a time axis; marching, a split into time slabs and
        a single-mode request."""
        recipe, family = self.recipe, get_family(self.family)
        arms = [c.arm for c in (self.arm_choice, self.arm_lbfgs_choice) if c is not None and c.arm is not None]
        steady = f"needs a time-dependent family; {family.name} is steady"
        if any(a.recipe for a in arms) and family.time_axis is None:
            raise _located_error(("arm",), f"a recipe bit {steady}", self.arm)
        if not recipe.plain and family.time_axis is None:
            raise _located_error(("recipe", "causal" if recipe.causal else "march"), steady, True)
        if recipe.march and self.mode == "sequential":
            message = "trains each slab's two phases in turn; a sequential request's L-BFGS arm is not"
            raise _located_error(("recipe", "march"), message, True)
        if recipe.march and any(i.axis != family.time_axis for i in family.decomposition(self.subdomains).interfaces):
            axis = family.coords[family.slab_axis]
            raise _located_error(
                ("recipe", "march"), f"needs a split into time slabs; {family.name} is split along {axis}", True
            )
        return self

    @model_validator(mode="after")
    def _cost(self, info: ValidationInfo) -> SolveRequest:
        """The whole request's size under the server's cap (each cap alone does not bound it)."""
        if info.context and info.context.get("trusted"):
            return self
        cap = get_settings().max_request_cost
        if self.cost() > cap:
            message = (f"the request's cost (adam + lbfgs) x (collocation + boundary) x subdomains (2 marching) = "
                       f"{self.cost():.3g} point-iterations is above the server's cap of {cap:.3g}")  # fmt: skip
            raise _located_error(("adam",), message, self.adam)
        return self

    # ---- derived -------------------------------------------------------------------------------
    def cost(self) -> float:
        """Point-iterations: (adam + lbfgs) x (collocation + boundary) x subdomains (the family's
        split when none is asked for), of which a marching training evaluates two at a time."""
        subdomains = self.subdomains or get_family(self.family).default_decomposition.n_subdomains
        if self.recipe.march:
            subdomains = min(subdomains, 2)
        return float(self.adam + self.lbfgs) * (self.collocation + self.boundary) * subdomains

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
            causal_chunks=self.recipe.chunks,
        )

    def train_config(self, compile: bool | None = None) -> TrainConfig:
        return TrainConfig(
            adam=self.adam,
            lbfgs=self.lbfgs,
            adam_lr=self.adam_lr,
            lbfgs_lr=self.lbfgs_lr,
            compile=compile,
            causal=CausalSchedule(eps=self.recipe.eps),
            march=self.recipe.march,
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
            **({"recipe": self.recipe.profile()} if self.recipe != Recipe() else {}),
            "layers": list(pinn.layers_for(get_family(self.family))),
            "dtype": self.dtype,
        }

    def profile_key(self) -> str:
        return profile_key(self.profile())

    def batch_key(self) -> str:
        """Requests with equal keys train together in one batch (arms, parameters, seeds may differ)."""
        return batch_key(self.family, self.profile_key(), self.device)


def _located_error(loc: tuple[str, ...], message: str, value: Any) -> ValidationError:
    """A validation error at ``loc`` from a check on the whole request (a model validator)."""
    error = InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=value)
    return ValidationError.from_exception_data("SolveRequest", [error])


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
class Run:
    """A request with its arms decided: what a batch trains.

    ``arm_lbfgs``: None = the Adam arm (single mode). In sequential mode either an explicit arm or
    ``lbfgs_policy``: a policy of the chooser ``choosers[chooser]`` (``run_solve_batch``), which
    picks the L-BFGS arm from the reward measured after the Adam phase.
    """

    request: SolveRequest
    arm_adam: Arm
    arm_lbfgs: Arm | None = None
    lbfgs_policy: str | None = None
    chooser: str | None = None

    @staticmethod
    def explicit(request: SolveRequest) -> Run:
        """For a request whose arms are all explicit (ValueError when one is ``learned``)."""
        first, second = request.arm_choice, request.arm_lbfgs_choice
        if first.learned or (second is not None and second.learned):
            raise ValueError("arm: 'learned' needs a bandit study (submit it to the service)")
        return Run(request, first.arm, None if second is None else second.arm)

    def spec(self) -> RunSpec:
        """What the trainer needs of this run."""
        request = self.request
        causal = request.recipe.causal or "causal" in self.arm_adam.recipe_flags
        lbfgs = None if self.arm_lbfgs is None else self.arm_lbfgs.base  # the recipe is the Adam phase's
        return RunSpec(request.params, self.arm_adam, lbfgs, request.seed, causal)


class LbfgsChooser(Protocol):
    """Picks L-BFGS arms after the Adam phase (``BanditEngine`` is one)."""

    def report_adam(
        self, params: Mapping[str, float], arm_adam: Arm, reward_adam: float, q: int = 1,
        pending: Sequence[tuple[Mapping[str, float], float, Arm]] = (), policy: str | None = None,
    ) -> list[Arm]: ...  # fmt: skip


@dataclass
class SolveResult:
    """What one training gave. ``reward`` = -log10(capped rel. L2); a diverged run gets the capped
    reward (-2) whatever its frozen weights score. ``reward_adam`` / ``rel_l2_adam``: after the
    Adam phase, when measured (sequential). Bytes: the model file and the solution ``.npz``."""

    status: str  # ok / diverged / cancelled
    arm_adam: Arm
    arm_lbfgs: Arm
    rel_l2: float | None
    max_abs: float | None
    reward: float | None
    reward_adam: float | None
    rel_l2_adam: float | None
    outcome: dict[str, Any]
    seconds: float  # this run's share of the batch's wall time
    batch_seconds: float
    batch_size: int
    device: str
    model: bytes | None = field(default=None, repr=False)
    solution: bytes | None = field(default=None, repr=False)

    @staticmethod
    def from_summary(data: Mapping[str, Any]) -> SolveResult:
        """Back from ``summary()`` (without the bytes); older summaries (arm bits, ``*_phase0``) too."""
        fields = {k: v for k, v in data.items() if k not in ("arm_adam_terms", "arm_lbfgs_terms")}
        fields["arm_adam"] = Arm.parse(fields["arm_adam"])
        fields["arm_lbfgs"] = Arm.parse(fields["arm_lbfgs"])
        for old, new in (("reward_phase0", "reward_adam"), ("rel_l2_phase0", "rel_l2_adam")):
            if old in fields:
                fields[new] = fields.pop(old)
        return SolveResult(**fields)

    def summary(self) -> dict[str, Any]:
        """JSON-ready (no bytes; arms as labels; non-finite numbers as None)."""
        out = {f.name: getattr(self, f.name) for f in fields_of(SolveResult) if f.name not in ("model", "solution")}
        out["arm_adam"], out["arm_lbfgs"] = self.arm_adam.label, self.arm_lbfgs.label
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
    runs: Sequence[Run],
    device: str | torch.device | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], Collection[int]] | None = None,
    choosers: Mapping[str, LbfgsChooser] | None = None,
    compile: bool | None = None,
    progress_every: int = 10,
    artefacts: bool = True,
    prefetch: bool | None = None,
    pad: bool | None = None,
) -> list[SolveResult]:
    """Train ``runs`` (all with one ``batch_key``) as one batch; one result per run.

    ``progress(Progress)`` gets every run's loss every ``progress_every`` iterations;
    ``should_stop() -> run indices`` is polled at the same points (those runs end ``cancelled``).
    ``choosers``: what picks L-BFGS arms after the Adam phase (sequential), by ``Run.chooser``.
    The batch's ``train_batch`` calls come from ``batching.plan_groups``: the split runs, then the
    single-network runs (``Progress.runs`` says which runs a report is about).
    ``prefetch``: solve the runs' reference grids in background threads during the training (None:
    when it trains on an accelerator; on the CPU the solver threads would slow the training's cores).
    ``pad``: train each group at its size class (``batching.size_class``; the extra runs' results
    are dropped), so that a long-lived worker compiles one loss per size class, not per batch size
    (None: ``batching.pad_batches``, when the loss is compiled on an accelerator).
    """
    if not runs:
        return []
    choosers = choosers or {}
    _check_batch(runs, choosers)
    device = device if isinstance(device, torch.device) else resolve_device(device)  # once, for every group
    if prefetch is None:
        prefetch = device.type != "cpu"
    if prefetch:
        # Every run is scored on its reference grid after training (and after Adam in sequential
        # mode): solve the grids in background threads now, while the device trains.
        get_family(runs[0].request.family).prefetch_references([r.request.params for r in runs])
    if pad is None:
        pad = pad_batches(runs[0].request.train_config(compile).use_compile(), device.type)
    start = time.perf_counter()
    results: dict[int, SolveResult] = {}
    for group in plan_groups([r.arm_adam.single for r in runs], pad):
        members = [runs[j] for j in group.runs]
        report = None if progress is None else _progress_of(group.runs, progress)
        stop = None if should_stop is None else _stops_of(group.runs, should_stop)
        batch = _train_group(members, group, device, report, stop, choosers, compile, progress_every)
        for j, res in zip(group.runs, _results(batch, artefacts), strict=True):
            results[j] = res
    wall = time.perf_counter() - start
    for res in results.values():
        res.seconds, res.batch_seconds, res.batch_size = wall / len(runs), wall, len(runs)
    return [results[j] for j in range(len(runs))]


def _check_batch(runs: Sequence[Run], choosers: Mapping[str, LbfgsChooser]) -> None:
    keys = {r.request.batch_key() for r in runs}
    if len(keys) != 1:
        raise ValueError(f"runs of one batch must share a batch key, got {sorted(keys)}")
    for r in runs:
        if r.lbfgs_policy is not None and r.chooser not in choosers:
            raise ValueError(f"run needs chooser {r.chooser!r} to choose its L-BFGS arm")


def _progress_of(runs: Sequence[int], progress: Callable[[Progress], None]) -> Callable[[Progress], None]:
    return lambda p: progress(replace(p, runs=[runs[i] for i in p.runs] if p.runs is not None else list(runs)))


def _stops_of(runs: Sequence[int], should_stop: Callable[[], Collection[int]]) -> Callable[[], list[int]]:
    def local() -> list[int]:
        named = set(should_stop())
        return [i for i, j in enumerate(runs) if j in named]

    return local


def _train_group(
    runs: list[Run],
    group: Group,
    device: torch.device,
    progress,
    should_stop,
    choosers: Mapping[str, LbfgsChooser],
    compile: bool | None,
    progress_every: int,
) -> TrainedBatch:
    """One ``train_batch`` call: every run multi-domain, or every one single-network (one
    subdomain, no interface terms), padded to ``group.size`` runs and trimmed back afterwards."""
    first = runs[0].request
    pinn = first.pinn_config()
    if group.single_network:
        pinn = replace(pinn, subdomains=1)
    specs = [r.spec() for r in runs]
    sequential = any(r.request.mode == "sequential" for r in runs)
    hook = _lbfgs_chooser(runs, choosers) if sequential else None
    k, extra = len(runs), group.size - len(runs)  # the extra runs copy the last one
    if extra:
        specs += [specs[-1]] * extra
        hook, progress, should_stop = _padded(k, extra, hook, progress, should_stop)
    batch = train_batch(
        get_family(first.family),
        specs,
        pinn,
        first.train_config(compile),
        device=device,
        dtype=first.dtype,
        progress=progress,
        progress_every=progress_every,
        between_phases=hook,
        should_stop=should_stop,
    )
    return _unpadded(batch, k) if extra else batch


def _results(batch: TrainedBatch, artefacts: bool) -> list[SolveResult]:
    """One result per run of a trained group (cancelled runs: no errors, no bytes)."""
    metrics = evaluate_batch(batch)
    models = models_from_batch(batch, metrics) if artefacts else [None] * len(batch.specs)
    family = batch.family
    results = []
    for spec, outcome, m, model in zip(batch.specs, batch.outcomes, metrics, models, strict=True):
        cancelled = outcome.status == "cancelled"
        solution = over_time = None
        if artefacts and not cancelled:
            grid = family.reference_grid(spec.params)
            pred = model.predict(grid.points()).reshape(grid.u.shape)
            solution = solution_npz(family.coords, grid.axes, pred, grid.u)
            if family.time_axis is not None:
                error = error_over_time(pred, grid.u, family.time_axis)
                over_time = {"t": _rounded(grid.axes[family.time_axis]), "error": _rounded(error)}
        # The Adam-phase reward is what the between-phases hook saw (and told a chooser).
        rel_l2_adam = outcome.rel_l2_adam
        results.append(
            SolveResult(
                status=outcome.status,
                arm_adam=spec.arms[0],
                arm_lbfgs=spec.arms[1],
                rel_l2=None if cancelled else m.rel_l2,
                max_abs=None if cancelled else m.max_abs,
                reward=None if cancelled else reward_of(math.nan) if outcome.status == "diverged" else m.reward,
                reward_adam=None if rel_l2_adam is None else reward_of(rel_l2_adam),
                rel_l2_adam=rel_l2_adam,
                outcome={**asdict(outcome), **({"error_over_time": over_time} if over_time else {})},
                seconds=0.0,  # set by run_solve_batch for the whole batch
                batch_seconds=0.0,
                batch_size=len(batch.specs),
                device=str(batch.net.theta.device),
                model=model.to_bytes() if artefacts and not cancelled else None,
                solution=solution,
            )
        )
    return results


def _rounded(values) -> list[float | None]:
    """Four significant digits (JSON-sized); a non-finite value is None."""
    return [float(f"{v:.4g}") if math.isfinite(v) else None for v in np.asarray(values, float).tolist()]


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


def _lbfgs_chooser(runs: Sequence[Run], choosers: Mapping[str, LbfgsChooser]) -> Callable[[list[Metrics]], list[Arm]]:
    """The trainer's between-phases hook: explicit L-BFGS arms stay; learned ones come from their
    chooser's ``report_adam``, pending-aware within the batch (runs in order, per chooser)."""

    def choose(metrics: list[Metrics]) -> list[Arm]:
        pending: dict[str, list] = {}
        arms: list[Arm] = []
        for r, m in zip(runs, metrics, strict=True):
            if r.lbfgs_policy is None:
                arms.append(r.arm_lbfgs if r.arm_lbfgs is not None else r.arm_adam)
                continue
            reward_adam = reward_of(m.rel_l2)
            seen = pending.setdefault(r.chooser, [])
            arm = choosers[r.chooser].report_adam(r.request.params, r.arm_adam, reward_adam, pending=seen,
                                                  policy=r.lbfgs_policy)[0]  # fmt: skip
            seen.append((r.request.params, reward_adam, arm))
            arms.append(arm)
        return arms

    return choose

"""The REST API's request and response bodies (Pydantic). They describe the OpenAPI schema too."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from metalic.jobs import Recipe, SolveRequest

Mode = Literal["single", "sequential"]
MAX_ID = 2**53  # ids and cursors stay exact in JSON numbers
Id = Annotated[int, Path(ge=1, le=MAX_ID, description="an id")]


class Problem(BaseModel):
    """An error: ``detail`` is a message, or a list of ``{loc, msg, type}`` naming each bad field."""

    detail: str | list[dict]


# ---- families ---------------------------------------------------------------------------------------
class ParamOut(BaseModel):
    name: str
    lo: float
    hi: float
    default: float
    description: str


class TermOut(BaseModel):
    bit: int
    name: str
    formula: str


class FamilyOut(BaseModel):
    name: str
    equation: str
    coords: list[str]
    params: list[ParamOut]
    subdomains: int
    interfaces: int
    terms: list[TermOut]
    default_budget: dict[str, int]
    default_points: dict[str, int | None]
    recommended: dict[str, Any] = Field(
        default_factory=dict, description="a solve body this family is best trained with (stated, not applied)"
    )
    links: dict[str, str]


# ---- solving ----------------------------------------------------------------------------------------
class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adam: int = Field(1000, ge=0, description="Adam iterations")
    lbfgs: int = Field(1000, ge=0, description="L-BFGS iterations")


class Points(BaseModel):
    model_config = ConfigDict(extra="forbid")
    collocation: int = Field(1000, description="collocation points per subdomain")
    boundary: int = Field(100, description="boundary / initial points per subdomain")
    interface: int | None = Field(None, description="points per interface (default: the family's)")


class SolveBody(BaseModel):
    """A PDE instance to solve. ``arm``: interface terms (``u,flux``, 9 bits, ``all``, ``none``),
    ``single-domain`` (one network, no split) or ``learned`` (the study's policy; ``learned:ts``,
    ``learned:ucb``, ``learned:mean``)."""

    model_config = ConfigDict(extra="forbid")
    params: dict[str, float] = Field(default_factory=dict)
    arm: str = "learned"
    mode: Mode = "single"
    arm_lbfgs: str | None = Field(None, description="sequential mode: the L-BFGS arm (default learned)")
    budget: Budget = Field(default_factory=Budget)
    points: Points = Field(default_factory=Points)
    subdomains: int | None = Field(None, description="N equal slabs instead of the family's split")
    final_time_data: bool = False
    side_data: bool = Field(False, description="periodic family (kdv): data on the x-edges from the reference")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    prior: bool = Field(
        True, description="learned arms: from the study on the family's shipped prior (false: a study without one)"
    )
    recipe: Recipe = Field(default_factory=Recipe, description="causal training: {causal, eps, chunks}")

    # SolveRequest field -> location in this body
    LOCATIONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "adam": ("budget", "adam"),
        "lbfgs": ("budget", "lbfgs"),
        "collocation": ("points", "collocation"),
        "boundary": ("points", "boundary"),
        "interface_points": ("points", "interface"),
    }

    def request(self, family: str) -> SolveRequest:
        """The validated SolveRequest (pydantic's ValidationError names SolveRequest's fields)."""
        return SolveRequest(
            family=family,
            params=self.params,
            mode=self.mode,
            arm=self.arm,
            arm_lbfgs=self.arm_lbfgs,
            adam=self.budget.adam,
            lbfgs=self.budget.lbfgs,
            collocation=self.points.collocation,
            boundary=self.points.boundary,
            interface_points=self.points.interface,
            subdomains=self.subdomains,
            final_time_data=self.final_time_data,
            side_data=self.side_data,
            seed=self.seed,
            device=self.device,
            dtype=self.dtype,
            prior=self.prior,
            recipe=self.recipe,
        )


class ProgressOut(BaseModel):
    phase: str | None = None
    iteration: int | None = None
    total: int | None = None
    loss: float | None = None


class ErrorOverTime(BaseModel):
    """e(t): the RMS error over space at each time t of the reference grid, over the RMS of the
    whole reference (the overall rel. L2 is the RMS of e over t)."""

    t: list[float]
    error: list[float | None]


class ResultOut(BaseModel):
    status: str = Field(description="ok, or diverged (recorded with the capped reward)")
    rel_l2: float | None
    max_abs: float | None
    reward: float | None
    reward_phase0: float | None
    rel_l2_phase0: float | None
    adam_iterations: int
    lbfgs_iterations: int
    lbfgs_stop: str
    lbfgs_rejected: int = Field(
        0, description="L-BFGS steps undone by the step guard (each raised the loss 10x or to NaN)"
    )
    loss: float | None
    seconds: float = Field(description="this task's share of its batch's wall time")
    batch_size: int
    device: str
    error_over_time: ErrorOverTime | None = Field(
        None, description="time-dependent family: the error at each time of the reference grid"
    )
    causal: dict[str, Any] | None = Field(None, description="a causal training: its last eps, stage, smallest weight")


class TaskOut(BaseModel):
    id: int
    state: str
    family: str
    params: dict[str, float]
    mode: str
    arm_requested: str
    arm_lbfgs_requested: str | None
    arm_adam: str | None = Field(description="the Adam-phase terms, once decided")
    arm_lbfgs: str | None = Field(description="the L-BFGS-phase terms, once decided")
    arm_policy: str | None
    owner: str | None
    campaign_id: int | None
    attempt: int
    progress: ProgressOut
    result: ResultOut | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str]


class TaskPage(BaseModel):
    items: list[TaskOut]
    next: str | None = Field(description="the next page, when there is one")


class SolutionOut(BaseModel):
    coords: list[str]
    axis0: list[float]
    axis1: list[float]
    prediction: list[list[float]] = Field(description="u[i][j] at (axis0[i], axis1[j])")
    reference: list[list[float]]


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: list[tuple[float, float]] = Field(description="[[x, y], ...] in the family's coordinates")


class PredictOut(BaseModel):
    values: list[float]


# ---- recommendations --------------------------------------------------------------------------------
class ArmOut(BaseModel):
    terms: str = Field(description="the arm's label: its terms, then +recipe bits (u,flux+causal)")
    bits: str = Field(description="the nine term bits (ten for single-domain)")
    recipe: list[str] = Field(default_factory=list, description="the training recipe that goes with these terms")
    predicted_error: float
    error_interval: tuple[float, float] = Field(description="95% credible interval of the relative L2 error")
    reward_mean: float
    reward_std: float
    observations: int = Field(0, description="trainings of this arm (this phase) the answer learned from")
    prior_observations: int = Field(0, description="... and those its prior learned from")


class RecommendationOut(BaseModel):
    family: str
    mode: str
    context: dict[str, float]
    source: Literal["snapshot", "prior", "none"] = Field(
        description="snapshot: the study's own (it may stand on a prior); prior: a shipped prior alone; none"
    )
    prior: str | None = Field(None, description="the prior under the answer (burgers-single-v1)")
    detail: str = Field(description="the source in words")
    study_id: int | None = Field(None, description="the study answering (None: no study yet)")
    profile: dict | None = None
    snapshot_version: int = Field(description="the study's snapshot (0: none yet)")
    observations: int = Field(description="the study's observations behind this answer")
    rank: str = Field("lcb", description="how the arms are ordered (lcb or mean)")
    arms: list[ArmOut] = Field(description="ranked arms (sequential: the Adam phase's); empty when source is none")
    arms_lbfgs: list[ArmOut] | None = None
    assumed_reward_phase0: float | None = None


# ---- admin ------------------------------------------------------------------------------------------
class CampaignBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: str
    heuristics: list[str] = Field(default_factory=lambda: ["ucb"])
    mode: Mode = "single"
    warmup: int = 5
    rounds: int = 20
    test: int = 10
    batch: int = 4
    seed: int = 0
    budget: Budget = Field(default_factory=lambda: Budget(adam=500, lbfgs=500))
    points: Points = Field(default_factory=Points)
    dtype: Literal["float32", "float64"] = "float32"
    prior: str | None = Field(None, description="learning engines start from this installed prior (burgers-single-v1)")
    subdomains: int | None = Field(None, ge=1, description="N equal slabs instead of the family's split")
    learns: list[str] = Field(default_factory=list, description="recipe bits the bandit chooses beside terms: causal")
    recipe: Recipe = Field(default_factory=Recipe, description="eps and chunks of causal runs; march")
    arm_kernel: Literal["hamming", "additive"] = Field(
        "hamming", description="the bandit's kernel on the term bits: the authors' (hamming) or with per-term effects"
    )
    warmup_arms: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="the warm-up's arms in turn instead of random ones: labels, or ['design']",
    )

    # field by field (pydantic reports every bad field at once), in the words of CampaignConfig
    @field_validator("warmup", "rounds", "test")
    @classmethod
    def _non_negative(cls, value: int, info: ValidationInfo) -> int:
        if value < 0:
            raise ValueError(f"{info.field_name}: must be non-negative, got {value}")
        return value

    @field_validator("batch")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"batch: must be at least 1, got {value}")
        return value


class CampaignOut(BaseModel):
    id: int
    name: str | None
    family: str
    state: str
    step: int
    steps: int
    config: dict
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    tasks: dict[str, int] = Field(description="the campaign's tasks by state")
    summary: list[dict] | None = Field(None, description="per heuristic, once finished")


class StudyOut(BaseModel):
    id: int
    key: str
    family: str
    mode: str
    policy: str
    profile: dict
    campaign_id: int | None
    heuristic: str | None
    observations: int
    snapshot_version: int
    last_refit: datetime | None
    hyperparameters: dict | None = None


class WorkerOut(BaseModel):
    id: str
    kind: str
    host: str
    pid: int
    device: str
    state: str
    current_batch: int | None
    started_at: datetime
    last_seen: datetime
    alive: bool

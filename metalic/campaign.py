"""Campaigns: the authors' protocol as a plan of steps, each step trained as shared batches.

For each policy (a campaign's "heuristics"): ``warmup`` rounds with random arms (or the config's
``warmup_arms`` in turn), then ``rounds`` online rounds on parameters drawn uniformly (one seeded
sequence, the same for every policy), each suggestion pending-aware within its chunk of
``batch`` rounds; then a test rollout on ``test`` held-out parameter points with the
posterior-mean arm (random arms for ``random``).
``fixed:`` uses its arm in every round, warm-up included. The policy ``single-domain`` trains
one network over the whole domain (no interface) as a baseline.

The learning policies (``Policy.learns``: ucb, ts, mean, random) start from the same random
warm-up, so it is trained once and every one of them observes it. A step is one chunk of one
stage for every policy at once: its runs share batches (``run_solve_batch``), and the engines
observe the step's results before the next step is planned. ``CampaignPlan`` knows the protocol
and nothing of where runs train: ``run_campaign`` executes it in this process; the service's
campaign stepper (``workers/campaigns.py``) executes the same plan through its task queue.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from metalic import priors
from metalic.arms import NONE, RECIPE_FLAGS, SWITCHES, Arm, all_arms, arm_set, split_arms
from metalic.bandit.engine import RANKINGS, BanditEngine, Observation
from metalic.bandit.policies import FixedArm, Policy, RandomArm, parse_policy
from metalic.bandit.space import ParamSpace
from metalic.bandit.surrogate import ARM_KERNELS
from metalic.batching import Queued, plan_all
from metalic.families import get_family
from metalic.jobs import Recipe, Run, SolveRequest, SolveResult, run_solve_batch
from metalic.pinn.causal import CausalSchedule
from metalic.pinn.evaluate import outcome_error
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import TrainConfig

WARMUP = "warmup"  # the owner of the learning policies' shared warm-up runs
STAGES = ("warmup", "online", "test")


@dataclass(frozen=True)
class CampaignConfig:
    family: str
    policies: tuple[str, ...] = ("ucb",)
    mode: str = "single"
    warmup: int = 5
    rounds: int = 20
    test: int = 10
    batch: int = 4
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    pinn: PinnConfig = field(default_factory=PinnConfig)
    ucb_schedule: str = "constant"
    device: str | None = None
    dtype: str = "float32"
    prior: str | None = None  # the learning engines stack on this prior (``metalic.priors``), e.g. burgers-single-v1
    # Recipe bits the learning engines choose beside the terms (``arms.RECIPE_FLAGS``: causal).
    learns: tuple[str, ...] = ()
    arm_kernel: str = "hamming"  # the learning engines' kernel on the term bits (surrogate.ARM_KERNELS)
    # The test rollout's ranking (engine.RANKINGS): the authors' posterior mean, or the interval's
    # pessimistic end, as the service recommends.
    test_rank: str = "mean"
    # The warm-up's arms, in turn over its contexts (labels; ``arms.design_arms()`` is one design),
    # instead of random ones. A sequential warm-up keeps each arm through both phases.
    warmup_arms: tuple[str, ...] = ()

    def validate(self) -> None:
        get_family(self.family)  # ValueError naming the known families
        if self.prior is not None:
            try:
                prior = priors.load(self.prior)
            except ValueError as exc:
                raise ValueError(f"prior: {exc}") from None
            if (prior.family, prior.mode) != (self.family, self.mode):
                raise ValueError(f"prior: {self.prior} is not a prior of {self.family} ({self.mode})")
        if self.mode not in ("single", "sequential"):
            raise ValueError(f"mode: must be 'single' or 'sequential', got {self.mode!r}")
        if self.learns:
            if tuple(self.learns) != RECIPE_FLAGS[: len(self.learns)]:
                raise ValueError(f"learns: recipe bits are {', '.join(RECIPE_FLAGS)}, got {', '.join(self.learns)}")
            if get_family(self.family).time_axis is None:
                raise ValueError(f"learns: {self.family} is steady; causal training needs a time axis")
            if self.prior is not None:
                raise ValueError("learns: the shipped priors have no recipe bits; leave out the prior")
        if self.test_rank not in RANKINGS:
            raise ValueError(f"test_rank: must be one of {', '.join(RANKINGS)}, got {self.test_rank!r}")
        if self.arm_kernel not in ARM_KERNELS:
            raise ValueError(f"arm_kernel: must be one of {', '.join(ARM_KERNELS)}, got {self.arm_kernel!r}")
        for label in self.warmup_arms:
            if Arm.parse(label, field="warmup_arms") not in arm_set(self.learns):
                raise ValueError(f"warmup_arms: {label} has a recipe bit the campaign does not learn")
        for name in ("warmup", "rounds", "test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be non-negative, got {getattr(self, name)}")
        if self.batch < 1:
            raise ValueError(f"batch: must be at least 1, got {self.batch}")
        if not self.policies:
            raise ValueError("heuristic: at least one is required")
        if len(set(self.policies)) != len(self.policies):
            raise ValueError("heuristic: each heuristic may be given once")
        parsed = [parse_policy(p, self.ucb_schedule) for p in self.policies]
        self.train.validate()
        self.pinn.validate()
        for p in parsed:  # every run must be a valid request (budgets under the caps, ...)
            self.request({}, NONE, seed=0, single_domain=not p.has_engine)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> CampaignConfig:
        """Back from ``to_dict`` (an older config names its policies ``heuristics`` and its budgets
        ``adam_iters`` / ``lbfgs_iters``)."""
        d = dict(data)
        d["policies"] = tuple(d.pop("policies") if "policies" in d else d.pop("heuristics"))
        train = dict(d["train"])
        for old, new in (("adam_iters", "adam"), ("lbfgs_iters", "lbfgs")):  # configs stored before the rename
            if old in train:
                train[new] = train.pop(old)
        if isinstance(train.get("causal"), Mapping):
            causal = train["causal"]
            train["causal"] = CausalSchedule(eps=tuple(causal["eps"]), tol=causal["tol"])
        d["train"] = TrainConfig(**train)
        d["learns"] = tuple(d.get("learns", ()))
        d["warmup_arms"] = tuple(d.get("warmup_arms", ()))
        pinn = dict(d["pinn"])
        pinn["layers"] = None if pinn.get("layers") is None else tuple(pinn["layers"])
        d["pinn"] = PinnConfig(**pinn)
        return CampaignConfig(**d)

    def request(
        self,
        params: Mapping[str, float],
        arm: Arm,
        seed: int,
        arm_lbfgs: Arm | None = None,
        lbfgs_policy: str | None = None,
        single_domain: bool = False,
    ) -> SolveRequest:
        """The SolveRequest of one campaign run (raises pydantic's ValidationError)."""
        sequential = self.mode == "sequential" and not single_domain
        lbfgs = None
        if sequential:
            lbfgs = f"learned:{lbfgs_policy}" if lbfgs_policy else (arm_lbfgs or arm).label
        return SolveRequest(
            family=self.family,
            params=dict(params),
            mode="sequential" if sequential else "single",
            arm=arm.label,
            arm_lbfgs=lbfgs,
            adam=self.train.adam,
            lbfgs=self.train.lbfgs,
            adam_lr=self.train.adam_lr,
            lbfgs_lr=self.train.lbfgs_lr,
            collocation=self.pinn.n_collocation,
            boundary=self.pinn.n_boundary,
            interface_points=self.pinn.n_interface,
            subdomains=1 if single_domain else self.pinn.subdomains,
            final_time_data=self.pinn.final_time_data,
            seed=seed,
            dtype=self.dtype,
            recipe=Recipe(eps=self.train.causal.eps, chunks=self.pinn.causal_chunks, march=self.train.march),
        )


@dataclass
class RoundRow:
    """One round of one policy, as ``rounds.csv`` / ``rounds.json`` record it (``record()``:
    there the policy is its "heuristic", the parameters its "context", the Adam-phase error
    "phase0_rel_l2", the names those files have always had)."""

    policy: str
    stage: str  # warmup / online / test
    round: int
    params: dict[str, float]
    arm: str
    arm_lbfgs: str
    rel_l2: float
    reward: float
    rel_l2_adam: float | None
    status: str
    seconds: float

    @staticmethod
    def from_record(rec: Mapping[str, Any]) -> RoundRow:
        """Back from ``record()`` (a ``rounds.json`` entry)."""
        return RoundRow(rec["heuristic"], rec["stage"], rec["round"], dict(rec["context"]), rec["arm"],
                        rec["arm_lbfgs"], rec["rel_l2"], rec["reward"], rec["phase0_rel_l2"], rec["status"],
                        rec["seconds"])  # fmt: skip

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(heuristic=out.pop("policy"), context=out.pop("params"), phase0_rel_l2=out.pop("rel_l2_adam"))
        return {c: out[c] for c in ROUND_COLUMNS}


@dataclass(frozen=True)
class Step:
    """One chunk of one stage, for every policy: rounds ``start .. start + len(points) - 1``."""

    index: int
    stage: str
    start: int  # round index of the first point (online rounds count after the warm-up)
    points: tuple[Mapping[str, float], ...]  # PDE parameters, one per round


@dataclass(frozen=True)
class CampaignRun:
    """One run of a step. ``owner``: the policy whose run it is, or WARMUP for the shared warm-up."""

    owner: str
    stage: str
    round: int
    params: Mapping[str, float]
    seed: int
    arm_adam: Arm
    arm_lbfgs: Arm | None = None  # sequential, explicit
    lbfgs_policy: str | None = None  # sequential, chosen after the Adam phase by the owner's engine
    single_domain: bool = False

    def run(self, config: CampaignConfig) -> Run:
        request = config.request(
            self.params, self.arm_adam, self.seed, self.arm_lbfgs, self.lbfgs_policy, self.single_domain
        )
        return Run(request, self.arm_adam, self.arm_lbfgs, self.lbfgs_policy, self.owner)


def points_for(config: CampaignConfig) -> tuple[list[dict], list[dict]]:
    """The seeded online and held-out test parameter points (the same for every policy)."""
    space = ParamSpace(get_family(config.family))
    online = space.sample(config.warmup + config.rounds, torch.Generator().manual_seed(config.seed))
    test = space.sample(config.test, torch.Generator().manual_seed(config.seed + 10_007))
    return online, test


def _random_arms(n: int, seed: int, learns: tuple[str, ...] = ()) -> list[tuple[Arm, Arm]]:
    """n seeded (Adam, L-BFGS) pairs of random arms (the Adam arm with the recipe bits the engines
    learn); a single-network Adam arm stays one network."""
    gen = torch.Generator().manual_seed(seed)
    arms = arm_set(learns)
    first = torch.randint(len(arms), (n,), generator=gen).tolist()
    second = torch.randint(len(split_arms()), (n,), generator=gen).tolist()
    pairs = [(arms[a], all_arms()[b]) for a, b in zip(first, second, strict=True)]
    return [(a, a if a.single else b) for a, b in pairs]


class CampaignPlan:
    """The protocol of one campaign: its steps, the runs of a step given the engines' state, and
    what the engines observe from a step's results. Deterministic in (config, engine states)."""

    def __init__(self, config: CampaignConfig):
        config.validate()
        self.config = config
        self.online, self.test = points_for(config)
        if config.warmup_arms:
            design = [Arm.parse(label) for label in config.warmup_arms]
            self.warm_arms = [(design[i % len(design)],) * 2 for i in range(config.warmup)]
        else:
            self.warm_arms = _random_arms(config.warmup, config.seed + 1, config.learns)
        self.test_arms = _random_arms(config.test, config.seed + 2, config.learns)  # the random policy's test rollout
        self.policies: dict[str, Policy] = {p: parse_policy(p, config.ucb_schedule) for p in config.policies}
        self.learning = [name for name, p in self.policies.items() if p.learns]

    @property
    def sequential(self) -> bool:
        return self.config.mode == "sequential"

    def steps(self) -> list[Step]:
        c = self.config
        out: list[Step] = []
        stages = (
            ("warmup", self.online[: c.warmup], 0),
            ("online", self.online[c.warmup :], c.warmup),
            ("test", self.test, 0),
        )
        for stage, points, offset in stages:
            for start in range(0, len(points), c.batch):
                chunk = tuple(points[start : start + c.batch])
                out.append(Step(len(out), stage, offset + start, chunk))
        return out

    def owners(self) -> list[str]:
        """Every owner of runs: the shared warm-up (when there are learning policies) and each policy."""
        return ([WARMUP] if self.learning and self.config.warmup else []) + list(self.config.policies)

    def example_request(self, owner: str) -> SolveRequest:
        """A request of ``owner``'s runs (a policy, or WARMUP): its mode and budget profile."""
        single_domain = owner != WARMUP and not self.policies[owner].has_engine
        return self.config.request({}, NONE, seed=0, single_domain=single_domain)

    def new_engines(self) -> dict[str, BanditEngine]:
        """A fresh engine per policy that has one (every one but single-domain)."""
        c = self.config
        prior = priors.load(c.prior) if c.prior else None
        return {
            name: BanditEngine(c.family, c.mode, p, seed=c.seed, prior=prior, recipe=c.learns, arm_kernel=c.arm_kernel)
            for name, p in self.policies.items()
            if p.has_engine
        }

    def runs(self, step: Step, engines: Mapping[str, BanditEngine]) -> list[CampaignRun]:
        """The runs of ``step``; online suggestions draw from the engines (pending-aware)."""
        out: list[CampaignRun] = []
        if step.stage == "warmup" and self.learning:
            for j, params in enumerate(step.points):
                a0, a1 = self.warm_arms[step.start + j]
                rnd = step.start + j
                out.append(CampaignRun(WARMUP, step.stage, rnd, params, self.config.seed + rnd, a0,
                                       a1 if self.sequential else None))  # fmt: skip
        for name, policy in self.policies.items():
            if step.stage == "warmup" and policy.learns:
                continue  # trained once in the shared warm-up
            out.extend(self._policy_runs(step, name, policy, engines.get(name)))
        return out

    def _policy_runs(self, step: Step, name: str, policy: Policy, engine: BanditEngine | None) -> list[CampaignRun]:
        """One policy's runs of a step."""
        seq = self.sequential
        if not policy.has_engine:  # the single-domain baseline
            return [CampaignRun(name, step.stage, step.start + j, params, self._seed(step, j), NONE, single_domain=True)
                    for j, params in enumerate(step.points)]  # fmt: skip
        out: list[CampaignRun] = []
        chosen: list[tuple[Mapping[str, float], Arm]] = []
        for j, params in enumerate(step.points):
            a1, lbfgs_policy = None, None
            if isinstance(policy, FixedArm):
                a0 = a1 = policy.arm
            elif step.stage == "test" and isinstance(policy, RandomArm):
                a0, a1 = self.test_arms[step.start + j]
            elif step.stage == "test":
                a0 = engine.recommend(params, top=1, rank=self.config.test_rank)[0].arm  # "mean": the authors'
                lbfgs_policy = "mean"
            else:
                a0 = engine.suggest(params, pending=chosen)[0]
                lbfgs_policy = policy.name
            chosen.append((params, a0))
            out.append(CampaignRun(name, step.stage, step.start + j, params, self._seed(step, j), a0,
                                   a1 if seq else None, lbfgs_policy if seq else None))  # fmt: skip
        return out

    def _seed(self, step: Step, j: int) -> int:
        return self.config.seed + step.start + j

    def observe(
        self, engines: Mapping[str, BanditEngine], runs: Sequence[CampaignRun], results: Sequence[SolveResult]
    ) -> None:
        """Feed a step's results to the engines that learn from them (nothing from the test stage)."""
        per_engine: dict[str, list[Observation]] = {}
        for run, res in zip(runs, results, strict=True):
            if run.stage == "test" or run.single_domain:
                continue
            obs = Observation(
                dict(run.params),
                res.arm_adam,
                res.reward,
                res.arm_lbfgs if self.sequential else None,
                res.reward_adam if self.sequential else None,
            )
            for name in self.learning if run.owner == WARMUP else [run.owner]:
                per_engine.setdefault(name, []).append(obs)
        for name, obs in per_engine.items():
            engines[name].observe(*obs)

    def rows(self, runs: Sequence[CampaignRun], results: Sequence[SolveResult]) -> list[RoundRow]:
        """One row per (policy, round); the shared warm-up appears under every learning policy."""
        out = []
        for run, res in zip(runs, results, strict=True):
            for name in self.learning if run.owner == WARMUP else [run.owner]:
                out.append(
                    RoundRow(
                        name,
                        run.stage,
                        run.round,
                        dict(run.params),
                        res.arm_adam.label,
                        res.arm_lbfgs.label,
                        res.rel_l2,
                        res.reward,
                        res.rel_l2_adam,
                        res.status,
                        res.seconds,
                    )
                )
        return out

    def order(self, rows: list[RoundRow]) -> list[RoundRow]:
        """Rows by policy (as configured), then stage, then round."""
        rank = {name: i for i, name in enumerate(self.config.policies)}
        return sorted(rows, key=lambda r: (rank[r.policy], STAGES.index(r.stage), r.round))


def run_trainings(
    config: CampaignConfig, runs: Sequence[CampaignRun], engines: Mapping[str, BanditEngine]
) -> list[SolveResult]:
    """Train a step's runs in this process, batched as the planner packs them."""
    planned = [r.run(config) for r in runs]
    results: list[SolveResult | None] = [None] * len(runs)
    for batch in plan_all([Queued(r.request.batch_key()) for r in planned]):
        got = run_solve_batch(
            [planned[i] for i in batch],
            device=config.device,
            choosers=engines,
            compile=config.train.compile,
            artefacts=False,
        )
        for i, r in zip(batch, got, strict=True):
            results[i] = r
    return results


def run_campaign(
    config: CampaignConfig, progress: Callable[[int, int], None] | None = None
) -> tuple[list[RoundRow], dict[str, BanditEngine]]:
    """Every step in this process; ``progress(steps_done, steps)`` after each step."""
    plan = CampaignPlan(config)
    engines = plan.new_engines()
    rows: list[RoundRow] = []
    steps = plan.steps()
    for n, step in enumerate(steps, 1):
        runs = plan.runs(step, engines)
        results = run_trainings(config, runs, engines)
        plan.observe(engines, runs, results)
        rows.extend(plan.rows(runs, results))
        if progress is not None:
            progress(n, len(steps))
    return plan.order(rows), engines


def run_policy(config: CampaignConfig, policy: str) -> tuple[list[RoundRow], BanditEngine | None]:
    """One policy's campaign in this process: its rows and its engine (None for single-domain)."""
    rows, engines = run_campaign(replace(config, policies=(policy,)))
    return rows, engines.get(policy)


ROUND_COLUMNS = ("heuristic", "stage", "round", "context", "arm", "arm_lbfgs", "rel_l2", "reward",
                 "phase0_rel_l2", "status", "seconds")  # fmt: skip


def write_outputs(rows: list[RoundRow], engines: Mapping[str, BanditEngine | None], out: Path) -> None:
    """rounds.csv, rounds.json, one policy snapshot per policy, and the figures."""
    out.mkdir(parents=True, exist_ok=True)
    records = [r.record() for r in rows]
    (out / "rounds.json").write_text(json.dumps(records, indent=1))
    with (out / "rounds.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(ROUND_COLUMNS)
        for rec in records:
            cells = {**rec, "context": json.dumps(rec["context"]), "seconds": f"{rec['seconds']:.3f}"}
            writer.writerow([cells[c] for c in ROUND_COLUMNS])
    for name, engine in engines.items():
        if engine is not None:
            (out / f"policy_{policy_file_name(name)}.json").write_text(json.dumps(engine.snapshot()))
    plot_campaign(rows, out)


def policy_file_name(policy: str) -> str:
    return policy.replace(":", "_").replace(",", "+")


def switch_frequency(arms: Sequence[Arm]) -> list[float]:
    """How often each switch (``arms.SWITCHES``: the nine terms, then one network) was on."""
    if not arms:
        return [0.0] * len(SWITCHES)
    return [sum(a.switches[i] for a in arms) / len(arms) for i in range(len(SWITCHES))]


def plot_campaign(rows: list[RoundRow], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    policies = list(dict.fromkeys(r.policy for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5), constrained_layout=True)
    for p in policies:
        online = [r for r in rows if r.policy == p and r.stage != "test"]
        err = np.cumsum([outcome_error(r.rel_l2, r.status) for r in online])
        axes[0].plot(np.arange(1, len(err) + 1), err, label=p)
    axes[0].set_xlabel("round")
    axes[0].set_ylabel("accumulated relative L2 error")
    axes[0].legend()
    data = [[outcome_error(r.rel_l2, r.status) for r in rows if r.policy == p and r.stage == "test"] for p in policies]
    if any(data):
        axes[1].boxplot([d or [np.nan] for d in data], tick_labels=policies)
        axes[1].set_yscale("log")
    axes[1].set_ylabel("test relative L2 error")
    axes[1].tick_params(axis="x", rotation=30)
    width = 0.8 / max(len(policies), 1)
    for i, p in enumerate(policies):
        freq = switch_frequency([Arm.parse(r.arm) for r in rows if r.policy == p and r.stage == "online"])
        axes[2].bar(np.arange(len(SWITCHES)) + i * width, freq, width, label=p)
    axes[2].set_xticks(np.arange(len(SWITCHES)) + 0.4 - width / 2, SWITCHES, rotation=45)
    axes[2].set_ylabel("fraction of online rounds with the term on")
    fig.savefig(out / "campaign.png", dpi=100)
    plt.close(fig)


def summarise(rows: list[RoundRow]) -> list[dict]:
    """Per policy: accumulated online error, mean / median test error; when an arm carried a recipe
    bit, how often each was chosen online and in the test rollout (``recipe_online`` / ``recipe_test``)."""
    import numpy as np

    out = []
    for p in dict.fromkeys(r.policy for r in rows):
        online = [outcome_error(r.rel_l2, r.status) for r in rows if r.policy == p and r.stage != "test"]
        test = [outcome_error(r.rel_l2, r.status) for r in rows if r.policy == p and r.stage == "test"]
        summary = {
            "heuristic": p,
            "online_accumulated_error": float(np.sum(online)),
            "test_mean_error": float(np.mean(test)) if test else float("nan"),
            "test_median_error": float(np.median(test)) if test else float("nan"),
        }
        arms = {stage: [Arm.parse(r.arm) for r in rows if r.policy == p and r.stage == stage] for stage in STAGES}
        if any(a.recipe for chosen in arms.values() for a in chosen):
            for stage in ("online", "test"):
                n = max(len(arms[stage]), 1)
                share = {f: sum(f in a.recipe_flags for a in arms[stage]) / n for f in RECIPE_FLAGS}
                summary[f"recipe_{stage}"] = share
        out.append(summary)
    return out

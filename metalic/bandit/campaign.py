"""Campaigns: the authors' protocol as a plan of steps, each step trained as shared batches.

For each heuristic: ``warmup`` rounds with random arms, then ``rounds`` online rounds on
contexts drawn uniformly (one seeded sequence, the same for every heuristic), each suggestion
pending-aware within its chunk of ``batch`` rounds; then a test rollout on ``test`` held-out
contexts with the posterior-mean arm (random arms for ``random``). ``fixed:`` uses its arm in
every round, warm-up included. The heuristic ``single-domain`` trains one network over the whole
domain (no interface) as a baseline.

The learning heuristics (ucb, ts, mean, random) start from the same random warm-up, so it is
trained once and every one of them observes it. A step is one chunk of one stage for every
heuristic at once: its trainings share batches (``run_solve_batch``), and the engines observe the
step's results before the next step is planned. ``CampaignPlan`` knows the protocol and nothing of
where trainings run: ``run_campaign`` executes it in this process; the service's campaign stepper
(``workers/campaigns.py``) executes the same plan through its task queue, one step at a time.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from metalic.bandit.engine import BanditEngine, Observation, Policy
from metalic.bandit.space import ALL_ARMS, TERM_ARMS, ContextSpace, arm_of
from metalic.conditions import SINGLE_NETWORK_LABEL, TERM_NAMES, Arm, arm_label, is_single_network
from metalic.families import get_family
from metalic.jobs import SolveRequest, SolveResult, Training, run_solve_batch
from metalic.pinn.evaluate import outcome_error
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import TrainConfig

SINGLE_DOMAIN = "single-domain"
WARMUP_GROUP = "warmup"  # the learning heuristics' shared warm-up trainings
LEARNING = ("ucb", "ts", "mean", "random")
STAGES = ("warmup", "online", "test")


@dataclass(frozen=True)
class CampaignConfig:
    family: str
    heuristics: tuple[str, ...] = ("ucb",)
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

    def validate(self) -> None:
        get_family(self.family)  # ValueError naming the known families
        if self.mode not in ("single", "sequential"):
            raise ValueError(f"mode: must be 'single' or 'sequential', got {self.mode!r}")
        for name in ("warmup", "rounds", "test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be non-negative, got {getattr(self, name)}")
        if self.batch < 1:
            raise ValueError(f"batch: must be at least 1, got {self.batch}")
        if not self.heuristics:
            raise ValueError("heuristic: at least one is required")
        if len(set(self.heuristics)) != len(self.heuristics):
            raise ValueError("heuristic: each heuristic may be given once")
        for h in self.heuristics:
            if h != SINGLE_DOMAIN:
                Policy.parse(h, self.ucb_schedule)
        self.train.validate()
        self.pinn.validate()
        for h in self.heuristics:  # every training must be a valid request (budgets under the caps, ...)
            self.request({}, (0,) * 9, seed=0, single_domain=h == SINGLE_DOMAIN)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> CampaignConfig:
        d = dict(data)
        d["heuristics"] = tuple(d["heuristics"])
        d["train"] = TrainConfig(**d["train"])
        pinn = dict(d["pinn"])
        pinn["layers"] = None if pinn.get("layers") is None else tuple(pinn["layers"])
        d["pinn"] = PinnConfig(**pinn)
        return CampaignConfig(**d)

    def request(
        self,
        context: Mapping[str, float],
        arm: Arm,
        seed: int,
        arm_lbfgs: Arm | None = None,
        lbfgs_policy: str | None = None,
        single_domain: bool = False,
    ) -> SolveRequest:
        """The SolveRequest of one campaign training (raises pydantic's ValidationError)."""
        sequential = self.mode == "sequential" and not single_domain
        lbfgs = None
        if sequential:
            lbfgs = f"learned:{lbfgs_policy}" if lbfgs_policy else arm_label(arm_lbfgs or arm)
        return SolveRequest(
            family=self.family,
            params=dict(context),
            mode="sequential" if sequential else "single",
            arm=arm_label(arm),
            arm_lbfgs=lbfgs,
            adam=self.train.adam_iters,
            lbfgs=self.train.lbfgs_iters,
            adam_lr=self.train.adam_lr,
            lbfgs_lr=self.train.lbfgs_lr,
            collocation=self.pinn.n_collocation,
            boundary=self.pinn.n_boundary,
            interface_points=self.pinn.n_interface,
            subdomains=1 if single_domain else self.pinn.subdomains,
            final_time_data=self.pinn.final_time_data,
            seed=seed,
            dtype=self.dtype,
        )


@dataclass
class RoundRow:
    heuristic: str
    stage: str  # warmup / online / test
    round: int
    context: dict[str, float]
    arm: str
    arm_lbfgs: str
    rel_l2: float
    reward: float
    phase0_rel_l2: float | None
    status: str
    seconds: float


@dataclass(frozen=True)
class Step:
    """One chunk of one stage, for every heuristic: rounds ``start .. start + len(contexts) - 1``."""

    index: int
    stage: str
    start: int  # round index of the first context (online rounds count after the warm-up)
    contexts: tuple[Mapping[str, float], ...]


@dataclass(frozen=True)
class PlannedRun:
    """One training of a step. ``group``: a heuristic, or WARMUP_GROUP for the shared warm-up."""

    group: str
    stage: str
    round: int
    context: Mapping[str, float]
    seed: int
    arm_adam: Arm
    arm_lbfgs: Arm | None = None  # sequential, explicit
    lbfgs_policy: str | None = None  # sequential, chosen after the Adam phase by the group's engine
    single_domain: bool = False

    def training(self, config: CampaignConfig) -> Training:
        request = config.request(
            self.context, self.arm_adam, self.seed, self.arm_lbfgs, self.lbfgs_policy, self.single_domain
        )
        return Training(request, self.arm_adam, self.arm_lbfgs, self.lbfgs_policy, self.group)


def contexts_for(config: CampaignConfig) -> tuple[list[dict], list[dict]]:
    """The seeded online and held-out test contexts (the same for every heuristic)."""
    space = ContextSpace(get_family(config.family))
    online = space.sample(config.warmup + config.rounds, torch.Generator().manual_seed(config.seed))
    test = space.sample(config.test, torch.Generator().manual_seed(config.seed + 10_007))
    return online, test


def _random_arms(n: int, seed: int) -> list[tuple[Arm, Arm]]:
    """n seeded (Adam, L-BFGS) pairs of random arms; a single-network Adam arm stays one network."""
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(len(ALL_ARMS), (n,), generator=gen).tolist()
    second = torch.randint(len(TERM_ARMS), (n,), generator=gen).tolist()
    pairs = [(arm_of(a), arm_of(b)) for a, b in zip(first, second, strict=True)]
    return [(a, a if is_single_network(a) else b) for a, b in pairs]


class CampaignPlan:
    """The protocol of one campaign: its steps, the runs of a step given the engines' state, and
    what the engines observe from a step's results. Deterministic in (config, engine states)."""

    def __init__(self, config: CampaignConfig):
        config.validate()
        self.config = config
        self.online, self.test = contexts_for(config)
        self.warm_arms = _random_arms(config.warmup, config.seed + 1)
        self.test_arms = _random_arms(config.test, config.seed + 2)  # the random heuristic's test rollout
        self.policies = {h: Policy.parse(h, config.ucb_schedule) for h in config.heuristics if h != SINGLE_DOMAIN}
        self.learning = [h for h, p in self.policies.items() if p.kind != "fixed"]

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
        for stage, contexts, offset in stages:
            for start in range(0, len(contexts), c.batch):
                chunk = tuple(contexts[start : start + c.batch])
                out.append(Step(len(out), stage, offset + start, chunk))
        return out

    def groups(self) -> list[str]:
        """Every group that owns trainings: the shared warm-up (when there are learning heuristics)
        and each heuristic."""
        return ([WARMUP_GROUP] if self.learning and self.config.warmup else []) + list(self.config.heuristics)

    def new_engines(self) -> dict[str, BanditEngine]:
        """A fresh engine per heuristic that has one (every one but single-domain)."""
        c = self.config
        return {h: BanditEngine(c.family, c.mode, p, seed=c.seed) for h, p in self.policies.items()}

    def runs(self, step: Step, engines: Mapping[str, BanditEngine]) -> list[PlannedRun]:
        """The trainings of ``step``; online suggestions draw from the engines (pending-aware)."""
        out: list[PlannedRun] = []
        seq = self.sequential
        for j, ctx in enumerate(step.contexts):
            rnd = step.start + j
            if step.stage == "warmup" and self.learning:
                a0, a1 = self.warm_arms[rnd]
                out.append(
                    PlannedRun(WARMUP_GROUP, step.stage, rnd, ctx, self.config.seed + rnd, a0, a1 if seq else None)
                )
        for h in self.config.heuristics:
            policy = self.policies.get(h)
            if policy is None:  # single-domain baseline
                for j, ctx in enumerate(step.contexts):
                    out.append(
                        PlannedRun(
                            h, step.stage, step.start + j, ctx, self._seed(step, j), (0,) * 9, single_domain=True
                        )
                    )
                continue
            if step.stage == "warmup" and policy.kind != "fixed":
                continue  # trained once in the shared warm-up
            engine = engines[h]
            chosen: list[tuple[Mapping[str, float], Arm]] = []
            for j, ctx in enumerate(step.contexts):
                a1, lbfgs_policy = None, None
                if policy.kind == "fixed":
                    a0 = a1 = policy.arm
                elif step.stage == "test" and policy.kind == "random":
                    a0, a1 = self.test_arms[step.start + j]
                elif step.stage == "test":
                    a0 = engine.recommend(ctx, top=1)[0].arm
                    lbfgs_policy = "mean"
                else:
                    a0 = engine.suggest(ctx, pending=chosen)[0]
                    lbfgs_policy = policy.kind
                chosen.append((ctx, a0))
                out.append(
                    PlannedRun(
                        h,
                        step.stage,
                        step.start + j,
                        ctx,
                        self._seed(step, j),
                        a0,
                        a1 if seq else None,
                        lbfgs_policy if seq else None,
                    )
                )
        return out

    def _seed(self, step: Step, j: int) -> int:
        return self.config.seed + step.start + j

    def observe(
        self, engines: Mapping[str, BanditEngine], runs: Sequence[PlannedRun], results: Sequence[SolveResult]
    ) -> None:
        """Feed a step's results to the engines that learn from them (nothing from the test stage)."""
        per_engine: dict[str, list[Observation]] = {}
        for run, res in zip(runs, results, strict=True):
            if run.stage == "test" or run.single_domain:
                continue
            obs = Observation(
                dict(run.context),
                res.arm_adam,
                res.reward,
                res.arm_lbfgs if self.sequential else None,
                res.reward_phase0 if self.sequential else None,
            )
            for h in self.learning if run.group == WARMUP_GROUP else [run.group]:
                per_engine.setdefault(h, []).append(obs)
        for h, obs in per_engine.items():
            engines[h].observe(*obs)

    def rows(self, runs: Sequence[PlannedRun], results: Sequence[SolveResult]) -> list[RoundRow]:
        """One row per (heuristic, round); the shared warm-up appears under every learning heuristic."""
        out = []
        for run, res in zip(runs, results, strict=True):
            for h in self.learning if run.group == WARMUP_GROUP else [run.group]:
                out.append(
                    RoundRow(
                        h,
                        run.stage,
                        run.round,
                        dict(run.context),
                        arm_label(res.arm_adam),
                        arm_label(res.arm_lbfgs),
                        res.rel_l2,
                        res.reward,
                        res.rel_l2_phase0,
                        res.status,
                        res.seconds,
                    )
                )
        return out

    def order(self, rows: list[RoundRow]) -> list[RoundRow]:
        """Rows by heuristic (as configured), then stage, then round."""
        rank = {h: i for i, h in enumerate(self.config.heuristics)}
        return sorted(rows, key=lambda r: (rank[r.heuristic], STAGES.index(r.stage), r.round))


def run_trainings(
    config: CampaignConfig, runs: Sequence[PlannedRun], engines: Mapping[str, BanditEngine]
) -> list[SolveResult]:
    """Train planned runs in this process, one batch per batch key (single-domain runs apart)."""
    trainings = [r.training(config) for r in runs]
    results: list[SolveResult | None] = [None] * len(runs)
    by_key: dict[str, list[int]] = {}
    for i, t in enumerate(trainings):
        by_key.setdefault(t.request.batch_key(), []).append(i)
    for idx in by_key.values():
        got = run_solve_batch(
            [trainings[i] for i in idx],
            device=config.device,
            engines=engines,
            compile=config.train.compile,
            artefacts=False,
        )
        for i, r in zip(idx, got, strict=True):
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


def run_heuristic(config: CampaignConfig, heuristic: str) -> tuple[list[RoundRow], BanditEngine | None]:
    """One heuristic's campaign in this process: its rows and its engine (None for single-domain)."""
    rows, engines = run_campaign(replace(config, heuristics=(heuristic,)))
    return rows, engines.get(heuristic)


def write_outputs(rows: list[RoundRow], engines: dict[str, BanditEngine | None], out: Path) -> None:
    """rounds.csv, rounds.json, one policy snapshot per heuristic, and the figures."""
    out.mkdir(parents=True, exist_ok=True)
    records = [asdict(r) for r in rows]
    (out / "rounds.json").write_text(json.dumps(records, indent=1))
    with (out / "rounds.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "heuristic",
                "stage",
                "round",
                "context",
                "arm",
                "arm_lbfgs",
                "rel_l2",
                "reward",
                "phase0_rel_l2",
                "status",
                "seconds",
            ]
        )
        for r in rows:
            writer.writerow(
                [
                    r.heuristic,
                    r.stage,
                    r.round,
                    json.dumps(r.context),
                    r.arm,
                    r.arm_lbfgs,
                    r.rel_l2,
                    r.reward,
                    r.phase0_rel_l2,
                    r.status,
                    f"{r.seconds:.3f}",
                ]
            )
    for name, engine in engines.items():
        if engine is not None:
            safe = policy_file_name(name)
            (out / f"policy_{safe}.json").write_text(json.dumps(engine.snapshot()))
    plot_campaign(rows, out)


def policy_file_name(heuristic: str) -> str:
    return heuristic.replace(":", "_").replace(",", "+")


def plot_campaign(rows: list[RoundRow], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    heuristics = list(dict.fromkeys(r.heuristic for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5), constrained_layout=True)
    for h in heuristics:
        online = [r for r in rows if r.heuristic == h and r.stage != "test"]
        err = np.cumsum([outcome_error(r.rel_l2, r.status) for r in online])
        axes[0].plot(np.arange(1, len(err) + 1), err, label=h)
    axes[0].set_xlabel("round")
    axes[0].set_ylabel("accumulated relative L2 error")
    axes[0].legend()
    data = [
        [outcome_error(r.rel_l2, r.status) for r in rows if r.heuristic == h and r.stage == "test"] for h in heuristics
    ]
    if any(data):
        axes[1].boxplot([d or [np.nan] for d in data], tick_labels=heuristics)
        axes[1].set_yscale("log")
    axes[1].set_ylabel("test relative L2 error")
    axes[1].tick_params(axis="x", rotation=30)
    width = 0.8 / max(len(heuristics), 1)
    names = [*TERM_NAMES, SINGLE_NETWORK_LABEL]
    for i, h in enumerate(heuristics):
        chosen = [r.arm for r in rows if r.heuristic == h and r.stage == "online"]
        freq = [sum(name in a.split(",") for a in chosen) / max(len(chosen), 1) for name in names]
        axes[2].bar(np.arange(len(names)) + i * width, freq, width, label=h)
    axes[2].set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45)
    axes[2].set_ylabel("fraction of online rounds with the term on")
    fig.savefig(out / "campaign.png", dpi=100)
    plt.close(fig)


def summarise(rows: list[RoundRow]) -> list[dict]:
    """Per heuristic: accumulated online error, mean / median test error."""
    import numpy as np

    out = []
    for h in dict.fromkeys(r.heuristic for r in rows):
        online = [outcome_error(r.rel_l2, r.status) for r in rows if r.heuristic == h and r.stage != "test"]
        test = [outcome_error(r.rel_l2, r.status) for r in rows if r.heuristic == h and r.stage == "test"]
        out.append(
            {
                "heuristic": h,
                "online_accumulated_error": float(np.sum(online)),
                "test_mean_error": float(np.mean(test)) if test else float("nan"),
                "test_median_error": float(np.median(test)) if test else float("nan"),
            }
        )
    return out

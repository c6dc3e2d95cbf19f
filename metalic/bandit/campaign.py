"""Campaigns: the authors' protocol, trained K rounds at a time with the batched trainer.

For each heuristic: ``warmup`` rounds with random arms, then ``rounds`` online rounds on
contexts drawn uniformly (one seeded sequence, the same for every heuristic), each suggestion
pending-aware within its batch of K; then a test rollout on ``test`` held-out contexts with the
posterior-mean arm (random arms for ``random``). ``fixed:`` uses its arm in every round,
warm-up included. The heuristic
``single-domain`` trains one network over the whole domain (no interface) as a baseline.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from metalic.bandit.engine import BanditEngine, Observation, Policy
from metalic.bandit.space import ALL_ARMS, ContextSpace, arm_of
from metalic.conditions import TERM_NAMES, Arm, arm_label
from metalic.families import get_family
from metalic.pinn.artefact import evaluate_batch
from metalic.pinn.evaluate import capped_error, reward_of
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch

SINGLE_DOMAIN = "single-domain"


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
        for h in self.heuristics:
            if h != SINGLE_DOMAIN:
                Policy.parse(h, self.ucb_schedule)
        self.train.validate()
        self.pinn.validate()


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


def contexts_for(config: CampaignConfig) -> tuple[list[dict], list[dict]]:
    """The seeded online and held-out test contexts (the same for every heuristic)."""
    space = ContextSpace(get_family(config.family))
    online = space.sample(config.warmup + config.rounds, torch.Generator().manual_seed(config.seed))
    test = space.sample(config.test, torch.Generator().manual_seed(config.seed + 10_007))
    return online, test


def run_heuristic(
    config: CampaignConfig, heuristic: str, progress: Callable[[int], None] | None = None
) -> tuple[list[RoundRow], BanditEngine | None]:
    """All rounds of one heuristic; ``progress(n_trainings_done)`` after every batch."""
    family = get_family(config.family)
    online, test = contexts_for(config)
    single_domain = heuristic == SINGLE_DOMAIN
    engine = (
        None
        if single_domain
        else BanditEngine(config.family, config.mode, Policy.parse(heuristic, config.ucb_schedule), seed=config.seed)
    )
    pinn = PinnConfig(**{**asdict(config.pinn), "subdomains": 1}) if single_domain else config.pinn
    warm_gen = torch.Generator().manual_seed(config.seed + 1)
    rows: list[RoundRow] = []
    sequential = config.mode == "sequential" and not single_domain

    def random_arm() -> Arm:
        return arm_of(int(torch.randint(len(ALL_ARMS), (1,), generator=warm_gen)))

    def first_arms(stage: str, contexts: Sequence[dict]) -> list[Arm]:
        if single_domain:
            return [(0,) * 9] * len(contexts)
        arms: list[Arm] = []
        for ctx in contexts:
            if engine.policy.kind == "fixed":
                arms.append(engine.policy.arm)
            elif stage == "warmup" or (stage == "test" and engine.policy.kind == "random"):
                arms.append(random_arm())
            elif stage == "test":
                arms.append(engine.recommend(ctx, top=1)[0].arm)
            else:
                arms.append(engine.suggest(ctx, pending=list(zip(contexts[: len(arms)], arms, strict=True)))[0])
        return arms

    def second_arms(stage, contexts, arms0, metrics) -> list[Arm]:
        out: list[Arm] = []
        pend = []
        for ctx, a0, m in zip(contexts, arms0, metrics, strict=True):
            r0 = reward_of(m.rel_l2)
            if engine.policy.kind == "fixed":
                a1 = engine.policy.arm
            elif stage == "warmup" or (stage == "test" and engine.policy.kind == "random"):
                a1 = random_arm()
            elif stage == "test":
                a1 = engine.recommend(ctx, top=1, reward_phase0=r0)[0].arm
            else:
                a1 = engine.report_phase0(ctx, a0, r0, pending=pend)[0]
            pend.append((ctx, r0, a1))
            out.append(a1)
        return out

    done = 0
    stages = [
        ("warmup", online[: config.warmup], 0),
        ("online", online[config.warmup :], config.warmup),
        ("test", test, 0),
    ]
    for stage, contexts, offset in stages:
        for start in range(0, len(contexts), config.batch):
            chunk = contexts[start : start + config.batch]
            arms0 = first_arms(stage, chunk)
            hook = (lambda m, c=chunk, a=arms0, s=stage: second_arms(s, c, a, m)) if sequential else None
            specs = [
                RunSpec(ctx, a, seed=config.seed + offset + start + j)
                for j, (ctx, a) in enumerate(zip(chunk, arms0, strict=True))
            ]
            t0 = time.perf_counter()
            batch = train_batch(family, specs, pinn, config.train, device=config.device, between_phases=hook)
            metrics = evaluate_batch(batch)
            seconds = (time.perf_counter() - t0) / len(chunk)
            new_obs = []
            for j, (spec, m, out) in enumerate(zip(batch.specs, metrics, batch.outcomes, strict=True)):
                a0, a1 = spec.arms
                r0 = reward_of(out.phase0_rel_l2) if out.phase0_rel_l2 is not None else None
                rows.append(
                    RoundRow(
                        heuristic,
                        stage,
                        offset + start + j,
                        dict(spec.params),
                        arm_label(a0),
                        arm_label(a1),
                        m.rel_l2,
                        m.reward,
                        out.phase0_rel_l2,
                        out.status,
                        seconds,
                    )
                )
                new_obs.append(Observation(dict(spec.params), a0, m.reward, a1 if sequential else None, r0))
            if engine is not None and stage != "test":
                engine.observe(*new_obs)
            done += len(chunk)
            if progress is not None:
                progress(done)
    return rows, engine


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
            safe = name.replace(":", "_").replace(",", "+")
            (out / f"policy_{safe}.json").write_text(json.dumps(engine.snapshot()))
    plot_campaign(rows, out)


def plot_campaign(rows: list[RoundRow], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    heuristics = list(dict.fromkeys(r.heuristic for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5), constrained_layout=True)
    for h in heuristics:
        online = [r for r in rows if r.heuristic == h and r.stage != "test"]
        err = np.cumsum([capped_error(r.rel_l2) for r in online])
        axes[0].plot(np.arange(1, len(err) + 1), err, label=h)
    axes[0].set_xlabel("round")
    axes[0].set_ylabel("accumulated relative L2 error")
    axes[0].legend()
    data = [[capped_error(r.rel_l2) for r in rows if r.heuristic == h and r.stage == "test"] for h in heuristics]
    if any(data):
        axes[1].boxplot([d or [np.nan] for d in data], tick_labels=heuristics)
        axes[1].set_yscale("log")
    axes[1].set_ylabel("test relative L2 error")
    axes[1].tick_params(axis="x", rotation=30)
    width = 0.8 / max(len(heuristics), 1)
    for i, h in enumerate(heuristics):
        chosen = [r.arm for r in rows if r.heuristic == h and r.stage == "online"]
        freq = [sum(name in a.split(",") for a in chosen) / max(len(chosen), 1) for name in TERM_NAMES]
        axes[2].bar(np.arange(len(TERM_NAMES)) + i * width, freq, width, label=h)
    axes[2].set_xticks(np.arange(len(TERM_NAMES)) + 0.4 - width / 2, TERM_NAMES, rotation=45)
    axes[2].set_ylabel("fraction of online rounds with the term on")
    fig.savefig(out / "campaign.png", dpi=100)
    plt.close(fig)


def summarise(rows: list[RoundRow]) -> list[dict]:
    """Per heuristic: accumulated online error, mean / median test error."""
    import numpy as np

    out = []
    for h in dict.fromkeys(r.heuristic for r in rows):
        online = [capped_error(r.rel_l2) for r in rows if r.heuristic == h and r.stage != "test"]
        test = [capped_error(r.rel_l2) for r in rows if r.heuristic == h and r.stage == "test"]
        out.append(
            {
                "heuristic": h,
                "online_accumulated_error": float(np.sum(online)),
                "test_mean_error": float(np.mean(test)) if test else float("nan"),
                "test_median_error": float(np.median(test)) if test else float("nan"),
            }
        )
    return out

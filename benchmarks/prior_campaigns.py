"""Campaigns with and without the shipped priors, against the best fixed arm in hindsight.

For each family and seed, on the same seeded contexts (``points_for``) and at docs/results.md's
campaign budget (200 Adam + 300 L-BFGS, 300 / 50 points, 51 per interface, batches of 5):

- ``ucb``: the authors' protocol from nothing (5 random warm-up rounds, then 20 UCB rounds);
- ``ucb+prior``: UCB on the family's installed prior built nearest to this budget
  (``priors.for_budget``) from the first round (no random warm-up: 25 UCB rounds over the same
  25 contexts);
- each of these with every kernel of ``--arm-kernels``: the authors' Hamming kernel on the term
  bits (``hamming``, labels without a suffix) and the additive one with per-term effects
  (``additive``, labels ``.../additive``); on a prior, only the study's own (residual) GP takes the
  kernel, the prior's GP is the shipped one;
- ``hindsight``: the best fixed arm in hindsight: of a list of fixed arms, each run through the
  same protocol, the one with the lowest online accumulated error (it knows the outcomes: an
  optimistic reference, not a competitor). The list (``--reference``):
  - ``fixed`` (the default): the same for every run of a family and seed, whatever is scored:
    issue 17's six fixed arms (``flux``, ``u,flux``, ``u``, ``none``, ``all``,
    ``single-domain``) and the ``--reference-top`` arms of highest posterior-mean reward over the
    test contexts under the prior the *package* ships nearest this budget (not one given through
    ``METALIC_PRIOR_PATH``). Each fixed arm's campaign is kept in ``--reference-cache``, keyed by
    family, seed, arm, protocol, machine and a hash of the training code, and reused;
  - ``run``: the ``--hindsight-candidates`` arms of highest posterior-mean reward over the test
    contexts from a GP fitted to this run's UCB campaigns (how the tables of 2026-12-02 and -03
    were made). That reference moves with the run under test: a prior whose campaigns favour
    weaker arms is scored against a weaker reference.

Every campaign ends with the same 10 held-out test contexts (the posterior-mean arm; with
``--test-rank lcb`` the arm the service recommends: the best pessimistic end of its interval). The priors were
built with campaign seed 1000 (``metalic prior list`` shows it); the seeds here are 0, 1, 2, so
the contexts that build a prior and those that score it are disjoint draws. Prints one row per
(family, seed, heuristic) and the ratios to hindsight (same run).

    python benchmarks/prior_campaigns.py --families burgers advection reaction --seeds 0 1 2 \
        --arm-kernels hamming additive [--reference run] [--test-rank lcb [mean]] [--test-repeats 3] \
        [--rows out/rows.json]

``--test-repeats R`` trains each held-out context's chosen arm (and the hindsight arm's) R times in
all, with other training seeds, and adds the median of all those errors (R a context): a fixed
arm's 10-context median moves up to 5x with the training seed alone (``median_noise.py``).

``--rows`` writes each rollout's arm and error per held-out context, and every fixed arm's errors
at the same contexts, to trace a test median to the contexts behind it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import describe

from metalic import priors
from metalic.arms import BASELINE_LABELS, NONE, Arm, all_arms
from metalic.bandit.engine import RANKINGS, BanditEngine, Observation, prior_engine
from metalic.campaign import CampaignConfig, CampaignPlan, CampaignRun, points_for, run_policy, run_trainings, summarise
from metalic.pinn.evaluate import outcome_error
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import TrainConfig
from metalic.settings import resolve_device

REPEAT_SEED_STEP = 1000  # a repeat r of the held-out trainings adds r * this to their seeds

# What a fixed arm's campaign depends on besides its config: the training code (not the bandit's).
TRAINING_CODE = ("metalic/pinn", "metalic/families", "metalic/arms.py", "metalic/domain.py",
                 "metalic/conditions.py", "metalic/campaign.py")  # fmt: skip


def training_code_hash() -> str:
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for entry in TRAINING_CODE:
        for path in sorted((root / entry).rglob("*.py")) if (root / entry).is_dir() else [root / entry]:
            digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def engine_favourites(engine: BanditEngine, config: CampaignConfig, k: int) -> list[Arm]:
    """The ``k`` arms of ``engine`` with the best posterior-mean reward summed over the test contexts."""
    _, test = points_for(config)
    total = torch.zeros(len(all_arms()), dtype=torch.float64)
    for params in test:
        for rec in engine.recommend(params, top=len(all_arms()), rank="mean"):
            total[rec.arm.index] += rec.reward_mean
    return [all_arms()[int(i)] for i in torch.argsort(total, descending=True)[:k]]


def hindsight_arms(config: CampaignConfig, rows, k: int) -> list[Arm]:
    """``--reference run``: the favourites of a GP fitted to this run's online observations."""
    engine = BanditEngine(config.family, "single", "mean", seed=config.seed)
    engine.observe(*(Observation(r.params, Arm.parse(r.arm), r.reward) for r in rows if r.stage != "test"))
    return engine_favourites(engine, config, k)


def reference_arms(config: CampaignConfig, k: int) -> list[Arm]:
    """``--reference fixed``: ``BASELINE_LABELS`` and the favourites of the shipped prior nearest
    this budget (none when the package ships no prior of the family, or with ``METALIC_PRIORS=off``:
    compare runs made under the same setting)."""
    arms = [Arm.parse(a) for a in BASELINE_LABELS]
    shipped = priors.for_budget(config.family, "single", config.request({}, NONE, seed=0).profile(),
                                folders=[priors.PACKAGE_DIR])  # fmt: skip
    if shipped is not None and k > 0:
        arms += [a for a in engine_favourites(prior_engine(shipped), config, k) if a not in arms]
    return arms


def campaign_config(family: str, seed: int, warmup: int = 5, rounds: int = 20, test: int = 10) -> CampaignConfig:
    """A campaign at docs/results.md's budget (200 Adam + 300 L-BFGS, 300 / 50 points, 51 per
    interface, batches of 5), the authors' test rule."""
    return CampaignConfig(
        family=family, warmup=warmup, rounds=rounds, test=test, batch=5, seed=seed,
        train=TrainConfig(adam=200, lbfgs=300, compile=False),
        pinn=PinnConfig(n_collocation=300, n_boundary=50, n_interface=51),
    )  # fmt: skip


def rollout(config: CampaignConfig, engine: BanditEngine, rank: str) -> tuple[list[Arm], list[float]]:
    """A further test rollout of a finished campaign's engine under ``rank``: the arm it
    recommends at each held-out context, trained as the campaign's test stage trains."""
    return train_held_out(config, lambda params: engine.recommend(params, top=1, rank=rank)[0].arm)


def train_held_out(
    config: CampaignConfig, choose: Callable[[Mapping[str, float]], Arm], seed_offset: int = 0
) -> tuple[list[Arm], list[float]]:
    """Train ``choose(params)`` at each of the campaign's held-out contexts, as its test stage
    trains them (same batches; the same seeds plus ``seed_offset``): the arms and the errors (a
    divergence's capped error), in context order."""
    if config.mode != "single":
        raise ValueError("train_held_out: single mode only (a sequential test stage picks L-BFGS arms as it goes)")
    plan = CampaignPlan(config)
    arms, errors = [], []
    for step in (s for s in plan.steps() if s.stage == "test"):
        chosen = [choose(params) for params in step.points]
        runs = [CampaignRun("ucb", "test", step.start + j, params, plan._seed(step, j) + seed_offset, arm)
                for j, (params, arm) in enumerate(zip(step.points, chosen, strict=True))]  # fmt: skip
        arms += chosen
        errors += [outcome_error(r.rel_l2, r.status) for r in run_trainings(config, runs, {})]
    return arms, errors


def pooled_median(config: CampaignConfig, arms: list[Arm], first: list[float], repeats: int) -> float:
    """The median of ``repeats`` trainings of each held-out context's arm (``arms``, in context
    order): the campaign's own (``first``) and ``repeats - 1`` more with other training seeds."""
    errors = list(first)
    for r in range(1, repeats):
        chosen = iter(arms)
        errors += train_held_out(config, lambda _, chosen=chosen: next(chosen), REPEAT_SEED_STEP * r)[1]
    return statistics.median(errors)


def held_out(rows) -> list:
    """The test rounds of ``rows`` in context order."""
    return sorted((r for r in rows if r.stage == "test"), key=lambda r: r.round)


def test_errors(tests) -> list[float]:
    """The errors of ``held_out`` rows (a divergence's capped error)."""
    return [outcome_error(r.rel_l2, r.status) for r in tests]


class ReferenceCache:
    """Fixed-arm campaign summaries in a JSON file, reused across runs on the same machine, code
    and protocol (a fixed arm's campaign does not depend on priors or kernels)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data = json.loads(path.read_text()) if path is not None and path.exists() else {}
        self.code = training_code_hash()

    def key(self, config: CampaignConfig, arm: Arm) -> str:
        protocol = (config.family, config.seed, config.warmup, config.rounds, config.test, config.batch,
                    config.train.adam, config.train.lbfgs, config.pinn.n_collocation, config.pinn.n_boundary,
                    config.pinn.n_interface)  # fmt: skip
        machine = describe(resolve_device(config.device))  # the CPU model, torch, and the GPU if one trains
        return f"{machine}|{self.code}|{protocol}|{arm.label}"

    def summary(self, config: CampaignConfig, arm: Arm) -> dict:
        key = self.key(config, arm)
        if "test_errors" not in self.data.get(key, {}):  # absent, or cached before per-context errors were kept
            rows, _ = run_policy(replace(config, policies=(f"fixed:{arm.label}",)), f"fixed:{arm.label}")
            self.data[key] = summarise(rows)[0]
            self.data[key]["test_errors"] = test_errors(held_out(rows))
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text(json.dumps(self.data, indent=1))
        return self.data[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["burgers", "advection", "reaction"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--test", type=int, default=10)
    parser.add_argument("--reference", default="fixed", choices=["fixed", "run"],
                        help="hindsight candidates: a fixed list per family, or this run's GP favourites")  # fmt: skip
    parser.add_argument("--reference-top", type=int, default=3, help="fixed: the shipped prior's favourites added")
    parser.add_argument("--reference-cache", type=Path, default=Path("out/prior_campaigns_reference.json"))
    parser.add_argument("--hindsight-candidates", type=int, default=3, help="run: how many favourites")
    parser.add_argument("--test-rank", nargs="+", default=["mean"], choices=list(RANKINGS),
                        help="test rollouts: posterior mean (the authors') or the interval's low end (lcb); the "
                             "first runs in the campaign, each further one is rolled out after it on the same "
                             "engine (rows '... [rank]')")  # fmt: skip
    parser.add_argument("--rows", type=Path, help="write each campaign's test rollout (arms, errors) here as JSON")
    parser.add_argument("--test-repeats", type=int, default=1,
                        help="train each held-out context's arm this many times in all (other seeds) and also "
                             "score the median of them all: less at the mercy of one training")  # fmt: skip
    parser.add_argument("--arm-kernels", nargs="+", default=["hamming"], choices=["hamming", "additive"])
    args = parser.parse_args()
    print(f"machine: {describe(torch.device('cpu'))}")
    pooled = f" test median over {args.test_repeats} trainings a context |" if args.test_repeats > 1 else ""
    print(f"| family | seed | heuristic | online accumulated rel. L2 | test median rel. L2 |{pooled} prior |")
    print("|---|---|---|---|---|---|" + ("---|" if pooled else ""))
    ratios: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    cache = ReferenceCache(args.reference_cache if args.reference == "fixed" else None)
    rollouts: list[dict] = []
    for family in args.families:
        for seed in args.seeds:
            base = replace(campaign_config(family, seed, args.warmup, args.rounds, args.test),
                           test_rank=args.test_rank[0])  # fmt: skip
            prior = priors.for_budget(family, "single", base.request({}, NONE, seed=0).profile())
            plan = []
            for kernel in args.arm_kernels:
                suffix = "" if kernel == "hamming" else f"/{kernel}"
                with_kernel = replace(base, arm_kernel=kernel)
                plan.append((f"ucb{suffix}", with_kernel))
                if prior is not None:
                    on_prior = replace(with_kernel, warmup=0, rounds=args.warmup + args.rounds, prior=prior.ref)
                    plan.append((f"ucb+prior{suffix}", on_prior))
            summaries, observed = {}, []
            start = time.perf_counter()
            for label, config in plan:
                rows, engine = run_policy(config, "ucb")
                observed += rows
                summaries[label] = summarise(rows)[0]
                tests = held_out(rows)
                if args.test_repeats > 1:
                    summaries[label]["test_pooled_median"] = pooled_median(
                        config, [Arm.parse(r.arm) for r in tests], test_errors(tests), args.test_repeats
                    )
                rollouts.append({"family": family, "seed": seed, "heuristic": label, "arms": [r.arm for r in tests],
                                 "params": [r.params for r in tests], "errors": test_errors(tests)})  # fmt: skip
                for rank in args.test_rank[1:]:
                    arms, errors = rollout(config, engine, rank)
                    summaries[f"{label} [{rank}]"] = {
                        "online_accumulated_error": summaries[label]["online_accumulated_error"],
                        "test_mean_error": statistics.fmean(errors),
                        "test_median_error": statistics.median(errors),
                    }
                    if args.test_repeats > 1:
                        summaries[f"{label} [{rank}]"]["test_pooled_median"] = pooled_median(
                            config, arms, errors, args.test_repeats
                        )
                    rollouts.append({"family": family, "seed": seed, "heuristic": f"{label} [{rank}]",
                                     "arms": [a.label for a in arms], "params": [r.params for r in tests],
                                     "errors": errors})  # fmt: skip
            if args.reference == "fixed":
                candidates = reference_arms(base, args.reference_top)
            else:
                candidates = hindsight_arms(base, observed, args.hindsight_candidates)
            fixed = {arm.label: cache.summary(base, arm) for arm in candidates}
            label = min(fixed, key=lambda a: fixed[a]["online_accumulated_error"])
            tried = ", ".join(f"{a} {s['online_accumulated_error']:.3f}" for a, s in fixed.items())
            print(f"<!-- {family} seed {seed}: hindsight candidates {tried} -->", flush=True)
            summaries[f"hindsight:{label}"] = best = dict(fixed[label])
            if args.test_repeats > 1:
                best["test_pooled_median"] = pooled_median(
                    base, [Arm.parse(label)] * args.test, best["test_errors"], args.test_repeats
                )
            for arm, s in fixed.items():
                rollouts.append({"family": family, "seed": seed, "heuristic": f"fixed:{arm}",
                                 "errors": s["test_errors"]})  # fmt: skip
            if args.rows is not None:
                args.rows.parent.mkdir(parents=True, exist_ok=True)
                args.rows.write_text(json.dumps(rollouts, indent=1))
            for label, s in summaries.items():
                used = prior.ref if label.startswith("ucb+prior") else ""
                pooled = f" {s['test_pooled_median']:.3e} |" if args.test_repeats > 1 else ""
                print(f"| {family} | {seed} | {label} | {s['online_accumulated_error']:.3f} | "
                      f"{s['test_median_error']:.3e} |{pooled} {used} |", flush=True)  # fmt: skip
                if label.startswith("ucb"):
                    ratios.setdefault((family, label), []).append((
                        s["online_accumulated_error"] / best["online_accumulated_error"],
                        s["test_median_error"] / best["test_median_error"],
                        s["test_pooled_median"] / best["test_pooled_median"] if args.test_repeats > 1 else math.nan,
                    ))  # fmt: skip
            print(f"<!-- {family} seed {seed}: {time.perf_counter() - start:.0f} s -->", flush=True)
    print("\n| family | heuristic | online accumulated / hindsight (mean over seeds) | test median / hindsight |"
          " pooled test median / hindsight's |")  # fmt: skip
    print("|---|---|---|---|---|")
    for (family, label), triples in ratios.items():
        online, test, pool = (statistics.fmean(p[i] for p in triples) for i in range(3))
        seeds = " / ".join(f"{p[2]:.2f}" for p in triples)
        pool_cell = f"{pool:.2f}x ({seeds})" if args.test_repeats > 1 else "-"
        print(f"| {family} | {label} | {online:.2f}x | {test:.2f}x | {pool_cell} |")


if __name__ == "__main__":
    main()

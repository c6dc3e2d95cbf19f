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
- ``hindsight``: the best fixed arm in hindsight: the ``--hindsight-candidates`` fixed arms with
  the highest posterior-mean reward over the test contexts, from a GP fitted to every UCB
  campaign's observations, each run through the same protocol, and the one with the lowest online
  accumulated error kept (it knows the test contexts and the outcomes: an optimistic reference,
  not a competitor). With one candidate, a GP's favourite that diverges once at this budget
  (a capped error of 100) would be the reference.

Every campaign ends with the same 10 held-out test contexts (posterior-mean arm). The priors were
built with campaign seed 1000 (``metalic prior list`` shows it); the seeds here are 0, 1, 2, so
the contexts that build a prior and those that score it are disjoint draws. Prints one row per
(family, seed, heuristic) and the ratios to hindsight (same run).

    python benchmarks/prior_campaigns.py --families burgers advection reaction --seeds 0 1 2 \
        --arm-kernels hamming additive
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import describe

from metalic import priors
from metalic.arms import NONE, Arm, all_arms
from metalic.bandit.engine import BanditEngine, Observation
from metalic.campaign import CampaignConfig, points_for, run_policy, summarise
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import TrainConfig


def hindsight_arms(config: CampaignConfig, rows, k: int) -> list[Arm]:
    """The ``k`` arms with the best posterior-mean reward summed over the test contexts."""
    engine = BanditEngine(config.family, "single", "mean", seed=config.seed)
    engine.observe(*(Observation(r.params, Arm.parse(r.arm), r.reward) for r in rows if r.stage != "test"))
    _, test = points_for(config)
    total = torch.zeros(len(all_arms()), dtype=torch.float64)
    for params in test:
        for rec in engine.recommend(params, top=len(all_arms()), rank="mean"):
            total[rec.arm.index] += rec.reward_mean
    return [all_arms()[int(i)] for i in torch.argsort(total, descending=True)[:k]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["burgers", "advection", "reaction"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--test", type=int, default=10)
    parser.add_argument("--hindsight-candidates", type=int, default=3)
    parser.add_argument("--test-rank", default="mean", choices=["mean", "lcb"],
                        help="test rollout: posterior mean (the authors') or the interval's low end")  # fmt: skip
    parser.add_argument("--arm-kernels", nargs="+", default=["hamming"], choices=["hamming", "additive"])
    args = parser.parse_args()
    print(f"machine: {describe(torch.device('cpu'))}")
    print("| family | seed | heuristic | online accumulated rel. L2 | test median rel. L2 | prior |")
    print("|---|---|---|---|---|---|")
    ratios: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for family in args.families:
        for seed in args.seeds:
            base = CampaignConfig(
                family=family, warmup=args.warmup, rounds=args.rounds, test=args.test, batch=5, seed=seed,
                test_rank=args.test_rank,
                train=TrainConfig(adam=200, lbfgs=300, compile=False),
                pinn=PinnConfig(n_collocation=300, n_boundary=50, n_interface=51),
            )  # fmt: skip
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
                rows, _ = run_policy(config, "ucb")
                observed += rows
                summaries[label] = summarise(rows)[0]
            fixed = {}
            for arm in hindsight_arms(base, observed, args.hindsight_candidates):
                rows, _ = run_policy(replace(base, policies=(f"fixed:{arm.label}",)), f"fixed:{arm.label}")
                fixed[arm.label] = summarise(rows)[0]
            label = min(fixed, key=lambda a: fixed[a]["online_accumulated_error"])
            tried = ", ".join(f"{a} {s['online_accumulated_error']:.3f}" for a, s in fixed.items())
            print(f"<!-- {family} seed {seed}: hindsight candidates {tried} -->", flush=True)
            summaries[f"hindsight:{label}"] = best = fixed[label]
            for label, s in summaries.items():
                used = prior.ref if label.startswith("ucb+prior") else ""
                print(f"| {family} | {seed} | {label} | {s['online_accumulated_error']:.3f} | "
                      f"{s['test_median_error']:.3e} | {used} |", flush=True)  # fmt: skip
                if label.startswith("ucb"):
                    ratios.setdefault((family, label), []).append((
                        s["online_accumulated_error"] / best["online_accumulated_error"],
                        s["test_median_error"] / best["test_median_error"],
                    ))  # fmt: skip
            print(f"<!-- {family} seed {seed}: {time.perf_counter() - start:.0f} s -->", flush=True)
    print("\n| family | heuristic | online accumulated / hindsight (mean over seeds) | test median / hindsight |")
    print("|---|---|---|---|")
    for (family, label), pairs in ratios.items():
        online = statistics.fmean(p[0] for p in pairs)
        test = statistics.fmean(p[1] for p in pairs)
        print(f"| {family} | {label} | {online:.2f}x | {test:.2f}x |")


if __name__ == "__main__":
    main()

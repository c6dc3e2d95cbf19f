"""The comparison behind docs/results.md: METALIC against baselines on several families.

For each family, with the same seeded contexts for every heuristic: METALIC UCB and TS in single
and sequential mode, random arms, all terms on, a single-domain PINN, and the best fixed arm in
hindsight (the arm whose posterior-mean reward, from a GP fitted to every single-mode observation
of the other heuristics, is highest on average over the test contexts; it is then run through the
same protocol). Prints one markdown row per (family, heuristic); writes each campaign's rounds,
snapshots and figures under --out.

    python benchmarks/bandit_results.py --families advection burgers reaction --out out/results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from metalic.arms import Arm, all_arms
from metalic.bandit.engine import BanditEngine, Observation
from metalic.campaign import CampaignConfig, RoundRow, points_for, run_policy, summarise, write_outputs
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import TrainConfig


def hindsight_arm(config: CampaignConfig, rows) -> Arm:
    engine = BanditEngine(config.family, "single", "mean", seed=config.seed)
    obs = [
        Observation(r.params, Arm.parse(r.arm), r.reward)
        for r in rows
        if r.stage != "test" and r.policy.split(" ")[0] in ("ucb", "ts", "random") and r.policy.endswith("(single)")
    ]
    engine.observe(*obs)
    _, test = points_for(config)
    total = torch.zeros(len(all_arms()), dtype=torch.float64)
    for params in test:
        for rec in engine.recommend(params, top=len(all_arms())):
            total[rec.arm.index] += rec.reward_mean
    return all_arms()[int(torch.argmax(total))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["advection", "burgers", "reaction"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--test", type=int, default=10)
    parser.add_argument("--adam", type=int, default=200)
    parser.add_argument("--lbfgs", type=int, default=300)
    parser.add_argument("--collocation", type=int, default=300)
    parser.add_argument("--boundary", type=int, default=50)
    parser.add_argument("--interface-points", type=int, default=51)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/results"))
    parser.add_argument("--resume", action="store_true", help="reuse campaigns already written under --out")
    args = parser.parse_args()
    print(f"machine: {describe(torch.device('cpu'))}")
    print(
        f"protocol: {args.warmup} warm-up + {args.rounds} online rounds, {args.test} test contexts; each training "
        f"{args.adam} Adam + {args.lbfgs} L-BFGS iterations, {args.collocation} collocation / {args.boundary} "
        f"boundary points per subdomain, {args.interface_points} points per interface; batches of {args.batch}\n"
    )
    print("| family | heuristic | mode | online accumulated rel. L2 | test mean rel. L2 | test median rel. L2 |")
    print("|---|---|---|---|---|---|")
    for family in args.families:
        base = CampaignConfig(
            family=family,
            warmup=args.warmup,
            rounds=args.rounds,
            test=args.test,
            batch=args.batch,
            seed=args.seed,
            train=TrainConfig(adam=args.adam, lbfgs=args.lbfgs, compile=False),
            pinn=PinnConfig(
                n_collocation=args.collocation, n_boundary=args.boundary, n_interface=args.interface_points
            ),
        )
        plan = [("single", h) for h in ("ucb", "ts", "random", "fixed:all", "single-domain")]
        plan += [("sequential", h) for h in ("ucb", "ts")]
        all_rows = []
        start = time.perf_counter()
        for mode, heuristic in [*plan, ("single", None)]:
            if heuristic is None:  # best fixed arm in hindsight, from what the others observed
                heuristic = "fixed:" + hindsight_arm(base, all_rows).label
            config = replace(base, mode=mode, policies=(heuristic,))
            label = heuristic
            if heuristic.startswith("fixed:") and heuristic != "fixed:all":
                label = "hindsight:" + Arm.parse(heuristic[6:]).label
            folder = args.out / family / f"{mode}_{label.replace(':', '_').replace(',', '+')}"
            engine = None
            if args.resume and (folder / "rounds.json").exists():  # finished earlier: reuse its rounds
                rows = [RoundRow.from_record(r) for r in json.loads((folder / "rounds.json").read_text())]
            else:
                rows, engine = run_policy(config, heuristic)
            for r in rows:
                r.policy = f"{label} ({mode})"
            all_rows.extend(rows)
            s = summarise(rows)[0]
            print(
                f"| {family} | {label} | {mode} | {s['online_accumulated_error']:.3f} | {s['test_mean_error']:.3e}"
                f" | {s['test_median_error']:.3e} |",
                flush=True,
            )
            if engine is not None:
                write_outputs(rows, {label: engine}, folder)
        write_outputs(all_rows, {}, args.out / family / "all")
        (args.out / family / "summary.json").write_text(json.dumps(summarise(all_rows), indent=1))
        print(f"<!-- {family}: {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()

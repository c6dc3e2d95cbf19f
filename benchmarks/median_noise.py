"""How far a fixed arm's test median moves with the training seed alone: the noise floor under
``prior_campaigns.py``'s "test median within 1.2x of the best fixed arm".

For each family, campaign seed and arm, the arm is trained at that campaign's 10 held-out
contexts (``points_for``; docs/results.md's campaign budget, the campaign's batches) with the
campaign's training seeds (repeat 0: what ``prior_campaigns.py`` scores) and with ``--repeats - 1``
other seed sets (seed + 1000 r). Nothing learns: the contexts and the arm are fixed, only the
network initialisation and the collocation draw change. Prints each repeat's median, and the ratio
of the largest to the smallest, per (family, seed, arm); then, per family and arm, how often a
repeat's median is more than 1.2x its repeat 0's (as a policy that chose this arm everywhere would
score against the same arm's campaign; moves down are not counted).

    python benchmarks/median_noise.py --families reaction advection --seeds 0 1 2 3 4 5 \\
        --arms u single-domain --repeats 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import describe
from prior_campaigns import REPEAT_SEED_STEP, campaign_config, train_held_out

from metalic.arms import Arm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["reaction"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--arms", nargs="+", default=["u", "single-domain"])
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats: at least 2 (the campaign's seeds and one other set)")
    print(f"machine: {describe(torch.device('cpu'))}")
    print("| family | seed | arm | test median per repeat (repeat 0: the campaign's seeds) | largest / smallest |")
    print("|---|---|---|---|---|")
    moved: dict[tuple[str, str], list[float]] = {}
    for family in args.families:
        for seed in args.seeds:
            config = campaign_config(family, seed)
            for label in args.arms:
                arm = Arm.parse(label)
                medians = [
                    statistics.median(train_held_out(config, lambda _, arm=arm: arm, REPEAT_SEED_STEP * r)[1])
                    for r in range(args.repeats)
                ]
                moved.setdefault((family, label), []).extend(m / medians[0] for m in medians[1:])
                cells = " / ".join(f"{m:.3f}" for m in medians)
                print(f"| {family} | {seed} | {label} | {cells} | {max(medians) / min(medians):.2f}x |", flush=True)
    print("\n| family | arm | repeats with a median over 1.2x the campaign seeds' | largest ratio |")
    print("|---|---|---|---|")
    for (family, label), ratios in moved.items():
        over = sum(r > 1.2 for r in ratios)
        print(f"| {family} | {label} | {over} of {len(ratios)} | {max(ratios):.2f}x |")


if __name__ == "__main__":
    main()

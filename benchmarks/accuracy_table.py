"""Error table for all six families at one budget: the rows of docs/results.md.

Each family is trained at its default parameters with three arms in one batch (K = 3):
``u,flux`` , ``all`` and ``u``; authors' network, points, loss weights and learning rates.

    python benchmarks/accuracy_table.py [--adam 2000] [--lbfgs 5000] [--families ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from metalic.arms import Arm
from metalic.families import FAMILIES, get_family
from metalic.pinn.artefact import evaluate_batch
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch
from metalic.settings import resolve_device

ARMS = ("u,flux", "all", "u")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adam", type=int, default=2000)
    parser.add_argument("--lbfgs", type=int, default=5000)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--device", default=None)
    parser.add_argument("--side-data", action="store_true", help="kdv: the authors' x-edge data, no periodic network")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"machine: {describe(device)}")
    print(f"budget: {args.adam} Adam (lr 1e-3) + {args.lbfgs} L-BFGS (lr 0.1) iterations, seed 0")
    print(f"periodic families: {'side data from the reference' if args.side_data else 'periodic network'}\n")
    print("| family | parameters | arm | rel. L2 | max abs | L-BFGS stop | status |")
    print("|---|---|---|---|---|---|---|")
    for name in args.families:
        family = get_family(name)
        params = family.defaults()
        specs = [RunSpec(params, Arm.parse(a), seed=0) for a in ARMS]
        start = time.perf_counter()
        batch = train_batch(
            family,
            specs,
            PinnConfig(side_data=args.side_data and family.period is not None),
            train_config=TrainConfig(adam=args.adam, lbfgs=args.lbfgs),
            device=device,
        )
        metrics = evaluate_batch(batch)
        wall = time.perf_counter() - start
        for spec, m, out in zip(specs, metrics, batch.outcomes, strict=True):
            p = ", ".join(f"{k}={v:g}" for k, v in params.items())
            print(
                f"| {name} | {p} | {spec.arm_adam.label} | {m.rel_l2:.2e} | {m.max_abs:.2e}"
                f" | {out.lbfgs_stop} ({out.lbfgs_iterations}) | {out.status} |",
                flush=True,
            )
        print(f"<!-- {name}: {wall:.0f} s for the batch of {len(specs)} -->", flush=True)


if __name__ == "__main__":
    main()

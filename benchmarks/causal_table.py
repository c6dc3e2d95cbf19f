"""Plain against causal training at equal budgets: the causal rows of docs/results.md.

For each case (a family and its parameters) two runs train in one batch, the same seed and arm:
one plain, one with causal weights in the Adam phase (Wang et al.'s eps schedule, 32 time chunks).
The cases: Burgers at nu = 0.001 and 0.003, Advection at beta = 20 and 30, Reaction at rho = 15,
and every time-dependent family at its default parameters (Poisson is steady: no time to be
causal in). Prints one row per case with both errors, their ratio and e(t) in three windows.

    python benchmarks/causal_table.py [--adam 1000] [--lbfgs 1000] [--arm u,flux]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from metalic.families import FAMILIES, get_family
from metalic.pinn.evaluate import error_over_time, predict_stitched
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch
from metalic.settings import resolve_device

HARD = (("burgers", {"nu": 0.001}), ("burgers", {"nu": 0.003}), ("advection", {"beta": 20.0}),
        ("advection", {"beta": 30.0}), ("reaction", {"rho": 15.0}))  # fmt: skip


def cases(families: list[str]) -> list[tuple[str, dict[str, float]]]:
    defaults = [(f.name, f.defaults()) for f in FAMILIES.values() if f.time_axis is not None]
    return [(name, p) for name, p in [*HARD, *defaults] if name in families]


def windows(family, net, decomposition, params) -> list[tuple[float, list[float]]]:
    """Per run: (rel. L2, RMS of e(t) over the first, middle and last third of the reference's times)."""
    grid = family.reference_grid(params)
    pred = predict_stitched(net, decomposition, grid.points()).reshape(-1, *grid.u.shape)
    out = []
    for p in pred:
        e = error_over_time(p, grid.u, family.time_axis)
        thirds = [float(np.sqrt(np.mean(part**2))) for part in np.array_split(e, 3)]
        out.append((float(np.sqrt(np.mean(e**2))), thirds))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adam", type=int, default=1000)
    parser.add_argument("--lbfgs", type=int, default=1000)
    parser.add_argument("--arm", default="u,flux")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"machine: {describe(device)}")
    print(f"budget: {args.adam} Adam + {args.lbfgs} L-BFGS, arm {args.arm}, seed {args.seed}, float32; causal: "
          f"eps 0.01, 0.1, 1, 10, 100 over 32 chunks (Adam phase)\n")  # fmt: skip
    print("| family | parameters | plain rel. L2 | causal rel. L2 | causal / plain | plain e(t) by thirds | "
          "causal e(t) by thirds | causal finished | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    train = TrainConfig(adam=args.adam, lbfgs=args.lbfgs)
    for name, params in cases(args.families):
        family = get_family(name)
        specs = [RunSpec(params, args.arm, seed=args.seed), RunSpec(params, args.arm, seed=args.seed, causal=True)]
        start = time.perf_counter()
        batch = train_batch(family, specs, PinnConfig(), train, device=device)
        seconds = time.perf_counter() - start
        (plain, plain_t), (causal, causal_t) = windows(family, batch.net, batch.problem.decomposition, params)
        report = batch.outcomes[1].causal
        done = f"eps {report['eps']:g}, min w {report['min_weight']:.2f}"
        if report["finished_at"]:
            done += f", at {report['finished_at']}"
        text = ", ".join(f"{k} = {v:g}" for k, v in params.items())
        print(f"| {name} | {text} | {plain:.2e} | {causal:.2e} | {causal / plain:.2f} | "
              f"{' / '.join(f'{v:.1e}' for v in plain_t)} | {' / '.join(f'{v:.1e}' for v in causal_t)} | "
              f"{done} | {seconds:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

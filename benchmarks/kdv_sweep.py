"""KdV forward problem: how the error grows with t for one network / split / budget.

Trains the default KdV instance (c = 6, arm ``u,flux``) and prints the rel. L2 error per time
window, the overall error and the final loss parts, so that a setting that only fits the initial
state shows as such. The docs/results.md KdV sweep was measured with these settings.

    python benchmarks/kdv_sweep.py --slabs 4 --layers 2,30,30,1 --harmonics 1 --adam 1000 --lbfgs 500
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from metalic.families import get_family
from metalic.pinn.causal import CausalSchedule
from metalic.pinn.evaluate import error_over_time, predict_stitched
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch
from metalic.settings import resolve_device

WINDOWS = ((0.0, 0.01), (0.0, 2.0), (2.0, 5.0), (5.0, 10.0), (10.0, 15.0), (15.0, 20.01))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slabs", type=int, default=2)
    parser.add_argument("--layers", default="2,20,20,1")
    parser.add_argument("--harmonics", type=int, default=1)
    parser.add_argument("--collocation", type=int, default=1000)
    parser.add_argument("--adam", type=int, default=1000)
    parser.add_argument("--lbfgs", type=int, default=500)
    parser.add_argument("--arm", default="u,flux")
    parser.add_argument("--side-data", action="store_true", help="the authors' x-edge data instead")
    parser.add_argument("--causal", action="store_true", help="causal weights in the Adam phase")
    parser.add_argument("--eps", default="0.01,0.1,1,10,100", help="the causal eps schedule")
    parser.add_argument("--chunks", type=int, default=32, help="time chunks of the domain (causal)")
    parser.add_argument("--march", action="store_true", help="train the time slabs one after another")
    parser.add_argument("--adam-lr", type=float, default=1e-3)
    parser.add_argument("--c", type=float, default=6.0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    family = dataclasses.replace(get_family("kdv"), harmonics=args.harmonics)
    layers = tuple(int(w) for w in args.layers.split(","))
    pinn = PinnConfig(layers=layers, subdomains=args.slabs, n_collocation=args.collocation, side_data=args.side_data,
                      causal_chunks=args.chunks)  # fmt: skip
    schedule = CausalSchedule(eps=tuple(float(e) for e in args.eps.split(",")))
    print(f"machine: {describe(device)}")
    start = time.perf_counter()
    train = TrainConfig(adam=args.adam, lbfgs=args.lbfgs, adam_lr=args.adam_lr, compile=True, causal=schedule,
                        march=args.march)  # fmt: skip
    spec = RunSpec({"c": args.c}, args.arm, seed=0, causal=args.causal)
    batch = train_batch(family, [spec], pinn, train, device=device, dtype=args.dtype)
    wall = time.perf_counter() - start
    grid = family.reference_grid({"c": args.c})
    pred = predict_stitched(batch.net, batch.problem.decomposition, grid.points())[0].reshape(grid.u.shape)
    t = grid.axes[1]
    parts = []
    for lo, hi in WINDOWS:
        m = (t >= lo) & (t < hi)
        error = np.linalg.norm(pred[:, m] - grid.u[:, m]) / np.linalg.norm(grid.u[:, m])
        parts.append(f"t in [{lo:g}, {min(hi, 20):g}]: {error:.3f}")
    total = np.linalg.norm(pred - grid.u) / np.linalg.norm(grid.u)
    e = error_over_time(pred, grid.u, 1)  # the error at each time of the grid, over the reference's RMS
    cuts = np.linspace(0.0, 20.0, args.slabs + 1)
    per_slab = [np.sqrt(np.mean(e[(t >= lo) & (t <= hi)] ** 2)) for lo, hi in itertools.pairwise(cuts)]
    print("e(t) RMS per time slab: " + " ".join(f"{v:.3f}" for v in per_slab))
    print(f"slabs {args.slabs}, layers {list(layers)}, harmonics {args.harmonics}, collocation {args.collocation},"
          f" {args.adam} Adam + {args.lbfgs} L-BFGS, side data {args.side_data}: {wall:.0f} s")  # fmt: skip
    print("rel. L2 per time window: " + "; ".join(parts))
    print(f"rel. L2 overall: {total:.3f}; final loss parts: {batch.outcomes[0].loss_parts}")
    print(f"causal: {args.causal} {batch.outcomes[0].causal}; adam iterations {batch.outcomes[0].adam_iterations}")


if __name__ == "__main__":
    main()

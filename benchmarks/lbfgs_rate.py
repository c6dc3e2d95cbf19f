"""L-BFGS iterations per second of the trainer on the authors' Burgers setup (all nine terms, or ``--arm``).

Prints one JSON line {"k": K, "compile": bool, "batch_it_s": ...} per K. It uses only what every
version of the trainer has (``train_batch``, its progress callback, ``TrainConfig``), so
``train_speed.py`` runs it against an earlier commit's tree as the same-run baseline. The first
``--warmup`` iterations (compilation, first allocations) are not timed; both tolerances are 0, so
no run stops early.

    python benchmarks/lbfgs_rate.py --k 1 16 [--steps 100] [--compile [--compile-steps]] [--device cpu] [--arm u,flux]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from metalic.families import get_family
from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch
from metalic.settings import resolve_device


def lbfgs_rate(
    k: int, steps: int, compile_: bool, device: torch.device, warmup: int = 10, arm: str = "all",
    compile_steps: bool | None = None,
) -> float:  # fmt: skip
    """L-BFGS iterations per second of a batch of ``k`` runs (each iteration advances all k).
    ``compile_steps``: also compile the L-BFGS steps (None: the trainer's default; trees before
    that option have no such choice)."""
    marks: dict[int, float] = {}

    def progress(p) -> None:
        if p.phase == "lbfgs":
            if device.type == "cuda":
                torch.cuda.synchronize()
            marks[p.iteration] = time.perf_counter()

    specs = [RunSpec({"nu": 0.01 + 0.001 * (j % 40)}, arm, seed=j) for j in range(k)]
    config = TrainConfig(adam=0, lbfgs=warmup + steps, compile=compile_, tolerance_grad=0.0,
                         tolerance_change=0.0)  # fmt: skip
    if compile_steps is not None:
        config = replace(config, compile_lbfgs=compile_steps)
    train_batch(get_family("burgers"), specs, train_config=config, device=device, progress=progress,
                progress_every=warmup)  # fmt: skip
    return steps / (marks[warmup + steps] - marks[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--arm", default="all", help="the interface terms (the default solve's: u,flux)")
    parser.add_argument("--compile-steps", action="store_true", help="also compile the L-BFGS steps")
    args = parser.parse_args()
    device = resolve_device(args.device)
    for k in args.k:
        steps_compiled = True if args.compile_steps else None
        rate = lbfgs_rate(k, args.steps, args.compile, device, arm=args.arm, compile_steps=steps_compiled)
        print(json.dumps({"k": k, "arm": args.arm, "compile": args.compile, "compile_steps": args.compile_steps,
                          "batch_it_s": rate}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""A worker's batch with its reference grids solved while it trains, against solving them after.

A batch of K Burgers contexts (one viscosity each, as a campaign round sends), each with a cold
reference cache (a fresh temporary folder per measurement): ``jobs.run_solve_batch`` as it is
(the grids start solving in background threads when the batch starts) against the same call with
the prefetch switched off (the grids are solved one by one when the runs are scored). Then the
same batch again with the grids on disk (what every later batch of those contexts costs). Wall
time of the batch, best of ``--repeat``; the baseline is measured in the same run.

    python benchmarks/reference_prefetch.py [--k 8] [--iters 200] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from metalic import settings
from metalic.families.references import CACHE
from metalic.jobs import Run, SolveRequest, run_solve_batch


def batch_seconds(k: int, iters: int, prefetch: bool, cold: bool, caches: Path) -> float:
    """Wall time of one batch; ``cold``: with a new, empty reference cache folder under ``caches``."""
    if cold:
        os.environ["METALIC_REFERENCE_CACHE"] = tempfile.mkdtemp(dir=caches)
        settings.get_settings.cache_clear()
    CACHE.clear_memory()
    requests = [
        SolveRequest(family="burgers", params={"nu": float(nu)}, arm="u,flux", adam=iters, lbfgs=iters, seed=j)
        for j, nu in enumerate(np.linspace(0.002, 0.05, k))
    ]
    start = time.perf_counter()
    run_solve_batch([Run.explicit(r) for r in requests], device="cpu", artefacts=False, compile=False,
                    prefetch=prefetch)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--iters", type=int, default=200, help="Adam and L-BFGS iterations each")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the training (1 on 2 cores: a free core, as beside a GPU)")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {describe(torch.device('cpu'))}")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="metalic-bench-references-") as caches:
        batch_seconds(1, 2, True, True, Path(caches))  # warm-up: imports, first allocations
        for label, prefetch, cold in (("grids solved after training (baseline)", False, True),
                                      ("grids solved while training", True, True),
                                      ("grids read from disk", True, False)):  # fmt: skip
            runs = [batch_seconds(args.k, args.iters, prefetch, cold, Path(caches)) for _ in range(args.repeat)]
            rows[label] = min(runs)
    base = rows["grids solved after training (baseline)"]
    print(f"\nBurgers, K = {args.k} contexts, {args.iters} Adam + {args.iters} L-BFGS, eager, best of {args.repeat}")
    print("| reference grids | batch s | vs baseline |")
    print("|---|---|---|")
    for label, seconds in rows.items():
        print(f"| {label} | {seconds:.2f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()

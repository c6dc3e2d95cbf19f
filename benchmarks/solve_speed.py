"""The default Burgers solve (``metalic solve burgers --param nu=0.01 --arm u,flux --adam 1000
--lbfgs 1000``, eager: 2,000 iterations are under the compile threshold) and its L-BFGS phase
alone (``--adam 0 --lbfgs 1000``), against an earlier commit of this repository checked out in a
temporary git worktree and run in the same session: the same-run baseline. Wall time of the whole
command (process start, reference grid, training, evaluation), best of ``--repeat``.

Each run of the first row starts with an empty reference cache; the second row keeps one (the
earlier commit has no disk cache: its two rows measure the same thing). ``--compiled`` adds the
command with ``--compile`` in both trees, best of ``--repeat`` (the first run fills torch's
compile cache, the later ones read it).

    python benchmarks/solve_speed.py --baseline-ref e0b550c [--repeat 2] [--compiled]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import baseline_tree, describe

ROOT = Path(__file__).resolve().parents[1]

SOLVE = ["solve", "burgers", "--param", "nu=0.01", "--arm", "u,flux", "--quiet"]


def timed(tree: Path, extra: list[str], repeat: int, cold_references: bool = True) -> float:
    """Best wall time of ``repeat`` runs. ``cold_references``: each run gets an empty reference
    cache (a first solve of these parameters); otherwise one cache kept across the runs."""
    env = {**os.environ, "PYTHONPATH": str(tree), "METALIC_DEVICE": "cpu"}
    best = float("inf")
    with tempfile.TemporaryDirectory(prefix="metalic-bench-references-") as caches:
        for run in range(repeat):
            env["METALIC_REFERENCE_CACHE"] = str(Path(caches) / (str(run) if cold_references else "kept"))
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "metalic.cli", *SOLVE, *extra], cwd=tree, env=env, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-ref", default="e0b550c", help="the commit to compare with")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--compiled", action="store_true", help="add a row with --compile (warm compile cache)")
    args = parser.parse_args()
    print(f"machine: {describe(torch.device('cpu'))}")
    with baseline_tree(args.baseline_ref) as old:
        rows = []
        whole = ["--adam", "1000", "--lbfgs", "1000"]
        cases = (("whole solve, 1000 Adam + 1000 L-BFGS", whole, True),
                 ("the same, reference grid already on disk", whole, False),
                 ("L-BFGS phase alone, 1000 iterations", ["--adam", "0", "--lbfgs", "1000"], True))  # fmt: skip
        if args.compiled:  # both trees compile; best of repeat, so the inductor cache is warm by the last run
            cases += (("whole solve, --compile, warm compile cache", [*whole, "--compile"], False),)
        for label, extra, cold in cases:
            base = timed(old, extra, args.repeat, cold)
            now = timed(ROOT, extra, args.repeat, cold)
            rows.append((label, base, now))
        print(f"\n| command | {args.baseline_ref} s | now s | speed-up |")
        print("|---|---|---|---|")
        for label, base, now in rows:
            print(f"| {label} | {base:.1f} | {now:.1f} | {base / now:.2f}x |")


if __name__ == "__main__":
    main()

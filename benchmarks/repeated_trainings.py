"""Trainings one after another in one process (a worker's life), with and without the heap
thresholds of ``metalic/pinn/heap.py`` (``METALIC_TUNE_HEAP``), on the authors' Burgers setup.

Each process runs ``--trainings`` L-BFGS trainings of one run (``lbfgs_rate.py``: the first
``warmup`` iterations untimed) and reports each one's iterations per second and minor page faults
per timed iteration. Processes with the thresholds on and off alternate, ``--repeat`` pairs;
every figure is a ratio to the same position with the thresholds off, measured in the same run.

    python benchmarks/repeated_trainings.py [--arm all] [--trainings 3] [--repeat 2] [--steps 300]
                                            [--modes eager compiled]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe


def child(arm: str, trainings: int, steps: int, compile_: bool) -> None:
    from lbfgs_rate import lbfgs_rate

    for _ in range(trainings):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        rate = lbfgs_rate(1, steps, compile_, torch.device("cpu"), arm=arm)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (steps + 10)
        print(json.dumps({"it_s": rate, "faults": faults}), flush=True)


def measure(arm: str, trainings: int, steps: int, compile_: bool, tuned: bool) -> list[dict]:
    cmd = [sys.executable, __file__, "--child", "--arm", arm, "--trainings", str(trainings), "--steps", str(steps)]
    cmd += ["--modes", "compiled" if compile_ else "eager"]
    env = {**os.environ, "METALIC_TUNE_HEAP": str(tuned).lower(), "METALIC_DEVICE": "cpu"}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arm", default="all")
    parser.add_argument("--trainings", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.arm, args.trainings, args.steps, args.modes[0] == "compiled")
        return
    print(f"machine: {describe(torch.device('cpu'))}")
    print(f"Burgers, arm {args.arm}, K = 1, {args.steps} timed L-BFGS iterations per training, {args.repeat} pairs")
    print("| mode | training in the process | off: it/s (faults/it) | on: it/s (faults/it) | on / off, median |")
    print("|---|---|---|---|---|")
    for mode in args.modes:
        runs: dict[bool, list[list[dict]]] = {False: [], True: []}
        for _ in range(args.repeat):  # alternate, so that a slow spell of the machine hits both
            for tuned in (False, True):
                runs[tuned].append(measure(args.arm, args.trainings, args.steps, mode == "compiled", tuned))
        for i in range(args.trainings):
            off = [r[i] for r in runs[False]]
            on = [r[i] for r in runs[True]]
            ratio = statistics.median(b["it_s"] / a["it_s"] for a, b in zip(off, on, strict=True))

            def cell(rows: list[dict]) -> str:
                return " / ".join(f"{r['it_s']:.0f} ({r['faults']:.0f})" for r in rows)

            print(f"| {mode} | {i + 1} | {cell(off)} | {cell(on)} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

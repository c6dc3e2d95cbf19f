"""Adam iterations per second on the authors' Burgers setup, against a same-run baseline.

Setup (reference §5): two subdomains (strip |x| < 0.1 and the rest), [2, 20, 20, 1] tanh MLPs,
1000 collocation + 100 boundary points per subdomain, 2 x 401 interface points, all nine
interface terms on. The baseline is ``per_subdomain_baseline.py``: one nn.Module per subdomain
and nested reverse-mode autograd (the authors' way). metalic is timed through its real trainer
loop (``train_batch``), excluding start-up and compilation, for K = 1, 4, 16 runs batched, eager
and torch.compile'd. Every figure is printed as a ratio to the baseline measured in this run.
On a GPU each row adds the training's peak memory per run (``torch.cuda.max_memory_allocated``
and ``max_memory_reserved`` over K; ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` in the
environment tries the expandable-segments allocator).

L-BFGS rows (``--lbfgs``): L-BFGS iterations per second of the same batch (``lbfgs_rate.py``)
from this tree and from an earlier commit's tree (``--baseline-ref``, checked out in a temporary
git worktree), each measurement in its own subprocess, alternately, in the same session, eager
and compiled; each printed as a ratio to the earlier commit at the same K. The whole default
solve (1,000 Adam + 1,000 L-BFGS, wall time of the command) is ``solve_speed.py``.

    python benchmarks/train_speed.py [--device cpu|cuda] [--steps 60] [--k 1 4 16] [--no-compile]
    python benchmarks/train_speed.py --lbfgs [--k 1 16] [--steps 990] [--arms all u,flux] [--repeat 3]
                                         [--baseline-ref e0b550c] [--no-compile | --compiled-only]
                                         [--compile-steps]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import baseline_tree, describe
from per_subdomain_baseline import BaselineBurgers

from metalic.families import get_family
from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch
from metalic.settings import resolve_device

WARMUP = 10


def baseline_rate(steps: int, device: torch.device) -> float:
    if device.type != "cpu":
        return float("nan")  # the baseline is the authors' CPU setting
    model = BaselineBurgers()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad()
        model.loss().backward()
        opt.step()

    for _ in range(WARMUP):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def metalic_rate(k: int, steps: int, compile_: bool, device: torch.device) -> float:
    """Adam iterations per second of one run (the batch does k of them per iteration). On a GPU
    it also records the training's peak memory per run (``PEAK_MIB``: allocated, reserved)."""
    marks: dict[int, float] = {}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    def progress(p):
        if p.phase == "adam":
            if device.type == "cuda":
                torch.cuda.synchronize()
            marks[p.iteration] = time.perf_counter()

    total = WARMUP + steps
    specs = [RunSpec({"nu": 0.01 + 0.001 * j}, "all", seed=j) for j in range(k)]
    train_batch(
        get_family("burgers"),
        specs,
        train_config=TrainConfig(adam=total, lbfgs=0, compile=compile_),
        device=device,
        progress=progress,
        progress_every=WARMUP,
    )
    if device.type == "cuda":
        mib = 2**20 * k
        PEAK_MIB[(compile_, k)] = (torch.cuda.max_memory_allocated(device) / mib,
                                   torch.cuda.max_memory_reserved(device) / mib)  # fmt: skip
    return steps / (marks[total] - marks[WARMUP])


PEAK_MIB: dict[tuple[bool, int], tuple[float, float]] = {}  # (compiled, K) -> MiB per run


def lbfgs_rows(
    ks: list[int], steps: int, modes: list[str], device: torch.device, ref: str, arms: list[str], repeat: int
) -> None:
    """L-BFGS batch it/s of this tree against the tree of commit ``ref``, at each arm, K and mode
    (``eager``, ``compiled``, or ``compiled+steps``: this tree also compiles the L-BFGS steps, the
    earlier one compiles its loss as in ``compiled``)."""
    root = Path(__file__).resolve().parents[1]
    with baseline_tree(ref) as old:
        print(f"\nL-BFGS, Burgers, {steps} timed iterations | {ref} and this tree alternately, {repeat} pairs")
        print(f"| arm | mode | K | {ref} run-it/s | now run-it/s | speed-up, median (range) |")
        print("|---|---|---|---|---|---|")
        for arm, name, k in ((a, m, k) for a in arms for m in modes for k in ks):
            script = str(Path(__file__).parent / "lbfgs_rate.py")
            cmd = [sys.executable, script, "--k", str(k), "--steps", str(steps), "--device", str(device), "--arm", arm]
            cmd += ["--compile"] if name != "eager" else []
            bases, nows = [], []
            for _ in range(repeat):  # alternate, so that a slow spell of the machine hits both
                # Each measurement in a fresh process: a compiled loss kept from an earlier
                # training of this process would otherwise be reused (see pinn/compiled.py).
                for tree, rates in ((old, bases), (root, nows)):
                    env = {**os.environ, "PYTHONPATH": str(tree)}
                    extra = ["--compile-steps"] if name == "compiled+steps" and tree == root else []
                    out = subprocess.run([*cmd, *extra], cwd=tree, env=env, check=True, capture_output=True,
                                         text=True).stdout  # fmt: skip
                    rates.append(json.loads(out.strip().splitlines()[-1])["batch_it_s"] * k)
            ratios = sorted(n / b for n, b in zip(nows, bases, strict=True))
            print(f"| {arm} | {name} | {k} | {statistics.median(bases):.1f} | {statistics.median(nows):.1f} | "
                  f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed iterations (Adam: 60, L-BFGS: 990)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--lbfgs", action="store_true", help="the L-BFGS rows against --baseline-ref instead")
    parser.add_argument("--compiled-only", action="store_true", help="L-BFGS rows: only the compiled ones")
    parser.add_argument("--compile-steps", action="store_true", help="L-BFGS rows: add compiled rows where this "
                        "tree also compiles the L-BFGS steps")  # fmt: skip
    parser.add_argument("--baseline-ref", default="e0b550c", help="the commit the L-BFGS rows compare with")
    parser.add_argument("--arms", nargs="+", default=["all", "u,flux"], help="the L-BFGS rows' arms")
    parser.add_argument("--repeat", type=int, default=3, help="L-BFGS rows: alternating pairs of measurements")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"machine: {describe(device)}")
    if args.lbfgs:
        modes = ["eager"] if args.no_compile else ["compiled"] if args.compiled_only else ["eager", "compiled"]
        modes += ["compiled+steps"] if args.compile_steps else []
        steps = args.steps or 990  # a whole default phase (10 + 990): the old L-BFGS slowed as it went
        lbfgs_rows(args.k, steps, modes, device, args.baseline_ref, args.arms, args.repeat)
        return
    args.steps = args.steps or 60
    base = baseline_rate(args.steps, device)
    print(f"baseline (per-subdomain modules, nested autograd), K=1: {base:8.1f} it/s")
    modes = [False] if args.no_compile else [False, True]
    rows = []
    for compile_ in modes:
        single = None
        for k in args.k:
            rate = metalic_rate(k, args.steps, compile_, device)
            single = rate if k == 1 else single
            rows.append((compile_, k, rate, single))
            name = "compiled" if compile_ else "eager"
            line = f"metalic {name:8s} K={k:<3d} {rate:8.1f} batch it/s, {rate * k:9.1f} run-it/s"
            line += f" | {rate * k / base:6.1f}x baseline" if base == base else ""
            if single:
                line += f" | {rate * k / single:5.2f}x K=1 aggregate"
            if (compile_, k) in PEAK_MIB:
                allocated, reserved = PEAK_MIB[(compile_, k)]
                line += f" | peak {allocated:.1f} MiB allocated, {reserved:.1f} MiB reserved per run"
            print(line, flush=True)


if __name__ == "__main__":
    main()

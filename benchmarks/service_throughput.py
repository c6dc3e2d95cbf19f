"""Service overhead: N solve tasks through the whole path against the same trainings called directly.

Path: submit to the store -> dispatcher -> Ray trainer actor (``run_batch``: train, evaluate,
serialise the model and the solution grid, write progress and results) -> store. Baseline, same
process, same batches of ``--max-batch``: ``train_batch`` + ``evaluate_batch`` (the least work that
answers a solve), and ``run_solve_batch`` (the same plus the artefacts a service returns). Both
sides are warmed up with one batch first (the actor's first batch imports and caches).

    python benchmarks/service_throughput.py --tasks 32 --adam 500 --lbfgs 500
    python benchmarks/service_throughput.py --family burgers --tasks 256 --adam 1000 --lbfgs 1000 \\
        --max-batch 256 --alone 4      # on a GPU: 256 packed against 256 x one at a time (4 timed)

Prints its figures as ratios against the same-run baseline, and the machine it ran on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import migrations

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from metalic.families import get_family
from metalic.jobs import Run, SolveRequest, run_solve_batch
from metalic.pinn.artefact import evaluate_batch
from metalic.pinn.trainer import RunSpec, train_batch
from metalic.settings import Settings, resolve_device


def requests(args, n: int, seed0: int) -> list[SolveRequest]:
    fam = get_family(args.family)
    p = fam.params[0]
    out = []
    for i in range(n):
        value = p.lo + (p.hi - p.lo) * ((i * 0.618034) % 1.0)
        out.append(
            SolveRequest(
                family=args.family, params={p.name: value}, arm="u,flux", seed=seed0 + i, adam=args.adam,
                lbfgs=args.lbfgs, collocation=args.collocation, boundary=args.boundary,
                interface_points=args.interface_points,
            )
        )  # fmt: skip
    return out


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def direct(args, reqs: list[SolveRequest], device, artefacts: bool) -> float:
    """Wall seconds for the trainings in batches of --max-batch, in this process."""
    start = time.perf_counter()
    for chunk in chunks(reqs, args.max_batch):
        if artefacts:
            run_solve_batch([Run.explicit(r) for r in chunk], device=device)
        else:
            r0 = chunk[0]
            specs = [RunSpec(r.params, "u,flux", None, r.seed) for r in chunk]
            batch = train_batch(get_family(r0.family), specs, r0.pinn_config(), r0.train_config(), device=device)
            evaluate_batch(batch)
    return time.perf_counter() - start


def through_service(args, reqs: list[SolveRequest], warm: list[SolveRequest]) -> tuple[float, float, int]:
    """(wall seconds for ``reqs`` from first submit to last result, start-up seconds, batches)."""
    from metalic.store import Store, reports
    from metalic.store import tasks as task_store
    from workers.cluster import connect
    from workers.dispatcher import Dispatcher
    from workers.executors import InlineExecutor, RayExecutor

    folder = tempfile.mkdtemp(prefix="metalic-bench-")
    store = Store(f"sqlite:///{folder}/bench.db")
    migrations.upgrade(store)
    settings = Settings(max_batch_cpu=args.max_batch, max_batch_gpu=args.max_batch, cpu_workers=1)
    t0 = time.perf_counter()
    if args.inline:
        executor = InlineExecutor(store, settings, args.device or "auto", args.max_batch)
    else:
        connect(None)
        executor = RayExecutor(store.url, settings, args.max_batch)
    disp = Dispatcher(store, executor, settings, args.max_batch).start()
    startup = time.perf_counter() - t0

    def finished() -> int:
        counts = task_store.counts_by_state(store)
        return counts.get("succeeded", 0) + counts.get("failed", 0)

    def wait(n: int) -> None:
        while finished() < n:
            time.sleep(0.1)

    task_store.submit_many(store, warm)
    wait(len(warm))
    disp.wait_idle()
    start = time.perf_counter()
    task_store.submit_many(store, reqs)  # one transaction, as a client submitting a batch of instances
    disp.wake.set()
    wait(len(warm) + len(reqs))
    wall = time.perf_counter() - start
    disp.wait_idle()
    batches = reports.totals(store).batches - len(chunks(warm, args.max_batch))
    disp.stop()
    return wall, startup, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="advection")
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--adam", type=int, default=500)
    parser.add_argument("--lbfgs", type=int, default=500)
    parser.add_argument("--collocation", type=int, default=200)
    parser.add_argument("--boundary", type=int, default=50)
    parser.add_argument("--interface-points", type=int, default=51)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--device", default=None)
    parser.add_argument("--inline", action="store_true", help="trainer thread in this process instead of Ray")
    parser.add_argument("--alone", type=int, default=0, help="also time this many trainings one at a time")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"machine: {describe(device)}")
    print(f"{args.tasks} {args.family} tasks, {args.adam} Adam + {args.lbfgs} L-BFGS, {args.collocation} collocation"
          f" points, batches of {args.max_batch}, executor {'inline' if args.inline else 'Ray actor'}\n")  # fmt: skip
    reqs = requests(args, args.tasks, 1000)
    warm = requests(args, min(args.max_batch, args.tasks), 0)
    direct(args, warm, device, artefacts=True)  # warm-up: imports, caches
    base = direct(args, reqs, device, artefacts=False)
    with_artefacts = direct(args, reqs, device, artefacts=True)
    wall, startup, batches = through_service(args, reqs, warm)
    n = args.tasks
    print("| path | wall s | per task s | vs train_batch |")
    print("|---|---|---|---|")
    print(f"| train_batch + evaluate_batch (baseline) | {base:.2f} | {base / n:.3f} | 1.00x |")
    print(f"| run_solve_batch (+ model and solution bytes) | {with_artefacts:.2f} | {with_artefacts / n:.3f} |"
          f" {with_artefacts / base:.3f}x |")  # fmt: skip
    print(f"| service: store -> dispatcher -> actor -> store | {wall:.2f} | {wall / n:.3f} | {wall / base:.3f}x |")
    print(f"\nservice overhead per task: {(wall - base) / n * 1000:.0f} ms ({(wall / base - 1) * 100:.1f}% of the "
          f"direct trainings; {(wall / with_artefacts - 1) * 100:.1f}% over run_solve_batch)")  # fmt: skip
    print(f"service throughput: {n / wall * 3600:.0f} tasks per hour in {batches} batches;"
          f" start-up (Ray, actors, dispatcher) {startup:.1f} s, not included")  # fmt: skip
    if args.alone:
        alone = direct(argparse.Namespace(**{**vars(args), "max_batch": 1}), reqs[: args.alone], device, False)
        per = alone / args.alone
        print(f"one at a time: {per:.2f} s per training -> {per * n:.1f} s for {n}; packed service:"
              f" {wall:.1f} s ({per * n / wall:.1f}x faster)")  # fmt: skip


if __name__ == "__main__":
    main()

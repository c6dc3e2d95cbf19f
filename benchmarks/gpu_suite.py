"""The service's figures on one device, as one command: one JSON file and one markdown table.

1. The trainer's rate in run-iterations per second (runs x iterations / s) for Adam and for L-BFGS
   at K = 1, 16, 256 and 1,024 runs batched, eager and compiled, on Burgers' default setup (two
   subdomains, 1,000 collocation and 100 boundary points per subdomain, arm u,flux), with the peak
   memory per run on a GPU. Each rate is also a ratio to K = 1 eager, the same-run baseline.
2. The default Burgers solve (1,000 Adam + 1,000 L-BFGS, ``run_solve_batch``), wall time.
3. 256 Burgers tasks of that budget through the real store and dispatcher with one trainer on the
   device (the in-process executor: no Ray needed), as tasks per hour.
4. A small campaign (Advection, UCB and a fixed arm) through the same store and dispatcher, wall time.

Every section is timed on its own; one that raises is recorded with its error, and the rest go on.
``--budget`` stops starting new measurements after that many seconds (what was measured is kept).
``--tiny`` runs every section at toy sizes (K = 1, 2; a few iterations; compiled with dynamo's
``eager`` backend, so its path is exercised without inductor's compile time): the test suite runs
it on the CPU so that the suite cannot rot.

    python benchmarks/gpu_suite.py [--out out/gpu_suite] [--device cuda] [--budget 450] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from metalic.families import get_family
from metalic.pinn import compiled
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch
from metalic.settings import Settings, resolve_device

FULL = {
    "k": (1, 16, 256, 1024),
    "adam_steps": 100,
    "lbfgs_steps": 100,
    "solve": (1000, 1000),
    "tasks": 256,
    "task_budget": (1000, 1000),
    "campaign": {"warmup": 4, "rounds": 8, "test": 4, "adam": 500, "lbfgs": 500},
}
TINY = {"k": (1, 2), "adam_steps": 4, "lbfgs_steps": 4, "solve": (6, 4), "tasks": 4, "task_budget": (6, 4),
        "campaign": {"warmup": 2, "rounds": 2, "test": 1, "adam": 6, "lbfgs": 4}}  # fmt: skip
POINTS = PinnConfig(n_collocation=1000, n_boundary=100)
TINY_POINTS = PinnConfig(n_collocation=40, n_boundary=10, n_interface=9)


class Clock:
    """Seconds left of the suite's budget."""

    def __init__(self, budget: float):
        self.end = time.monotonic() + budget

    def left(self) -> float:
        return self.end - time.monotonic()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_rate(device: torch.device, k: int, compile_: bool, phase: str, steps: int, points: PinnConfig) -> dict:
    """One measurement: a warm-up training (compiles when asked), then a timed one of ``steps``
    iterations of ``phase`` for K runs; peak memory over the timed training, per run."""
    family = get_family("burgers")
    specs = [RunSpec({"nu": 0.01 if k <= 2 else 0.005 + 0.04 * j / (k - 1)}, "u,flux", seed=j) for j in range(k)]
    budget = {"adam": steps, "lbfgs": 0} if phase == "adam" else {"adam": 0, "lbfgs": steps}
    config = TrainConfig(**budget, compile=compile_, tolerance_grad=0.0, tolerance_change=0.0)
    train_batch(family, specs, points, TrainConfig(**{**budget, phase: 2}, compile=compile_), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    batch = train_batch(family, specs, points, config, device=device)
    _sync(device)
    seconds = time.perf_counter() - start
    done = sum(o.adam_iterations if phase == "adam" else o.lbfgs_iterations for o in batch.outcomes)
    out = {"k": k, "mode": "compiled" if compile_ else "eager", "phase": phase, "seconds": seconds,
           "run_iterations_per_s": done / seconds}  # fmt: skip
    if device.type == "cuda":
        out["peak_mb_per_run"] = torch.cuda.max_memory_allocated(device) / k / 2**20
        out["reserved_mb_per_run"] = torch.cuda.max_memory_reserved(device) / k / 2**20
    return out


def default_solve(device: torch.device, budget: tuple[int, int], points: PinnConfig) -> dict:
    from metalic.jobs import Run, SolveRequest, run_solve_batch

    request = SolveRequest(family="burgers", params={"nu": 0.01}, arm="u,flux", adam=budget[0], lbfgs=budget[1],
                           collocation=points.n_collocation, boundary=points.n_boundary,
                           interface_points=points.n_interface)  # fmt: skip
    start = time.perf_counter()
    (result,) = run_solve_batch([Run.explicit(request)], device=device)
    return {"seconds": time.perf_counter() - start, "rel_l2": result.rel_l2, "status": result.status}


def _service(device: torch.device, max_batch: int):
    """A SQLite store in a temporary folder, one in-process trainer on ``device``, a dispatcher."""
    import migrations
    from metalic.store import Store
    from workers.dispatcher import Dispatcher
    from workers.executors import InlineExecutor

    store = Store(f"sqlite:///{tempfile.mkdtemp(prefix='metalic-gpu-suite-')}/suite.db")
    migrations.upgrade(store)
    settings = Settings(max_batch_gpu=max_batch, max_batch_cpu=max_batch, poll_seconds=0.05, progress_seconds=2.0)
    executor = InlineExecutor(store, settings, str(device), max_batch)
    return store, Dispatcher(store, executor, settings, max_batch).start()


def tasks_through_the_service(device: torch.device, n: int, budget: tuple[int, int], points: PinnConfig) -> dict:
    from metalic.jobs import SolveRequest
    from metalic.store import tasks as task_store

    store, dispatcher = _service(device, max_batch=256)
    nus = [0.01, 0.02] * n if n <= 8 else [0.002 + 0.045 * i / (n - 1) for i in range(n)]  # tiny: cached grids
    try:
        requests = [
            SolveRequest(family="burgers", params={"nu": nus[i]}, arm="u,flux",
                         adam=budget[0], lbfgs=budget[1], collocation=points.n_collocation,
                         boundary=points.n_boundary, interface_points=points.n_interface, seed=i)
            for i in range(n)
        ]  # fmt: skip
        start = time.perf_counter()
        task_store.submit_many(store, requests)
        dispatcher.wake.set()
        while True:
            counts = task_store.counts_by_state(store)
            if counts.get("succeeded", 0) + counts.get("failed", 0) >= n:
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - start
    finally:
        dispatcher.stop()
    return {"tasks": n, "seconds": seconds, "tasks_per_hour": n / seconds * 3600, "states": counts}


def small_campaign(device: torch.device, c: dict, points: PinnConfig) -> dict:
    from metalic.campaign import CampaignConfig
    from metalic.store import campaigns

    store, dispatcher = _service(device, max_batch=64)
    config = CampaignConfig(family="advection", policies=("ucb", "fixed:u,flux"), warmup=c["warmup"],
                            rounds=c["rounds"], test=c["test"], batch=4, train=TrainConfig(adam=c["adam"],
                            lbfgs=c["lbfgs"]), pinn=points)  # fmt: skip
    try:
        start = time.perf_counter()
        camp = campaigns.create(store, config)
        dispatcher.wake.set()
        while campaigns.get(store, camp.id).state == "running":
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        state = campaigns.get(store, camp.id).state
    finally:
        dispatcher.stop()
    return {"seconds": seconds, "state": state, "rounds": c["warmup"] + c["rounds"] + c["test"]}


def measure(results: dict, name: str, clock: Clock, fn: Callable[[], dict]) -> None:
    """Run one measurement into ``results[name]``: its figures, or its error (recorded, not raised)."""
    if clock.left() <= 0:
        results[name] = {"skipped": "out of the time budget"}
        return
    start = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # a failed measurement is a result too
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=3)}
    print(f"  {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def table(results: dict) -> str:
    """The markdown table of every figure."""
    lines = ["| measurement | figure | vs K = 1 eager | peak MB / run |", "|---|---|---|---|"]
    base = {}
    for r in results["trainer"].values():
        if "run_iterations_per_s" in r and r["k"] == 1 and r["mode"] == "eager":
            base[r["phase"]] = r["run_iterations_per_s"]
    for name, r in results["trainer"].items():
        if "run_iterations_per_s" not in r:
            lines.append(f"| {name} | {next(iter(r.values()))} | | |")
            continue
        ratio = r["run_iterations_per_s"] / base[r["phase"]] if r["phase"] in base else float("nan")
        peak = f"{r['peak_mb_per_run']:.1f}" if "peak_mb_per_run" in r else "-"
        lines.append(f"| {name} | {r['run_iterations_per_s']:,.0f} run-it/s | {ratio:.1f}x | {peak} |")
    for name, key, unit in (("default Burgers solve", "seconds", "s"),
                            (f"{results['config']['tasks']} Burgers tasks, store + dispatcher", "tasks_per_hour",
                             "tasks / hour"), ("small campaign", "seconds", "s")):  # fmt: skip
        r = results[name]
        figure = f"{r[key]:,.1f} {unit}" if key in r else next(iter(r.values()))
        lines.append(f"| {name} | {figure} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/gpu_suite"))
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds; no new measurement starts after")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a test of the suite, on the CPU)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    sizes, points = (TINY, TINY_POINTS) if args.tiny else (FULL, POINTS)
    if args.tiny:
        compiled.BACKEND = "eager"  # dynamo's tracing only: the compiled path, without inductor's minutes
    clock = Clock(args.budget)
    results: dict = {"machine": describe(device), "config": {**sizes, "tiny": args.tiny}, "trainer": {}}
    for phase, steps in (("adam", sizes["adam_steps"]), ("lbfgs", sizes["lbfgs_steps"])):
        for compile_ in (False, True):
            for k in sizes["k"]:
                name = f"{phase}, K = {k}, {'compiled' if compile_ else 'eager'}"
                measure(results["trainer"], name, clock,
                        lambda k=k, c=compile_, p=phase, s=steps: trainer_rate(device, k, c, p, s, points))  # fmt: skip
    measure(results, "default Burgers solve", clock, lambda: default_solve(device, sizes["solve"], points))
    name = f"{sizes['tasks']} Burgers tasks, store + dispatcher"
    measure(results, name, clock, lambda: tasks_through_the_service(device, sizes["tasks"], sizes["task_budget"],
                                                                   points))  # fmt: skip
    measure(results, "small campaign", clock, lambda: small_campaign(device, sizes["campaign"], points))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_suite.json").write_text(json.dumps(results, indent=1, default=str))
    text = f"machine: {results['machine']}\n\n{table(results)}\n"
    (args.out / "gpu_suite.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

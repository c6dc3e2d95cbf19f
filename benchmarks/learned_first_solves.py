"""A fresh install's first `learned` solves against fixed arms, at the same contexts and budget.

One fresh store (SQLite in a temporary folder) and the service's dispatcher with one in-process
trainer (``InlineExecutor``: the packer, the studies, the engines and the trainer of ``make
serve``, without Ray). Submitted in this order, all with seed 0 and the README's budget (Burgers
at nu = 0.005, 0.01, 0.02, 0.04, 300 Adam + 200 L-BFGS):

- the contexts as ``learned``: their study starts from the installed prior (what a fresh install
  does; ``--no-priors`` leaves it out);
- the contexts as ``learned`` with ``prior: false``: a study without a prior (the cold start);
- the contexts with each fixed arm (flux, u,flux, u, none, all, single-domain).

The learned solves are packed first, as the README's four are, so each learned study chooses
before it has any observation of its own. Prints the rel. L2 of every solve and the median per
arm, and the learned medians as ratios to the best fixed arm's median (same run).

``--earlier ADAM LBFGS`` adds the case of a team that solved at one budget and now asks at
another: a second fresh store first solves ``--earlier-values`` as ``learned`` at that budget
(their study stands on the shipped prior, and refits), then the same learned solves as above; the
new budget's study stands on the earlier study's snapshot (``study:<id>@v<version>``).

    python benchmarks/learned_first_solves.py
    python benchmarks/learned_first_solves.py --family advection --param beta --values 2 8 15 25
    python benchmarks/learned_first_solves.py --adam 1000 --lbfgs 1000 --earlier 300 200 \
        --earlier-values 0.003 0.005 0.007 0.01 0.015 0.02 0.03 0.04
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import describe

from metalic.arms import BASELINE_LABELS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="burgers")
    parser.add_argument("--param", default="nu")
    parser.add_argument("--values", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.04])
    parser.add_argument("--adam", type=int, default=300)
    parser.add_argument("--lbfgs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixed", nargs="+", default=list(BASELINE_LABELS))
    parser.add_argument("--no-priors", action="store_true", help="leave out the learned solves on the prior")
    parser.add_argument("--earlier", type=int, nargs=2, default=None, metavar=("ADAM", "LBFGS"))
    parser.add_argument("--earlier-values", type=float, nargs="+", default=None)
    args = parser.parse_args()
    os.environ["METALIC_PRIORS"] = "off" if args.no_priors else "on"

    import migrations
    from metalic import priors
    from metalic.jobs import SolveRequest
    from metalic.settings import Settings, get_settings
    from metalic.store import Store
    from metalic.store import tasks as task_store
    from metalic.store.models import StudyRow
    from workers.dispatcher import Dispatcher
    from workers.executors import InlineExecutor

    get_settings.cache_clear()
    print(f"machine: {describe(torch.device('cpu'))}")
    asked = {"adam": args.adam, "lbfgs": args.lbfgs, "collocation": SolveRequest.model_fields["collocation"].default}
    prior = priors.for_budget(args.family, "single", asked)  # what the new study starts from
    print(f"prior: {prior.ref if prior else 'none'}" + (f" ({prior.trainings} trainings)" if prior else ""))

    def fresh_store() -> Store:
        store = Store(f"sqlite:///{tempfile.mkdtemp(prefix='metalic-first-')}/first.db")
        migrations.upgrade(store)
        return store

    def request(value: float, arm: str, with_prior: bool = True, budget=None) -> SolveRequest:
        adam, lbfgs = budget or (args.adam, args.lbfgs)
        return SolveRequest(family=args.family, params={args.param: value}, arm=arm, adam=adam,
                            lbfgs=lbfgs, seed=args.seed, prior=with_prior)  # fmt: skip

    settings = Settings(poll_seconds=0.05, batch_window_seconds=0.0)

    def solve_all(store: Store) -> None:
        dispatcher = Dispatcher(store, InlineExecutor(store, settings, "cpu", 8), settings, max_batch=8).start()
        try:
            dispatcher.wake.set()
            while _open(store):
                time.sleep(0.2)
            dispatcher.wait_idle(600)
        finally:
            dispatcher.stop()

    store = fresh_store()
    groups: dict[str, list[int]] = {}
    plan = ([("learned, on the prior", "learned", True)] if prior else []) + [("learned, no prior", "learned", False)]
    plan += [(arm, arm, True) for arm in args.fixed]
    for label, arm, with_prior in plan:
        groups[label] = [task_store.submit(store, request(v, arm, with_prior), "bench")[0].id for v in args.values]
    started = time.perf_counter()
    solve_all(store)
    wall = time.perf_counter() - started
    stores = dict.fromkeys(groups, store)
    if args.earlier:
        earlier = fresh_store()
        for v in args.earlier_values or args.values:
            task_store.submit(earlier, request(v, "learned", budget=args.earlier), "bench")
        solve_all(earlier)  # waits for the refit too
        label = f"learned, on the study at {args.earlier[0]} + {args.earlier[1]}"
        groups[label] = [task_store.submit(earlier, request(v, "learned"), "bench")[0].id for v in args.values]
        stores[label] = earlier
        solve_all(earlier)
        study = task_store.get_task(earlier, groups[label][0]).study_id
        with earlier.read() as s:
            print(f"the new budget's study stands on {s.get(StudyRow, study).prior}")
    medians = {}
    print(f"\n{args.family}, {args.param} = {args.values}, {args.adam} Adam + {args.lbfgs} L-BFGS, seed {args.seed}")
    print("\n| arm | " + " | ".join(f"{args.param} = {v:g}" for v in args.values) + " | median |")
    print("|---|" + "---|" * (len(args.values) + 1))
    for label, ids in groups.items():
        tasks = [task_store.get_task(stores[label], i) for i in ids]
        errors = [t.rel_l2 if t.rel_l2 is not None else float("nan") for t in tasks]
        medians[label] = statistics.median(errors)
        chosen = " / ".join(t.arm_adam.label for t in tasks) if label.startswith("learned") else ""
        cells = " | ".join(f"{e:.3g}" for e in errors)
        print(f"| {label}{f' ({chosen})' if chosen else ''} | {cells} | {medians[label]:.3g} |")
    best = min((m, a) for a, m in medians.items() if a in args.fixed)
    n = sum(len(ids) for label, ids in groups.items() if stores[label] is store)
    print(f"\nbest fixed arm: {best[1]} (median {best[0]:.3g}); the first store's {n} solves in {wall:.0f} s")
    for label in medians:
        if label.startswith("learned"):
            print(f"{label}: median / best fixed median = {medians[label] / best[0]:.2f}x")


def _open(store) -> int:
    from sqlalchemy import func, select

    from metalic.store.models import TaskRow

    with store.read() as s:
        return s.scalar(select(func.count()).select_from(TaskRow).where(TaskRow.state.in_(("queued", "running"))))


if __name__ == "__main__":
    main()

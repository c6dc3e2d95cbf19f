"""Bandit engine latency: suggestion over all 512 arms, and GP refit, at n = 50, 200, 1000; and
an engine's restore from its snapshot at n = 2000 (what the dashboard and the recommendation route
do for a new snapshot).

Baselines in the same run: for the refit, the authors' approach, a GP re-created and refitted from
default hyper-parameters every round (metalic refits warm-started from the previous round's
hyper-parameters); for the restore, the Hamming kernel computed pair by pair for every pair
(``BinaryHammingKernel.GATHER_PAIRS`` raised past n^2) instead of per distinct bit pattern and
gathered, and the GP inputs built one observation per ``observe`` call instead of all at once.
Data: a planted reward over (Advection's beta, arm) with noise.

    python benchmarks/bandit_speed.py [--n 50 200 1000] [--restore 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest.mock import patch

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from metalic.arms import Arm
from metalic.bandit.engine import BanditEngine, Observation
from metalic.bandit.surrogate import BinaryHammingKernel, RewardGP

BEST = ((1, 0, 0, 1, 1, 0, 0, 0, 0), (0, 1, 1, 0, 0, 0, 1, 0, 1))


def observations(n: int, seed: int = 0) -> list[Observation]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        beta = 1 + 29 * float(torch.rand(1, generator=g))
        arm = Arm.from_index(int(torch.randint(512, (1,), generator=g)))
        best = BEST[beta > 15.5]
        wrong = sum(a != b for a, b in zip(arm.term_mask, best, strict=True))
        reward = 3 - 0.4 * wrong + 0.05 * float(torch.randn(1, generator=g))
        out.append(Observation({"beta": beta}, arm, reward))
    return out


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(n: int, repeat: int) -> None:
    obs = observations(n + repeat)
    engine = BanditEngine("advection", policy="ucb", seed=0)
    engine.observe(*obs[: n - 1])
    extra = iter(obs[n - 1 :])
    warm = timed(lambda: engine.observe(next(extra)), repeat)  # n, n+1, ... observations

    x = torch.stack(engine.adam.x)
    y = torch.tensor(engine.adam.y, dtype=torch.float64)
    scratch = timed(lambda: RewardGP(1).fit(x, y), max(2, repeat // 2))

    ctx = {"beta": 7.0}
    engine.suggest(ctx)  # first call after a refit builds the prediction caches
    ucb = timed(lambda: engine.suggest(ctx), 10)
    ts_engine = BanditEngine.from_snapshot(
        {**engine.snapshot(), "policy": {**engine.snapshot()["policy"], "kind": "ts"}}
    )
    ts_engine.suggest(ctx)
    ts = timed(lambda: ts_engine.suggest(ctx), 10)
    batch = timed(lambda: engine.suggest(ctx, q=4), 5)
    print(
        f"{n:6d} {warm:13.3f} {scratch:16.3f} {scratch / warm:6.1f}x {ucb * 1e3:15.1f} {ts * 1e3:14.1f}"
        f" {batch * 1e3:15.1f}",
        flush=True,
    )


def one_at_a_time(self, *obs, refit=True):
    """The restore's baseline ``BanditEngine.observe`` (single mode): GP inputs built one
    observation at a time, as before the batched inputs."""
    checked = [self._check(o) for o in obs]
    for o in checked:
        features = torch.tensor([o.arm.features()[: self.width]], dtype=torch.float64)
        self.adam.x.append(self._rows(self.space.encode(o.params), features)[0])
        self.adam.y.append(o.reward)
    self.observations.extend(checked)
    self.refit(refit)


def measure_restore(n: int, repeat: int) -> None:
    """Median seconds of ``BanditEngine.from_snapshot`` at n observations, against two baselines
    in the same run (each patched in for its timing only), with the recommendations compared."""
    torch.set_num_threads(1)  # as in the API process, where restores run
    engine = BanditEngine("advection", policy="ucb", seed=0, max_exact=n)
    engine.observe(*observations(n))
    snap = engine.snapshot()
    now = timed(lambda: BanditEngine.from_snapshot(snap), repeat)
    ctx = {"beta": 7.0}
    fast = BanditEngine.from_snapshot(snap).recommend(ctx)
    baselines = (
        ("the Hamming kernel pair by pair", patch.object(BinaryHammingKernel, "GATHER_PAIRS", n * n)),
        ("GP inputs one observation at a time", patch.object(BanditEngine, "observe", one_at_a_time)),
    )
    for label, patched in baselines:
        with patched:
            before = timed(lambda: BanditEngine.from_snapshot(snap), repeat)
            same = fast == BanditEngine.from_snapshot(snap).recommend(ctx)
        print(f"restore at n = {n} (1 thread): {label} {before:.3f} s, now {now:.3f} s, "
              f"{before / now:.2f}x; same recommendations: {same}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--restore", type=int, default=2000, help="observations of the restored engine (0: skip)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {describe(torch.device('cpu'))}")
    print(
        f"{'n':>6s} {'warm refit s':>13s} {'scratch refit s':>16s} {'ratio':>7s} {'UCB suggest ms':>15s}"
        f" {'TS suggest ms':>14s} {'q=4 pending ms':>15s}"
    )
    for n in args.n:
        measure(n, args.repeat)
    if args.restore:
        measure_restore(args.restore, args.repeat)


if __name__ == "__main__":
    main()

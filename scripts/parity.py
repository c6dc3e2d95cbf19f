"""Refactor parity: a seeded campaign and a seeded batch of solves give the same arms and errors
in this tree as in an earlier commit (float64, compared exactly).

Each tree runs the same probe in its own process (``PYTHONPATH`` = the tree):

- two campaigns through the CLI and the service path (``metalic campaign ... --inline``: store,
  dispatcher, batches), Advection, every policy (UCB, TS, mean, random, a fixed arm and the
  single-domain baseline), single and sequential mode, float64;
- one batch of seven explicit solves through ``run_solve_batch`` (split and single-network arms,
  a sequential solve with its own L-BFGS arm, three families), float64.

The probe prints JSON: per campaign round (policy, stage, round, arms, rel. L2, reward) and per
solve (arms, rel. L2, reward, Adam-phase reward). The two JSON documents must be equal.

    python scripts/parity.py --baseline-ref cb049e0
    python scripts/parity.py --probe            # this tree only, JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = [
    "campaign", "advection", "--heuristic", "ucb", "--heuristic", "ts", "--heuristic", "mean",
    "--heuristic", "random", "--heuristic", "fixed:u,flux", "--heuristic", "single-domain",
    "--warmup", "3", "--rounds", "4", "--test", "2", "--batch", "3", "--adam", "40", "--lbfgs", "30",
    "--collocation", "120", "--boundary", "24", "--interface-points", "16", "--seed", "3",
    "--dtype", "float64", "--inline", "--quiet",
]  # fmt: skip
SOLVES = [  # family, params, arm, arm_lbfgs, seed
    ("advection", {"beta": 4.0}, "u,flux", None, 1),
    ("advection", {"beta": 12.0}, "all", None, 2),
    ("advection", {"beta": 7.0}, "none", None, 3),
    ("advection", {"beta": 9.0}, "single-domain", None, 4),
    ("advection", {"beta": 5.0}, "u", "u,res_continuity", 5),
    ("heat", {"a": 0.5, "b": 1.0, "c": 1.0, "d": 1.0}, "u,flux,uavg", None, 6),
    ("reaction", {"rho": 3.0}, "u,res", None, 7),
]


def _label(arm) -> str:
    if hasattr(arm, "label"):
        return arm.label
    from metalic.conditions import arm_label  # before the Arm type

    return arm_label(arm)


def _solves() -> list[dict]:
    import metalic.jobs as jobs

    run_of = jobs.Run.explicit if hasattr(jobs, "Run") else jobs.Training.explicit
    by_family: dict[str, list] = {}
    for family, params, arm, arm_lbfgs, seed in SOLVES:
        request = jobs.SolveRequest(
            family=family, params=params, arm=arm, arm_lbfgs=arm_lbfgs,
            mode="sequential" if arm_lbfgs else "single", adam=60, lbfgs=40, collocation=150, boundary=30,
            seed=seed, dtype="float64", device="cpu",
        )  # fmt: skip
        key = request.batch_key() if hasattr(request, "batch_key") else family
        by_family.setdefault(key, []).append(run_of(request))
    out = []
    for runs in by_family.values():
        for r in jobs.run_solve_batch(runs, device="cpu", artefacts=False, compile=False):
            reward_adam = getattr(r, "reward_adam", getattr(r, "reward_phase0", None))
            out.append({"arm_adam": _label(r.arm_adam), "arm_lbfgs": _label(r.arm_lbfgs), "rel_l2": r.rel_l2,
                        "reward": r.reward, "reward_adam": reward_adam, "status": r.status})  # fmt: skip
    return out


def _campaign(mode: str, home: Path) -> list[dict]:
    out = home / f"campaign-{mode}"
    env = {**os.environ, "METALIC_HOME": str(home), "METALIC_DEVICE": "cpu"}
    subprocess.run([sys.executable, "-m", "metalic.cli", *CAMPAIGN, "--mode", mode, "--out", str(out)],
                   env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    rows = json.loads((out / "rounds.json").read_text())
    keep = ("heuristic", "stage", "round", "context", "arm", "arm_lbfgs", "rel_l2", "reward", "status")
    return [{k: r[k] for k in keep} for r in rows]


def probe() -> dict:
    with tempfile.TemporaryDirectory(prefix="metalic-parity-") as home:
        return {
            "solves": _solves(),
            "campaign_single": _campaign("single", Path(home)),
            "campaign_sequential": _campaign("sequential", Path(home)),
        }


def run_in(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "METALIC_DEVICE": "cpu"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe"], cwd=tree, env=env,
                          check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout)


def _differences(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in _differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-ref", default="cb049e0")
    parser.add_argument("--probe", action="store_true", help="run the probe in this process's tree, print JSON")
    args = parser.parse_args()
    if args.probe:
        json.dump(probe(), sys.stdout)
        return 0
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from machine import baseline_tree

    with baseline_tree(args.baseline_ref) as old:
        before = run_in(old)
    after = run_in(ROOT)
    diffs = _differences(before, after)
    n_solves = len(after["solves"])
    n_rounds = len(after["campaign_single"]) + len(after["campaign_sequential"])
    print(f"compared {n_solves} solves and {n_rounds} campaign rows ({args.baseline_ref} vs this tree, float64)")
    for label in ("solves", "campaign_single", "campaign_sequential"):
        rows = after[label]
        arms = sorted({r.get("arm") or r.get("arm_adam") for r in rows})
        print(f"  {label}: {len(rows)} rows, {len(arms)} distinct Adam arms, rel. L2 "
              f"{min(r['rel_l2'] for r in rows):.4e} .. {max(r['rel_l2'] for r in rows):.4e}")  # fmt: skip
    if diffs:
        print(f"{len(diffs)} difference(s):")
        print("\n".join("  " + d for d in diffs[:40]))
        return 1
    print("identical: every arm, rel. L2 and reward is equal (exact float comparison)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

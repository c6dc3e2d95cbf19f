"""A prior from a campaign's trainings: every observation it made (warm-up, online rounds and the
test rollout), fitted by a fresh engine, written as a versioned file with its provenance.

``metalic prior build FAMILY`` (``workers.commands``) runs the campaign on the service path
(store, dispatcher, Ray trainers; a GPU when there is one) and calls ``from_rows``.
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import metalic
from metalic.arms import Arm
from metalic.bandit.engine import BanditEngine, Observation
from metalic.pinn.evaluate import reward_of
from metalic.priors import Prior, newest


def observations_of(rows: Sequence, sequential: bool) -> list[Observation]:
    """Campaign rounds (``metalic.campaign.RoundRow``) as engine observations, every one of them
    (a diverged training is an observation with a capped reward, as in the campaign's engines)."""
    out = []
    for r in rows:
        arm = Arm.parse(r.arm)
        if sequential:
            lbfgs = Arm.parse(r.arm_lbfgs) if r.arm_lbfgs else arm
            adam = r.reward if r.rel_l2_adam is None else reward_of(r.rel_l2_adam)
            out.append(Observation(dict(r.params), arm, r.reward, lbfgs, adam))
        else:
            out.append(Observation(dict(r.params), arm, r.reward))
    return out


def next_version(folder: Path, family: str, mode: str) -> int:
    ref = newest(family, mode, [folder])
    return 1 if ref is None else int(ref.rsplit("-v", 1)[1]) + 1


def commit() -> str:
    """The checkout's commit (with ``+dirty`` when it has changes), or the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return f"metalic {metalic.__version__} (not a git checkout)"


def from_rows(
    family: str,
    mode: str,
    rows: Sequence,
    *,
    folder: Path,
    profile: dict[str, Any],
    campaign: dict[str, Any],
    seconds: float,
    device: str,
    command: str,
    version: int | None = None,
) -> Prior:
    """Fit a fresh engine (no prior of its own) to the rows' observations and write
    ``folder/<family>-<mode>-v<version>.json``; returns the prior."""
    observations = observations_of(rows, mode == "sequential")
    if len(observations) < 2:
        raise ValueError(f"a prior needs two or more succeeded trainings, the campaign has {len(observations)}")
    engine = BanditEngine(family, mode, "ucb", seed=int(campaign.get("seed", 0)))
    engine.observe(*observations)
    version = version or next_version(folder, family, mode)
    provenance = {
        "command": command,
        "commit": commit(),
        "metalic": metalic.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "profiles": [profile],
        "trainings": len(observations),
        "campaign": campaign,
        "device": device,
        "machine": platform.processor() or platform.machine(),
        "seconds": round(seconds, 1),
    }
    prior = Prior(family, mode, version, provenance, engine.snapshot(observations=True), folder / "")
    path = folder / f"{prior.ref}.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(prior.to_json(), indent=1, sort_keys=True) + "\n")
    return Prior(family, mode, version, provenance, prior.snapshot, path)

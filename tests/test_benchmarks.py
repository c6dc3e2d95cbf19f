"""The GPU suite in its tiny mode on the CPU: every section runs and reports, so that the command
kept for the day a GPU is lent cannot rot; and the campaign benchmark's held-out trainings are the
campaign's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_suite_runs_every_section_in_its_tiny_mode(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--tiny", "--device", "cpu",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_suite.json").read_text())
    trainer = results["trainer"]
    assert len(trainer) == 2 * 2 * 2  # Adam and L-BFGS, eager and compiled, K = 1 and 2
    assert all(r.get("run_iterations_per_s", 0) > 0 for r in trainer.values()), trainer
    assert {r["k"] for r in trainer.values()} == {1, 2} and {r["mode"] for r in trainer.values()} == {
        "eager",
        "compiled",
    }
    assert results["default Burgers solve"]["status"] == "ok"
    service = results["4 Burgers tasks, store + dispatcher"]
    assert service["states"] == {"succeeded": 4} and service["tasks_per_hour"] > 0
    assert results["small campaign"]["state"] == "succeeded"
    table = (tmp_path / "gpu_suite.md").read_text()
    assert table.startswith("machine: ") and table.count("\n|") == 2 + 8 + 3


def test_the_campaign_benchmark_retrains_the_held_out_contexts_as_the_campaign_did():
    """``prior_campaigns.train_held_out`` (its further rankings and ``--test-repeats``) trains at a
    campaign's held-out contexts with the test stage's seeds and batches: offset 0 gives the
    campaign's own test errors to the last digit, another seed set gives other errors."""
    from dataclasses import replace

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from prior_campaigns import REPEAT_SEED_STEP, held_out, test_errors, train_held_out

    from metalic.arms import Arm
    from metalic.campaign import CampaignConfig, run_policy
    from metalic.pinn.problem import PinnConfig
    from metalic.pinn.trainer import TrainConfig

    config = CampaignConfig(
        family="advection", warmup=2, rounds=2, test=4, batch=3, seed=4, policies=("fixed:u,flux",),
        train=TrainConfig(adam=8, lbfgs=4, compile=False),
        pinn=PinnConfig(n_collocation=48, n_boundary=12, n_interface=9),
    )  # fmt: skip
    rows, _ = run_policy(config, "fixed:u,flux")
    campaign = test_errors(held_out(rows))
    arm = Arm.parse("u,flux")
    arms, again = train_held_out(config, lambda _: arm)
    assert arms == [arm] * 4 and again == campaign
    _, other = train_held_out(config, lambda _: arm, REPEAT_SEED_STEP)
    assert len(other) == 4 and other != campaign
    with pytest.raises(ValueError, match="single mode"):
        train_held_out(replace(config, mode="sequential"), lambda _: arm)

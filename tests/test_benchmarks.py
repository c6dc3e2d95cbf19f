"""The GPU suite in its tiny mode on the CPU: every section runs and reports, so that the command
kept for the day a GPU is lent cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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

"""Accuracy at a small CPU budget (the authors' network, points and loss weights)."""

from __future__ import annotations

import pytest

from metalic.families import get_family
from metalic.pinn.artefact import evaluate_batch
from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch

# 1000 Adam + 3000 L-BFGS iterations (authors' learning rates): about 30 s each on 2 CPU cores.
BUDGET = TrainConfig(adam=1000, lbfgs=3000, compile=False)


@pytest.mark.slow
@pytest.mark.parametrize(("family", "params"), [("advection", {"beta": 3.0}), ("reaction", {"rho": 3.0})])
def test_small_budget_reaches_two_percent(family, params):
    batch = train_batch(get_family(family), [RunSpec(params, "u,flux", seed=0)], train_config=BUDGET, device="cpu")
    (metrics,) = evaluate_batch(batch)
    assert batch.outcomes[0].status == "ok"
    assert metrics.rel_l2 < 2e-2, metrics

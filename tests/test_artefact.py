from __future__ import annotations

import numpy as np
import pytest
import torch

from metalic.arms import Arm
from metalic.families import get_family
from metalic.pinn.artefact import TrainedModel, evaluate_batch, models_from_batch
from metalic.pinn.evaluate import predict_stitched
from metalic.pinn.problem import PinnConfig
from metalic.pinn.trainer import RunSpec, TrainConfig, train_batch


@pytest.fixture(scope="module")
def burgers_batch():
    return train_batch(
        get_family("burgers"),
        [RunSpec({"nu": 0.02}, "u,flux", seed=0), RunSpec({"nu": 0.005}, "all", "u", seed=1)],
        PinnConfig(n_collocation=64, n_boundary=16, n_interface=11),
        TrainConfig(adam=10, lbfgs=5, compile=False),
        device="cpu",
    )


def test_saved_model_predicts_like_the_trained_network(burgers_batch, tmp_path):
    metrics = evaluate_batch(burgers_batch)
    models = models_from_batch(burgers_batch, metrics)
    path = models[1].save(tmp_path / "m.pt")
    loaded = TrainedModel.load(path)
    assert loaded.family == "burgers" and loaded.params == {"nu": 0.005}
    assert loaded.arm_adam == Arm.parse("all") and loaded.arm_lbfgs == Arm.parse("u")
    older = models[1]._payload()  # a file written before the Arm type held the arms as bit tuples
    older["arm_adam"], older["arm_lbfgs"] = (1,) * 9, (1, 0, 0, 0, 0, 0, 0, 0, 0)
    torch.save(older, tmp_path / "old.pt")
    assert TrainedModel.load(tmp_path / "old.pt").arm_lbfgs == Arm.parse("u")
    assert loaded.metrics["rel_l2"] == pytest.approx(metrics[1].rel_l2)
    assert loaded.outcome["lbfgs_iterations"] == 5
    pts = np.array([[-0.5, 0.3], [0.0, 0.7], [0.1, 0.2], [0.95, 1.0]])
    direct = predict_stitched(burgers_batch.net, burgers_batch.problem.decomposition, pts)[1]
    np.testing.assert_allclose(loaded.predict(pts), direct, rtol=1e-5, atol=1e-6)
    # the strip's network serves |x| < 0.1, the other network the rest
    net = burgers_batch.net
    inside = torch.as_tensor(np.array([[[[0.0, 0.7]], [[0.0, 0.7]]]]), dtype=torch.float32).expand(2, -1, -1, -1)
    assert loaded.predict(pts[1:2])[0] == pytest.approx(net(inside)[1, 0, 0].item(), rel=1e-5)


def test_loading_something_else_fails_clearly(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"format": "other"}, path)
    with pytest.raises(ValueError, match="not a metalic model"):
        TrainedModel.load(path)


def test_predict_rejects_bad_shapes(burgers_batch):
    model = models_from_batch(burgers_batch)[0]
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        model.predict(np.zeros((3, 3)))

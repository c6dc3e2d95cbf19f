"""A trained multi-domain model as a file: save, load and predict.

The artefact holds everything needed to rebuild the network without the training batch: family,
parameters, decomposition, layer widths, arms, the run's flat weights, metrics, training outcome
and the library version.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import metalic
from metalic.arms import Arm
from metalic.domain import Decomposition
from metalic.pinn.evaluate import Metrics, predict_stitched
from metalic.pinn.network import StackedMLP
from metalic.pinn.trainer import RunOutcome, TrainedBatch, current_metrics

FORMAT = "metalic-model/1"


@dataclass
class TrainedModel:
    family: str
    params: dict[str, float]
    decomposition: dict
    layers: tuple[int, ...]
    arm_adam: Arm
    arm_lbfgs: Arm
    weights: torch.Tensor  # flat [n_weights], float64 on the CPU
    metrics: dict[str, float] = field(default_factory=dict)
    outcome: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    version: str = metalic.__version__
    period: float | None = None  # the network's period in the first coordinate (None: not periodic)
    harmonics: int = 0  # its Fourier features (periodic networks)

    def network(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64) -> StackedMLP:
        dec = Decomposition.from_description(self.decomposition)
        net = StackedMLP(self.layers, 1, dec.bounding_boxes(), [self.seed], device, dtype, self.period, self.harmonics)
        with torch.no_grad():
            net.theta.copy_(self.weights.to(device=device, dtype=dtype)[None])
        return net

    def predict(self, points: np.ndarray) -> np.ndarray:
        """u at ``points`` [N, 2] (coordinates in the family's order) -> [N]."""
        points = np.asarray(points, dtype=float)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"points must have shape [N, 2], got {list(points.shape)}")
        dec = Decomposition.from_description(self.decomposition)
        return predict_stitched(self.network(), dec, points)[0]

    def _payload(self) -> dict:
        payload = asdict(self)
        payload["format"] = FORMAT
        payload["arm_adam"], payload["arm_lbfgs"] = self.arm_adam.label, self.arm_lbfgs.label
        payload["weights"] = self.weights.detach().cpu().double()
        return payload

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self._payload(), tmp)
        tmp.replace(path)  # never leave a half-written file under the final name
        return path

    def to_bytes(self) -> bytes:
        """The file's content, for a database column."""
        buffer = io.BytesIO()
        torch.save(self._payload(), buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrainedModel:
        return cls._from_payload(cls._read(io.BytesIO(data), "model bytes"), "model bytes")

    @classmethod
    def load(cls, path: str | Path) -> TrainedModel:
        return cls._from_payload(cls._read(Path(path), str(path)), str(path))

    @staticmethod
    def _read(source, name: str) -> dict:
        try:
            payload = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:  # not a torch file at all, or one holding arbitrary objects
            raise ValueError(f"{name}: not a metalic model file ({type(exc).__name__})") from None
        if not isinstance(payload, dict):
            raise ValueError(f"{name}: not a metalic model file")
        return payload

    @classmethod
    def _from_payload(cls, payload: dict, name: str) -> TrainedModel:
        if payload.pop("format", None) != FORMAT:
            raise ValueError(f"{name}: not a metalic model file")
        payload["layers"] = tuple(payload["layers"])
        payload["arm_adam"] = Arm.parse(payload["arm_adam"])  # a label; 9 or 10 bits in older files
        payload["arm_lbfgs"] = Arm.parse(payload["arm_lbfgs"])
        return cls(**payload)

    def summary(self) -> str:
        m = self.metrics
        return (
            f"{self.family} {self.params} arms adam={self.arm_adam} lbfgs={self.arm_lbfgs}"
            f" rel_l2={m.get('rel_l2', math.nan):.3e}"
        )


def evaluate_batch(batch: TrainedBatch) -> list[Metrics]:
    """Metrics of every run of a batch on its reference grid."""
    return current_metrics(batch.family, batch.problem, batch.net)


def models_from_batch(batch: TrainedBatch, metrics: list[Metrics] | None = None) -> list[TrainedModel]:
    metrics = metrics or evaluate_batch(batch)
    out = []
    for k, spec in enumerate(batch.specs):
        arm_adam, arm_lbfgs = spec.arms
        outcome: RunOutcome = batch.outcomes[k]
        out.append(
            TrainedModel(
                family=batch.family.name,
                params=dict(batch.problem.params[k]),
                decomposition=batch.problem.decomposition.describe(),
                layers=tuple(batch.net.widths),
                period=batch.net.period,
                harmonics=batch.net.harmonics,
                arm_adam=arm_adam,
                arm_lbfgs=arm_lbfgs,
                weights=batch.net.theta.detach()[k].cpu().double().clone(),
                metrics=metrics[k].as_dict(),
                outcome=asdict(outcome),
                config={"pinn": asdict(batch.pinn_config), "train": asdict(batch.train_config)},
                seed=spec.seed,
            )
        )
    return out

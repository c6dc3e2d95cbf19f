"""Stacked multi-domain MLPs: K independent runs x S subdomains evaluated in one batched call.

All weights live in one flat leaf tensor ``theta`` [K, n_weights]; layer l reads the views
``W_l`` [K, S, in, out] and ``b_l`` [K, S, 1, out]. One flat tensor per run keeps Adam a single
fused update and lets L-BFGS treat each run's weights as one vector. Each subdomain network
rescales its inputs to [-1, 1] with its own bounding box. With a ``period`` P, the first coordinate
enters as the Fourier features cos(2 pi m x / P), sin(2 pi m x / P), m = 1..M, instead: the network
is exactly P-periodic in x (a forward problem on a periodic domain needs no data on its x-edges).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from metalic.pinn.jets import MultiIndex, TanhJet


class StackedMLP(torch.nn.Module):
    """``widths`` e.g. [2, 20, 20, 1]; tanh between layers; Xavier-normal weights, zero biases.

    ``boxes`` [S, 2 (lo, hi), 2] (shared by all runs) or [K, S, 2, 2]: bounding boxes for the
    input rescaling. ``period``: the first coordinate's period (None: not periodic); the first
    layer then reads 2 ``harmonics`` + 1 features (cosines, sines, scaled second coordinate).
    """

    def __init__(
        self,
        widths: Sequence[int],
        n_runs: int,
        boxes: np.ndarray,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        period: float | None = None,
        harmonics: int = 1,
    ):
        super().__init__()
        if widths[0] != 2 or widths[-1] != 1:
            raise ValueError(f"layers must start with 2 inputs and end with 1 output, got {list(widths)}")
        if len(seeds) != n_runs:
            raise ValueError("one seed per run is required")
        self.widths = tuple(int(w) for w in widths)
        self.period = None if period is None else float(period)
        self.harmonics = int(harmonics) if period is not None else 0
        if period is not None:
            freq = 2 * math.pi / float(period) * torch.arange(1, self.harmonics + 1, dtype=torch.float64)
            self.register_buffer("omega", freq.to(device=device, dtype=dtype))  # [M]
        boxes = np.broadcast_to(np.asarray(boxes, dtype=float), (n_runs, *np.shape(boxes)[-3:]))
        self.n_runs, self.n_subdomains = n_runs, boxes.shape[1]
        inputs = (2 * self.harmonics + 1 if period is not None else 2, *self.widths[1:-1])
        self.shapes = [(a, b) for a, b in zip(inputs, self.widths[1:], strict=True)]
        per_subdomain = sum(a * b + b for a, b in self.shapes)
        self.n_weights = per_subdomain * self.n_subdomains
        lo, hi = boxes[:, :, 0], boxes[:, :, 1]
        kw = {"device": device, "dtype": dtype}
        self.register_buffer("center", torch.as_tensor((lo + hi) / 2, **kw)[:, :, None, :])  # [K,S,1,2]
        self.register_buffer("scale", torch.as_tensor(2 / (hi - lo), **kw)[:, :, None, :])  # [K,S,1,2]
        theta = torch.cat([self._init_run(seed) for seed in seeds]).to(**kw)
        self.theta = torch.nn.Parameter(theta)

    def _init_run(self, seed: int) -> Tensor:
        """Xavier-normal weights, zero biases, drawn on the CPU so every device starts alike: [1, n]."""
        gen = torch.Generator().manual_seed(int(seed))
        parts = []
        for a, b in self.shapes:
            std = (2.0 / (a + b)) ** 0.5
            parts.append(torch.randn(self.n_subdomains, a, b, generator=gen, dtype=torch.float64) * std)
            parts.append(torch.zeros(self.n_subdomains, 1, b, dtype=torch.float64))
        # layout: for each layer, W [S, a, b] then b [S, 1, b]
        return torch.cat([p.reshape(-1) for p in parts])[None]

    def layers(self, theta: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """Views (W [K, S, a, b], bias [K, S, 1, b]) into ``theta`` [K, n]."""
        theta = self.theta if theta is None else theta
        k, s, out, offset = theta.shape[0], self.n_subdomains, [], 0
        for a, b in self.shapes:
            w = theta[:, offset : offset + s * a * b].view(k, s, a, b)
            offset += s * a * b
            bias = theta[:, offset : offset + s * b].view(k, s, 1, b)
            offset += s * b
            out.append((w, bias))
        return out

    def subdomain_index(self, sel: Sequence[int]) -> Tensor:
        """Positions in ``theta``'s columns of the weights of subdomains ``sel``, in the layout of
        a network of ``len(sel)`` subdomains (per layer: W [sel, a, b], then bias [sel, 1, b])."""
        out, offset, s = [], 0, self.n_subdomains
        for a, b in self.shapes:
            for size in (a * b, b):
                out += [offset + j * size + torch.arange(size) for j in sel]
                offset += s * size
        return torch.cat(out).to(self.theta.device)

    def subdomains(self, sel: Sequence[int]) -> StackedMLP:
        """A network of the subdomains ``sel`` (their weights copied, a new leaf ``theta``)."""
        sub = copy.copy(self)
        sub._parameters, sub._buffers, sub._modules = dict(self._parameters), dict(self._buffers), dict(self._modules)
        sub.n_subdomains, sub.n_weights = len(sel), self.n_weights // self.n_subdomains * len(sel)
        index = list(sel)
        sub.theta = torch.nn.Parameter(self.theta.detach()[:, self.subdomain_index(sel)].clone())
        sub.center, sub.scale = self.center[:, index].clone(), self.scale[:, index].clone()
        return sub

    def _inputs(self, x: Tensor) -> Tensor:
        """The first layer's input features: [K, S, P, 2] (rescaled) or [K, S, P, 2M + 1] (periodic)."""
        h = (x - self.center) * self.scale
        if self.period is None:
            return h
        angle = x[..., :1] * self.omega  # [..., P, M]
        return torch.cat([torch.cos(angle), torch.sin(angle), h[..., 1:]], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Values only: ``x`` [K, S, P, 2] -> u [K, S, P]."""
        h = self._inputs(x)
        layers = self.layers()
        for w, b in layers[:-1]:
            h = torch.tanh(h @ w + b)
        w, b = layers[-1]
        return (h @ w + b).squeeze(-1)

    def _first_layer_jet(self, x: Tensor, indices, w0: Tensor, b0: Tensor) -> list[Tensor | None]:
        """Periodic first layer: d^a/dx^a of (cos, sin)(w x) is w^a (cos, sin)(w x + a pi/2); the
        second coordinate enters linearly (d/dt: a constant, higher: zero); mixed ones vanish."""
        m = self.harmonics
        angle = x[..., :1] * self.omega  # [..., P, M]
        cos, sin = torch.cos(angle), torch.sin(angle)
        turns = ((cos, sin), (-sin, cos), (-cos, -sin), (sin, -cos))  # (cos, sin)(angle + a pi/2)
        w_fourier, w_second = w0[:, :, : 2 * m, :], w0[:, :, 2 * m :, :]
        z: list[Tensor | None] = []
        for a, b in indices:
            if b == 0:
                c, s = turns[a % 4]
                out = (torch.cat([c, s], dim=-1) * self.omega.repeat(2) ** a) @ w_fourier
                if a == 0:
                    out = out + ((x[..., 1:] - self.center[..., 1:]) * self.scale[..., 1:]) @ w_second + b0
                z.append(out)
            elif (a, b) == (0, 1):
                z.append(self.scale[..., 1:2] * w_second)
            else:
                z.append(None)
        return z

    def jet(self, x: Tensor, tanh_jet: TanhJet) -> dict[MultiIndex, Tensor]:
        """D^alpha u for alpha in ``tanh_jet.indices``: ``x`` [K, S, P, 2] -> {alpha: [K, S, P]}."""
        indices = tanh_jet.indices
        layers = self.layers()
        w0, b0 = layers[0]
        # First (affine) layer: D^alpha z is known in closed form; second and higher vanish.
        z: list[Tensor | None] = self._first_layer_jet(x, indices, w0, b0) if self.period is not None else []
        for alpha in indices if self.period is None else ():
            if alpha == (0, 0):
                z.append(((x - self.center) * self.scale) @ w0 + b0)
            elif sum(alpha) == 1:
                axis = 0 if alpha[0] else 1
                z.append(self.scale[..., axis : axis + 1] * w0[:, :, axis : axis + 1, :])
            else:
                z.append(None)
        n_points = x.shape[2]
        for w, b in layers[1:]:
            y = tanh_jet(z)
            # Broadcast constant components (first layer) to [K, S, P, H] and apply W to all at once.
            stacked = torch.stack([c.expand(-1, -1, n_points, -1) for c in y], dim=2)  # [K,S,C,P,H]
            k, s, c, p, h = stacked.shape
            out = (stacked.view(k, s, c * p, h) @ w).view(k, s, c, p, -1)
            z = list(out.unbind(2))
            z[0] = z[0] + b
        return {alpha: comp.squeeze(-1) for alpha, comp in zip(indices, z, strict=True)}

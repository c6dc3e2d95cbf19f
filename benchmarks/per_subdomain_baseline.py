"""The straightforward multi-domain PINN, written the way the authors' research code works.

One ``nn.Module`` per subdomain, a Python loop over subdomains and interfaces, and every
derivative built with nested reverse-mode ``torch.autograd.grad`` calls. It exists only as the
same-run baseline of ``train_speed.py``; it shares no code with ``metalic.pinn``.
Burgers: u_t + u u_x = nu u_xx, all nine interface terms on.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn


class SubdomainMLP(nn.Module):
    def __init__(self, lo: np.ndarray, hi: np.ndarray, widths=(2, 20, 20, 1)):
        super().__init__()
        layers = []
        for a, b in itertools.pairwise(widths):
            lin = nn.Linear(a, b)
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.Tanh()]
        self.net = nn.Sequential(*layers[:-1])
        self.register_buffer("lo", torch.as_tensor(lo, dtype=torch.float32))
        self.register_buffer("hi", torch.as_tensor(hi, dtype=torch.float32))

    def forward(self, x, t):
        h = torch.cat([x, t], dim=1)
        return self.net(2 * (h - self.lo) / (self.hi - self.lo) - 1)


def grad(f, v):
    return torch.autograd.grad(f, v, torch.ones_like(f), create_graph=True)[0]


class BaselineBurgers:
    """Two subdomains (strip |x| < 0.1 and the rest), interfaces x = -0.1 and x = 0.1."""

    def __init__(self, nu=0.01, n_col=1000, n_bnd=100, n_if=401, seed=0):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.nu = nu
        self.nets = [
            SubdomainMLP(np.array([-0.1, 0.0]), np.array([0.1, 1.0])),
            SubdomainMLP(np.array([-1.0, 0.0]), np.array([1.0, 1.0])),
        ]
        strip = np.stack([rng.uniform(-0.1, 0.1, n_col), rng.uniform(0, 1, n_col)], 1)
        side = rng.uniform(0.1, 1.0, n_col) * rng.choice([-1, 1], n_col)
        rest = np.stack([side, rng.uniform(0, 1, n_col)], 1)
        self.col = [self._t(strip), self._t(rest)]
        b0 = np.stack([rng.uniform(-0.1, 0.1, n_bnd), np.zeros(n_bnd)], 1)
        b1x = rng.uniform(0.1, 1.0, n_bnd) * rng.choice([-1, 1], n_bnd)
        b1 = np.stack([b1x, np.zeros(n_bnd)], 1)
        self.bnd = [self._t(b0), self._t(b1)]
        self.bnd_val = [-torch.sin(np.pi * b[:, :1]) for b in self.bnd]
        t = np.linspace(0, 1, n_if)
        self.ifaces = [self._t(np.stack([np.full(n_if, p), t], 1)) for p in (-0.1, 0.1)]

    @staticmethod
    def _t(a):
        return torch.as_tensor(a, dtype=torch.float32)

    def parameters(self):
        return [p for n in self.nets for p in n.parameters()]

    def _derivs(self, net, pts, third=False):
        x = pts[:, :1].clone().requires_grad_(True)
        t = pts[:, 1:].clone().requires_grad_(True)
        u = net(x, t)
        u_x, u_t = grad(u, x), grad(u, t)
        u_xx, u_tt = grad(u_x, x), grad(u_t, t)
        r = u_t + u * u_x - self.nu * u_xx
        out = {"u": u, "u_x": u_x, "u_t": u_t, "u_xx": u_xx, "u_tt": u_tt, "r": r}
        if third:
            out["r_x"], out["r_t"] = grad(r, x), grad(r, t)
        return out

    def loss(self):
        total = 0.0
        for net, col, bnd, val in zip(self.nets, self.col, self.bnd, self.bnd_val, strict=True):
            d = self._derivs(net, col)
            total = total + (d["r"] ** 2).mean() + 20 * ((net(bnd[:, :1], bnd[:, 1:]) - val) ** 2).mean()
        for pts in self.ifaces:
            a = self._derivs(self.nets[0], pts, third=True)
            b = self._derivs(self.nets[1], pts, third=True)
            m = (a["u"] + b["u"]) / 2
            flux_a = a["u"] ** 2 / 2 - self.nu * a["u_x"]
            flux_b = b["u"] ** 2 / 2 - self.nu * b["u_x"]
            terms = [
                (a["u"] - b["u"]) ** 2,
                (a["u"] - m) ** 2 + (b["u"] - m) ** 2,
                a["r"] ** 2 + b["r"] ** 2,
                (a["r"] - b["r"]) ** 2,
                (flux_a - flux_b) ** 2,
                (a["u_xx"] - b["u_xx"]) ** 2,
                a["r_x"] ** 2 + a["r_t"] ** 2 + b["r_x"] ** 2 + b["r_t"] ** 2,
                (a["u_t"] - b["u_t"]) ** 2,
                (a["u_tt"] - b["u_tt"]) ** 2,
            ]
            total = total + 5 * sum(term.mean() for term in terms)
        return total

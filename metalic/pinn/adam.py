"""Adam on one flat weight tensor [K, n], with per-run freezing.

It calls the kernel ``torch.optim.Adam(fused=True)`` calls (``torch._fused_adam_``) with the same
state (first and second moments, a float32 step count on the weights' device), so its updates are
bit-for-bit those of ``torch.optim.Adam(fused=True)`` (tested). Why not that class itself: a
``torch.optim.Optimizer`` imports ``torch._dynamo`` on first use, about 1.5 s of a one-off eager
solve's start-up on a 2-core CPU, for nothing an eager training needs.
"""

from __future__ import annotations

import torch
from torch import Tensor


class FlatAdam:
    """Adam for ``theta`` [K, n] (a leaf tensor whose ``.grad`` the caller fills)."""

    def __init__(self, theta: Tensor, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.theta, self.lr, self.betas, self.eps = theta, float(lr), betas, float(eps)
        self.exp_avg = torch.zeros_like(theta, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(theta, memory_format=torch.preserve_format)
        self.step_count = torch.zeros((), dtype=torch.float32, device=theta.device)

    def freeze(self, frozen: Tensor) -> None:
        """Zero the gradient and both moments of the runs in ``frozen`` [K, 1] bool: their weights
        stay put (a frozen run's gradient may be NaN: it is replaced, not scaled)."""
        self.theta.grad.masked_fill_(frozen, 0.0)
        self.exp_avg.masked_fill_(frozen, 0.0)
        self.exp_avg_sq.masked_fill_(frozen, 0.0)

    @torch.no_grad()
    def step(self) -> None:
        """One update of every run from ``theta.grad``."""
        self.step_count.add_(1)
        torch._fused_adam_(
            [self.theta],
            [self.theta.grad],
            [self.exp_avg],
            [self.exp_avg_sq],
            [],
            [self.step_count],
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=0.0,
            eps=self.eps,
            amsgrad=False,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

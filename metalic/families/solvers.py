"""Reference solvers, independent of the network code (NumPy / SciPy only).

- ``poisson_dirichlet``: 5-point finite differences, sparse direct solve (second order).
- ``burgers_hopf_cole``: the Hopf-Cole integral for u_t + u u_x = nu u_xx, u(x,0) = -sin(pi x).
- ``etdrk4_periodic``: Fourier pseudo-spectral in x with ETDRK4 in t (Kassam & Trefethen 2005) for
  u_t = L u + N(u) on a periodic interval; used for KdV and as an independent Burgers check.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def poisson_dirichlet(
    source: Callable[[np.ndarray, np.ndarray], np.ndarray],
    boundary: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n: int,
    lo: float = 0.0,
    hi: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve u_xx + u_yy = source on [lo, hi]^2 with u = boundary on the edge.

    ``n`` grid points per axis, edges included. Returns (axis [n], u [n, n] indexed [ix, iy]).
    """
    import scipy.sparse as sp  # imported here: most solves never need it
    import scipy.sparse.linalg as spla

    x = np.linspace(lo, hi, n)
    h = x[1] - x[0]
    xx, yy = np.meshgrid(x, x, indexing="ij")
    u = np.zeros((n, n))
    edge = np.zeros((n, n), dtype=bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    u[edge] = boundary(xx[edge], yy[edge])
    m = n - 2
    lap_1d = sp.diags([np.ones(m - 1), -2 * np.ones(m), np.ones(m - 1)], [-1, 0, 1]) / h**2
    eye = sp.identity(m)
    lap = (sp.kron(lap_1d, eye) + sp.kron(eye, lap_1d)).tocsc()
    rhs = source(xx[1:-1, 1:-1], yy[1:-1, 1:-1]).copy()
    # Move known edge values to the right-hand side.
    rhs[0, :] -= u[0, 1:-1] / h**2
    rhs[-1, :] -= u[-1, 1:-1] / h**2
    rhs[:, 0] -= u[1:-1, 0] / h**2
    rhs[:, -1] -= u[1:-1, -1] / h**2
    u[1:-1, 1:-1] = spla.spsolve(lap, rhs.ravel()).reshape(m, m)
    return x, u


def burgers_hopf_cole(nu: float, x: np.ndarray, t: np.ndarray, nodes: int = 1000) -> np.ndarray:
    """Exact viscous Burgers solution for u(x, 0) = -sin(pi x) on the tensor grid ``x`` x ``t``.

    u(x,t) = -int sin(pi(x-e)) f(x-e) G(e) de / int f(x-e) G(e) de, with f(y) = exp(-cos(pi y)/(2 pi nu))
    and G the heat kernel of variance 2 nu t. Both integrands are evaluated in log space
    (log-sum-exp) and integrated by the trapezoid rule on a truncated interval, which converges
    exponentially for these smooth, rapidly decaying integrands. Gauss-Hermite nodes centred on the
    heat kernel miss the integrand's mass for small nu (it sits up to ~sqrt(4t/pi) away), hence this
    rule. Returns u [len(x), len(t)].
    """
    out = np.empty((len(x), len(t)))
    # Work arrays allocated once and reused for every time (allocating them per time was most of
    # the cost: page faults from the allocator's churn).
    y = np.empty((len(x), nodes))
    w = np.empty_like(y)
    s = np.empty_like(y)
    for j, tj in enumerate(t):
        if tj <= 0:
            out[:, j] = -np.sin(np.pi * x)
            continue
        # Beyond |e| = R the Gaussian factor is below e^-40 times the largest possible f ratio.
        radius = np.sqrt(4 * tj / np.pi + 160 * nu * tj) + 0.05
        eta = np.linspace(-radius, radius, nodes)
        np.subtract(x[:, None], eta[None, :], out=y)
        np.multiply(y, np.pi, out=y)
        # log weights: -eta^2 / (4 nu t) - cos(pi y) / (2 pi nu), shifted by their row maximum
        np.cos(y, out=w)
        np.multiply(w, -1.0 / (2 * np.pi * nu), out=w)
        w -= (eta**2 / (4 * nu * tj))[None, :]
        w -= w.max(axis=1, keepdims=True)
        np.exp(w, out=w)
        np.sin(y, out=s)
        # u = -sum(w sin) / sum(w): the log-sum-exp of the weights without a log per term
        out[:, j] = -np.einsum("ij,ij->i", w, s) / w.sum(axis=1)
    return out


def etdrk4_periodic(
    u0: np.ndarray,
    length: float,
    linear: Callable[[np.ndarray], np.ndarray],
    nonlinear: Callable[[np.ndarray, np.ndarray], np.ndarray],
    t_end: float,
    dt: float,
    n_out: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Integrate u_t = L u + N(u) with u periodic on [0, length).

    ``u0`` [N] samples at x_j = j * length / N. ``linear(k)`` gives the Fourier symbol of L at
    wavenumbers k [N] (rad per unit length); ``nonlinear(u_hat, k)`` gives the transform of N(u),
    already dealiased by the caller if needed. Returns (t [n_out], u [N, n_out]) with t evenly
    spaced from 0 to t_end (t_end / (n_out - 1) must be a multiple of ``dt``).
    """
    n = len(u0)
    k = 2 * np.pi * np.fft.fftfreq(n, d=length / n)
    lin = linear(k)
    e, e2 = np.exp(dt * lin), np.exp(dt * lin / 2)
    # Contour-integral evaluation of the phi-functions avoids cancellation for small |L dt|.
    m = 32
    r = np.exp(1j * np.pi * (np.arange(1, m + 1) - 0.5) / m)
    lr = dt * lin[:, None] + r[None, :]
    q = dt * np.mean((np.exp(lr / 2) - 1) / lr, axis=1)
    f1 = dt * np.mean((-4 - lr + np.exp(lr) * (4 - 3 * lr + lr**2)) / lr**3, axis=1)
    f2 = dt * np.mean((2 + lr + np.exp(lr) * (-2 + lr)) / lr**3, axis=1)
    f3 = dt * np.mean((-4 - 3 * lr - lr**2 + np.exp(lr) * (4 - lr)) / lr**3, axis=1)
    if np.all(np.isreal(lin)):
        q, f1, f2, f3 = q.real, f1.real, f2.real, f3.real

    interval = t_end / (n_out - 1)
    steps_per_out = round(interval / dt)
    if abs(steps_per_out * dt - interval) > 1e-9 * max(1.0, interval):
        raise ValueError("t_end / (n_out - 1) must be a multiple of dt")
    v = np.fft.fft(u0)
    out = np.empty((n, n_out))
    out[:, 0] = u0
    for j in range(1, n_out):
        for _ in range(steps_per_out):
            nv = nonlinear(v, k)
            a = e2 * v + q * nv
            na = nonlinear(a, k)
            b = e2 * v + q * na
            nb = nonlinear(b, k)
            c = e2 * a + q * (2 * nb - nv)
            nc = nonlinear(c, k)
            v = e * v + nv * f1 + 2 * (na + nb) * f2 + nc * f3
        out[:, j] = np.fft.ifft(v).real
    return np.linspace(0.0, t_end, n_out), out


def dealias_mask(k: np.ndarray) -> np.ndarray:
    """2/3-rule mask for quadratic nonlinearities: keeps |k| below 2/3 of the largest wavenumber."""
    return np.abs(k) < (2.0 / 3.0) * np.abs(k).max()


def quadratic_flux_term(coefficient: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """N(u) = -coefficient * (u^2 / 2)_x in Fourier space, dealiased (2/3 rule)."""

    def nonlinear(v: np.ndarray, k: np.ndarray) -> np.ndarray:
        u = np.fft.ifft(v * dealias_mask(k)).real
        return -coefficient * 0.5j * k * np.fft.fft(u * u)

    return nonlinear

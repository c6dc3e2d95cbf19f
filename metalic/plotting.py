"""Figures: prediction, reference and error side by side, with the interfaces drawn."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from metalic.domain import Decomposition
from metalic.families.base import Family, ReferenceGrid


def plot_solution(
    family: Family,
    decomposition: Decomposition,
    grid: ReferenceGrid,
    prediction: np.ndarray,
    path: str | Path,
    title: str = "",
) -> Path:
    """Three panels on the reference grid; ``prediction`` has ``grid.u``'s shape."""
    extent = [grid.axes[0][0], grid.axes[0][-1], grid.axes[1][0], grid.axes[1][-1]]
    error = np.abs(prediction - grid.u)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    vmin, vmax = float(np.min(grid.u)), float(np.max(grid.u))
    panels = [("prediction", prediction, "viridis", vmin, vmax), ("reference", grid.u, "viridis", vmin, vmax),
              ("|error|", error, "magma", None, None)]  # fmt: skip
    for ax, (name, field, cmap, lo, hi) in zip(axes, panels, strict=True):
        im = ax.imshow(field.T, origin="lower", extent=extent, aspect="auto", cmap=cmap, vmin=lo, vmax=hi)
        fig.colorbar(im, ax=ax)
        for iface in decomposition.interfaces:
            if iface.axis == 0:
                ax.plot([iface.position] * 2, [iface.lo, iface.hi], "w--", lw=1.2)
            else:
                ax.plot([iface.lo, iface.hi], [iface.position] * 2, "w--", lw=1.2)
        ax.set_title(name)
        ax.set_xlabel(family.coords[0])
        ax.set_ylabel(family.coords[1])
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_solution_npz(
    family: Family, decomposition: Decomposition, solution: dict[str, np.ndarray], path: str | Path, title: str = ""
) -> Path:
    """``plot_solution`` from a stored solution grid (``jobs.solution_npz``)."""
    grid = ReferenceGrid((solution["axis0"], solution["axis1"]), solution["reference"].astype(np.float64))
    return plot_solution(family, decomposition, grid, solution["prediction"].astype(np.float64), path, title)

"""Figures: prediction, reference and error side by side, with the interfaces drawn.

Built on ``matplotlib.figure.Figure`` (no pyplot state), so that threads of a server can draw at
the same time.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from matplotlib.figure import Figure

from metalic.domain import Decomposition
from metalic.families.base import Family, ReferenceGrid


def plot_solution(
    family: Family,
    decomposition: Decomposition,
    grid: ReferenceGrid,
    prediction: np.ndarray,
    path: str | Path | BinaryIO,
    title: str = "",
    dpi: int = 110,
) -> str | Path | BinaryIO:
    """Three panels on the reference grid; ``prediction`` has ``grid.u``'s shape. ``path``: a file
    name (the format from its suffix) or a binary stream (PNG)."""
    extent = [grid.axes[0][0], grid.axes[0][-1], grid.axes[1][0], grid.axes[1][-1]]
    error = np.abs(prediction - grid.u)
    # A fixed layout: constrained layout measured 0.7 of the 1.1 s this figure took to draw.
    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.045, right=0.985, bottom=0.13, top=0.84 if title else 0.9, wspace=0.22)
    vmin, vmax = float(np.min(grid.u)), float(np.max(grid.u))
    panels = [
        ("prediction", prediction, "viridis", vmin, vmax),
        ("reference", grid.u, "viridis", vmin, vmax),
        ("|error|", error, "magma", None, None),
    ]
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
    if isinstance(path, str | Path):
        fig.savefig(Path(path), dpi=dpi)
    else:
        fig.savefig(path, dpi=dpi, format="png")
    return path


def plot_solution_npz(
    family: Family,
    decomposition: Decomposition,
    solution: dict[str, np.ndarray],
    path: str | Path | BinaryIO,
    title: str = "",
    dpi: int = 110,
) -> str | Path | BinaryIO:
    """``plot_solution`` from a stored solution grid (``jobs.solution_npz``)."""
    grid = ReferenceGrid((solution["axis0"], solution["axis1"]), solution["reference"].astype(np.float64))
    return plot_solution(family, decomposition, grid, solution["prediction"].astype(np.float64), path, title, dpi)

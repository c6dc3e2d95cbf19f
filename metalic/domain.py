"""Space-time boxes, domain decompositions and their interfaces.

Coordinates are always two: ``(x, y)`` for steady problems, ``(x, t)`` for evolution problems.
A subdomain is a union of axis-aligned boxes (the authors' Burgers split has a subdomain made of
two disjoint boxes); an interface is a segment on which two subdomains meet, with a normal along
one coordinate axis pointing from side ``a`` (lower coordinate) to side ``b``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """Axis-aligned rectangle ``[lo[0], hi[0]] x [lo[1], hi[1]]``."""

    lo: tuple[float, float]
    hi: tuple[float, float]

    @property
    def area(self) -> float:
        return (self.hi[0] - self.lo[0]) * (self.hi[1] - self.lo[1])

    def contains(self, points: np.ndarray, tol: float = 1e-12) -> np.ndarray:
        """``points`` [N, 2] -> bool [N], closed box."""
        lo, hi = np.asarray(self.lo), np.asarray(self.hi)
        return np.all((points >= lo - tol) & (points <= hi + tol), axis=-1)


@dataclass(frozen=True)
class Interface:
    """Segment ``{coord[axis] = position, coord[1-axis] in [lo, hi]}`` between subdomains a and b.

    The normal is the unit vector along ``axis``; side ``a`` lies at lower ``coord[axis]``.
    """

    a: int
    b: int
    axis: int
    position: float
    lo: float
    hi: float

    def points(self, n: int) -> np.ndarray:
        """``n`` evenly spaced points on the segment, endpoints included: [n, 2]."""
        pts = np.empty((n, 2))
        pts[:, self.axis] = self.position
        pts[:, 1 - self.axis] = np.linspace(self.lo, self.hi, n)
        return pts


@dataclass(frozen=True)
class Decomposition:
    """Subdomains (each a tuple of boxes) and the interfaces between them."""

    subdomains: tuple[tuple[Box, ...], ...]
    interfaces: tuple[Interface, ...]

    @property
    def n_subdomains(self) -> int:
        return len(self.subdomains)

    def bounding_boxes(self) -> np.ndarray:
        """Per-subdomain bounding box used for input rescaling: [S, 2 (lo, hi), 2 (coord)]."""
        out = np.empty((self.n_subdomains, 2, 2))
        for s, boxes in enumerate(self.subdomains):
            out[s, 0] = np.min([b.lo for b in boxes], axis=0)
            out[s, 1] = np.max([b.hi for b in boxes], axis=0)
        return out

    def locate(self, points: np.ndarray) -> np.ndarray:
        """Index of the subdomain owning each point ([N, 2] -> int [N]); ties go to the lowest index.

        Raises ValueError when a point lies in no subdomain.
        """
        owner = np.full(len(points), -1, dtype=np.int64)
        for s in reversed(range(self.n_subdomains)):
            inside = np.zeros(len(points), dtype=bool)
            for box in self.subdomains[s]:
                inside |= box.contains(points)
            owner[inside] = s
        if np.any(owner < 0):
            raise ValueError("some points lie outside every subdomain")
        return owner

    def describe(self) -> dict:
        """JSON-ready description (saved in model artefacts)."""
        return {
            "subdomains": [[{"lo": list(b.lo), "hi": list(b.hi)} for b in boxes] for boxes in self.subdomains],
            "interfaces": [
                {"a": i.a, "b": i.b, "axis": i.axis, "position": i.position, "lo": i.lo, "hi": i.hi}
                for i in self.interfaces
            ],
        }

    @staticmethod
    def from_description(desc: dict) -> Decomposition:
        subdomains = tuple(tuple(Box(tuple(b["lo"]), tuple(b["hi"])) for b in boxes) for boxes in desc["subdomains"])
        interfaces = tuple(Interface(**i) for i in desc["interfaces"])
        return Decomposition(subdomains, interfaces)


def slabs(domain: Box, axis: int, n: int) -> Decomposition:
    """Split ``domain`` into ``n`` equal slabs along ``axis`` (interfaces normal to ``axis``).

    ``n = 1`` is the single-domain PINN (one network, no interface).
    """
    if n < 1:
        raise ValueError(f"subdomains must be at least 1, got {n}")
    cuts = np.linspace(domain.lo[axis], domain.hi[axis], n + 1)
    subdomains = []
    for k in range(n):
        lo, hi = list(domain.lo), list(domain.hi)
        lo[axis], hi[axis] = float(cuts[k]), float(cuts[k + 1])
        subdomains.append((Box(tuple(lo), tuple(hi)),))
    other = 1 - axis
    interfaces = tuple(
        Interface(k, k + 1, axis, float(cuts[k + 1]), domain.lo[other], domain.hi[other]) for k in range(n - 1)
    )
    return Decomposition(tuple(subdomains), interfaces)


def sample_interior(boxes: tuple[Box, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform points in a union of disjoint boxes (boxes chosen by area): [n, 2]."""
    areas = np.array([b.area for b in boxes])
    which = rng.choice(len(boxes), size=n, p=areas / areas.sum())
    lo = np.array([boxes[i].lo for i in which])
    hi = np.array([boxes[i].hi for i in which])
    return lo + (hi - lo) * rng.random((n, 2))


def boundary_segments(boxes: tuple[Box, ...], domain: Box, edges: tuple[tuple[int, int], ...]) -> list:
    """Parts of the domain's data edges that belong to these boxes.

    ``edges`` lists ``(axis, side)``: side 0 is ``coord[axis] = domain.lo[axis]``, 1 the upper one.
    Returns ``[(axis, position, lo, hi), ...]`` with a non-empty tangential extent.
    """
    segments = []
    for axis, side in edges:
        position = domain.lo[axis] if side == 0 else domain.hi[axis]
        for box in boxes:
            box_pos = box.lo[axis] if side == 0 else box.hi[axis]
            if abs(box_pos - position) < 1e-12:
                other = 1 - axis
                segments.append((axis, position, box.lo[other], box.hi[other]))
    return segments


def sample_boundary(segments: list, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform points on the union of segments (chosen by length): [n, 2]."""
    lengths = np.array([hi - lo for _, _, lo, hi in segments])
    which = rng.choice(len(segments), size=n, p=lengths / lengths.sum())
    pts = np.empty((n, 2))
    for j, (axis, position, lo, hi) in enumerate(segments):
        sel = which == j
        pts[sel, axis] = position
        pts[sel, 1 - axis] = lo + (hi - lo) * rng.random(sel.sum())
    return pts

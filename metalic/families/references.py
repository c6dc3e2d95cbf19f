"""Reference grids off the critical path: kept in memory, on disk, and computed ahead.

A reference grid (Burgers Hopf-Cole: about 0.5 s on a 2-core CPU; KdV spectral: 0.2 s) is a pure
function of (family, parameters, solver code). ``ReferenceCache.get`` looks in memory (the 64 most
recent), then in ``<cache>/<family>-<key>.npz`` on disk, and only then solves, writing the file
atomically (a temporary file renamed into place, so concurrent workers never read half a file).
The key hashes the family's name, its parameters and the source of the module that defines its
reference and of ``solvers.py``: editing a solver makes new keys, so a stale grid is never read.
Only registered families (built-in or plugins) go to disk; a family made on the fly (tests) is
kept in memory only, since two of them may share a name.

``prefetch`` starts solving grids in a background thread pool and returns at once; a later
``get`` of the same grid waits for that computation instead of starting another. The solvers
spend their time in NumPy array operations, which release the GIL, so a worker computes the grids
of a batch while its training runs (a process pool would have to import torch in every process,
about 1.5 s each, to rebuild the family).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

Key = tuple[tuple[str, float], ...]  # sorted (parameter, value) pairs


@dataclass(frozen=True)
class ReferenceGrid:
    """Reference solution on a tensor grid: ``u[i, j] = u(axes[0][i], axes[1][j])``."""

    axes: tuple[np.ndarray, np.ndarray]
    u: np.ndarray

    def points(self) -> np.ndarray:
        """All grid points, flattened in ``u.ravel()`` order: [Nx * Ny, 2]."""
        a, b = np.meshgrid(self.axes[0], self.axes[1], indexing="ij")
        return np.stack([a.ravel(), b.ravel()], axis=-1)

    def interpolate(self, points: np.ndarray) -> np.ndarray:
        """Cubic interpolation at ``points`` [N, 2] -> [N]."""
        from scipy.interpolate import RegularGridInterpolator  # 0.4 s to import: only when used

        interp = RegularGridInterpolator(self.axes, self.u, method="cubic")
        return interp(points)


class Family(Protocol):
    """What the cache needs of a family (``families.base.Family`` is one)."""

    name: str

    def reference(self, params: dict[str, float]) -> ReferenceGrid: ...


def _unregistered(family: Family) -> bool:
    return True


# Whether a family is a registered one (built-in or plugin), whose grids go to disk; the family
# registry (``metalic.families``) sets it, so that this module needs nothing above it.
is_registered = _unregistered


@cache
def _source_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_fingerprint(family: Family) -> str:
    """A digest of the code that computes ``family``'s reference: its module and the solvers."""
    from metalic.families import solvers

    files = {inspect.getsourcefile(family.reference), inspect.getsourcefile(solvers)}
    return hashlib.sha256("".join(_source_digest(f) for f in sorted(filter(None, files))).encode()).hexdigest()


class ReferenceCache:
    """Reference grids by (family, parameters): memory, then disk, then the solver."""

    def __init__(self, keep: int = 64, workers: int = 2):
        self.keep, self.workers = keep, workers
        self._lock = threading.Lock()
        self._memory: OrderedDict[tuple, ReferenceGrid] = OrderedDict()
        self._pending: dict[tuple, Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.solved = 0  # grids computed by a solver in this process (not read from memory or disk)

    # ---- public --------------------------------------------------------------------------------
    def get(self, family: Family, key: Key) -> ReferenceGrid:
        """The grid of ``family`` at parameters ``key``, waiting for a prefetch of it if one runs."""
        with self._lock:
            slot = (family, key)
            if slot in self._memory:
                self._memory.move_to_end(slot)
                return self._memory[slot]
            pending = self._pending.get(slot)
            if pending is None:
                pending = Future()
                self._pending[slot] = pending
                mine = True
            else:
                mine = False
        if mine:
            self._fill(family, key, pending)
        return pending.result()

    def prefetch(self, family: Family, keys: Iterable[Key]) -> None:
        """Start computing the grids ``keys`` of ``family`` in the background; returns at once."""
        for key in keys:
            slot = (family, key)
            with self._lock:
                if slot in self._memory or slot in self._pending:
                    continue
                pending = Future()
                self._pending[slot] = pending
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="metalic-reference")
                pool = self._pool
            pool.submit(self._fill, family, key, pending)

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()

    # ---- internals -----------------------------------------------------------------------------
    def _fill(self, family: Family, key: Key, pending: Future) -> None:
        slot = (family, key)
        try:
            grid = self._load_or_solve(family, key)
        except BaseException as exc:  # the waiting caller gets the solver's error
            with self._lock:
                self._pending.pop(slot, None)
            pending.set_exception(exc)
            return
        with self._lock:
            self._memory[slot] = grid
            self._memory.move_to_end(slot)
            while len(self._memory) > self.keep:
                self._memory.popitem(last=False)
            self._pending.pop(slot, None)
        pending.set_result(grid)

    def _load_or_solve(self, family: Family, key: Key) -> ReferenceGrid:
        path = self.path_of(family, key)
        if path is not None and path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    return ReferenceGrid((z["axis0"], z["axis1"]), z["u"])
            except Exception as exc:  # a damaged file: solve again and replace it
                log.warning("reference cache file %s unreadable (%s); recomputing", path, exc)
        grid = family.reference(dict(key))
        with self._lock:
            self.solved += 1
        if path is not None:
            self._write(path, grid)
        return grid

    @staticmethod
    def _write(path: Path, grid: ReferenceGrid) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, axis0=grid.axes[0], axis1=grid.axes[1], u=grid.u)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only or full disk costs speed, not the solve
            log.warning("could not write reference cache file %s: %s", path, exc)

    @staticmethod
    def path_of(family: Family, key: Key) -> Path | None:
        """Where the grid is kept on disk (None: not kept, for an unregistered family or when the
        cache is switched off)."""
        from metalic.settings import get_settings

        folder = get_settings().reference_cache_dir()
        if folder is None or not is_registered(family):
            return None
        digest = hashlib.sha256(repr((family.name, key, code_fingerprint(family))).encode()).hexdigest()[:24]
        return folder / f"{family.name}-{digest}.npz"


def params_key(params: Mapping[str, float]) -> Key:
    return tuple(sorted((k, float(v)) for k, v in params.items()))


CACHE = ReferenceCache()

"""Reference grids kept on disk and computed ahead (``metalic.families.references``)."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from metalic import settings
from metalic.families import get_family, references
from metalic.families.base import Family, ReferenceGrid
from metalic.families.references import ReferenceCache, params_key
from tests.plugins import nan_family


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("METALIC_REFERENCE_CACHE", str(tmp_path / "references"))
    settings.get_settings.cache_clear()
    yield tmp_path / "references"
    settings.get_settings.cache_clear()


def _family(reference) -> Family:
    """An unregistered family (the NaN test family under another name) with this reference."""
    return replace(nan_family.FAMILY, name="reference-test", reference=reference)


def test_a_solved_grid_is_read_back_from_disk_by_another_cache_with_the_same_values(cache_dir):
    burgers = get_family("burgers")
    key = params_key({"nu": 0.02})
    first = ReferenceCache()
    grid = first.get(burgers, key)
    assert first.solved == 1
    assert [p.name for p in cache_dir.iterdir()] == [first.path_of(burgers, key).name]
    second = ReferenceCache()  # a new process's cache: empty memory, same folder
    again = second.get(burgers, key)
    assert second.solved == 0
    assert np.array_equal(again.u, grid.u)
    assert all(np.array_equal(a, b) for a, b in zip(again.axes, grid.axes, strict=True))


def test_a_damaged_file_is_solved_again_and_replaced(cache_dir):
    burgers = get_family("burgers")
    key = params_key({"nu": 0.03})
    grid = ReferenceCache().get(burgers, key)
    path = ReferenceCache.path_of(burgers, key)
    path.write_bytes(b"not an npz file")
    cache = ReferenceCache()
    assert np.array_equal(cache.get(burgers, key).u, grid.u)
    assert cache.solved == 1
    with np.load(path) as z:  # rewritten whole
        assert np.array_equal(z["u"], grid.u)


def test_other_solver_code_means_another_file(cache_dir, monkeypatch):
    burgers = get_family("burgers")
    key = params_key({"nu": 0.04})
    before = ReferenceCache.path_of(burgers, key)
    monkeypatch.setattr(references, "code_fingerprint", lambda family: "an edited solver")
    after = ReferenceCache.path_of(burgers, key)
    assert before != after
    cache = ReferenceCache()
    cache.get(burgers, key)
    assert cache.solved == 1  # the grid of the old code is not read


def test_the_cache_can_be_switched_off_and_unregistered_families_stay_in_memory(cache_dir, monkeypatch):
    fam = _family(lambda p: ReferenceGrid((np.linspace(0, 1, 3), np.linspace(0, 1, 3)), np.full((3, 3), p["q"])))
    assert ReferenceCache.path_of(fam, params_key({"q": 0.5})) is None
    monkeypatch.setenv("METALIC_REFERENCE_CACHE", "off")
    settings.get_settings.cache_clear()
    assert ReferenceCache.path_of(get_family("burgers"), params_key({"nu": 0.01})) is None


def test_a_prefetch_returns_at_once_and_a_later_get_waits_for_it_instead_of_solving_again():
    release, calls = threading.Event(), []

    def slow_reference(p):
        calls.append(p["q"])
        assert release.wait(30)
        return ReferenceGrid((np.linspace(0, 1, 3), np.linspace(0, 1, 3)), np.full((3, 3), p["q"]))

    fam = _family(slow_reference)
    cache = ReferenceCache()
    keys = [params_key({"q": q}) for q in (0.1, 0.2, 0.3)]
    cache.prefetch(fam, keys)  # returns while every solver is blocked
    assert not release.is_set()
    release.set()
    grids = [cache.get(fam, k) for k in keys]
    assert [float(g.u[0, 0]) for g in grids] == [0.1, 0.2, 0.3]
    assert sorted(calls) == [0.1, 0.2, 0.3] and cache.solved == 3


def test_a_solver_error_reaches_the_caller_and_the_next_get_tries_again():
    fail = [True]

    def flaky(p):
        if fail[0]:
            raise RuntimeError("solver failed")
        return ReferenceGrid((np.linspace(0, 1, 2), np.linspace(0, 1, 2)), np.zeros((2, 2)))

    fam = _family(flaky)
    cache = ReferenceCache()
    cache.prefetch(fam, [params_key({"q": 0.0})])
    with pytest.raises(RuntimeError, match="solver failed"):
        cache.get(fam, params_key({"q": 0.0}))
    fail[0] = False
    assert cache.get(fam, params_key({"q": 0.0})).u.shape == (2, 2)


def test_a_batch_with_prefetch_scores_its_runs_as_one_without(cache_dir):
    from metalic.families.references import CACHE
    from metalic.jobs import Run, SolveRequest, run_solve_batch

    requests = [
        SolveRequest(family="burgers", params={"nu": nu}, arm="u,flux", adam=3, lbfgs=3, collocation=30,
                     boundary=10, interface_points=5, seed=j)
        for j, nu in enumerate((0.011, 0.012))
    ]  # fmt: skip
    solved = CACHE.solved
    CACHE.clear_memory()
    ahead = run_solve_batch([Run.explicit(r) for r in requests], device="cpu", artefacts=False, prefetch=True)
    assert CACHE.solved == solved + 2
    assert len(list(cache_dir.iterdir())) == 2
    CACHE.clear_memory()
    after = run_solve_batch([Run.explicit(r) for r in requests], device="cpu", artefacts=False, prefetch=False)
    assert CACHE.solved == solved + 2  # read from disk
    assert [r.rel_l2 for r in ahead] == [r.rel_l2 for r in after]

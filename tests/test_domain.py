from __future__ import annotations

import numpy as np
import pytest

from metalic.domain import Box, Decomposition, boundary_segments, slabs
from metalic.families import get_family


def test_slabs_have_interfaces_on_every_internal_cut():
    dec = slabs(Box((0.0, 0.0), (1.0, 3.0)), axis=1, n=3)
    assert [i.position for i in dec.interfaces] == [1.0, 2.0]
    assert [(i.a, i.b) for i in dec.interfaces] == [(0, 1), (1, 2)]
    pts = dec.interfaces[1].points(5)
    np.testing.assert_allclose(pts[:, 1], 2.0)
    np.testing.assert_allclose(pts[:, 0], np.linspace(0, 1, 5))
    owner = dec.locate(np.array([[0.5, 0.5], [0.5, 1.5], [0.5, 2.9]]))
    assert owner.tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        slabs(Box((0.0, 0.0), (1.0, 1.0)), axis=0, n=0)


def test_burgers_default_split_is_the_strip_and_the_rest():
    dec = get_family("burgers").decomposition()
    assert dec.n_subdomains == 2 and len(dec.interfaces) == 2
    assert dec.locate(np.array([[0.0, 0.5], [-0.5, 0.5], [0.9, 0.1]])).tolist() == [0, 1, 1]
    np.testing.assert_allclose(dec.bounding_boxes()[1], [[-1.0, 0.0], [1.0, 1.0]])
    # the strip touches only the initial line; the rest touches the initial line and both sides
    fam = get_family("burgers")
    assert len(boundary_segments(dec.subdomains[0], fam.domain, fam.boundary_edges)) == 1
    assert len(boundary_segments(dec.subdomains[1], fam.domain, fam.boundary_edges)) == 4


def test_decomposition_round_trips_through_its_description():
    dec = get_family("burgers").decomposition()
    assert Decomposition.from_description(dec.describe()) == dec

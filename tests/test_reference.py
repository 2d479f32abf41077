"""pinnlsr.reference: the ReferenceData container, grid detection and the array-layout helpers."""
from __future__ import annotations

import numpy as np
import pytest

from pinnlsr.reference import ReferenceData, finite_rows, grid_axes, renamed, space_time_grid


def c_ordered_grid(*axes):
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.column_stack([m.ravel() for m in mesh])


def test_grid_axes_c_order_and_shuffled():
    x, y, t = np.array([0.0, 0.5, 2.0]), np.array([-1.0, 1.0]), np.array([0.0, 0.1, 0.2, 0.3])
    pts = c_ordered_grid(x, y, t)
    axes, perm = grid_axes(pts)
    assert all(np.array_equal(a, b) for a, b in zip(axes, (x, y, t)))
    assert np.array_equal(perm, np.arange(len(pts)))
    shuffle = np.random.default_rng(0).permutation(len(pts))
    axes_s, perm_s = grid_axes(pts[shuffle])
    assert all(np.array_equal(a, b) for a, b in zip(axes_s, axes))
    assert np.array_equal(pts[shuffle][perm_s], pts)


def test_grid_axes_rejects_non_grids():
    pts = c_ordered_grid(np.arange(3.0), np.arange(4.0))
    assert grid_axes(pts[:-1]) is None  # one node missing
    dup = pts.copy()
    dup[1] = dup[0]  # right counts, a repeated node
    assert grid_axes(dup) is None
    assert grid_axes(np.random.default_rng(1).random((12, 2))) is None
    assert grid_axes(pts[:1]) is None


def test_reference_detects_only_c_ordered_grids():
    pts = c_ordered_grid(np.linspace(0, 1, 5), np.array([0.0, 0.3, 1.0]))
    vals = np.column_stack([pts[:, 0] + pts[:, 1], pts[:, 0] * pts[:, 1]])
    ref = ReferenceData(pts, vals, ("x", "t"), ("a", "b"))
    assert ref.grid_shape == (5, 3) and len(ref.axes) == 2
    np.testing.assert_array_equal(ref.grid_values()[2, 1], vals[2 * 3 + 1])
    perm = np.random.default_rng(0).permutation(len(pts))
    shuffled = ReferenceData(pts[perm], vals[perm], ("x", "t"), ("a", "b"))
    assert shuffled.grid_shape is None and shuffled.axes is None
    with pytest.raises(ValueError, match="not a tensor grid"):
        shuffled.grid_values()


def test_reference_given_axes_are_checked():
    x, t = np.linspace(0, 1, 4), np.array([0.0, 1.0])
    pts = c_ordered_grid(x, t)
    ref = ReferenceData(pts, pts[:, 0], ("x", "t"), ("u",), axes=(x, t))
    assert ref.grid_shape == (4, 2)
    with pytest.raises(ValueError, match="C-ordered grid"):
        ReferenceData(pts[::-1], pts[:, 0], ("x", "t"), ("u",), axes=(x, t))
    with pytest.raises(ValueError, match="does not match axes"):
        ReferenceData(pts, pts[:, 0], ("x", "t"), ("u",), grid_shape=(2, 4), axes=(x, t))
    with pytest.raises(ValueError, match="without axes"):
        ReferenceData(pts, pts[:, 0], ("x", "t"), ("u",), grid_shape=(4, 2))


def test_reference_columns_select_and_check():
    pts = np.random.default_rng(2).random((6, 2))
    vals = np.column_stack([np.arange(6.0), -np.arange(6.0)])
    ref = ReferenceData(pts, vals, ("x", "y"), ("u", "v"), "mine.npz")
    assert (ref.dim, ref.n_outputs, len(ref)) == (2, 2, 6)
    np.testing.assert_array_equal(ref.output("v"), -np.arange(6.0))
    sel = ref.select(["v"])
    assert sel.output_names == ("v",) and sel.values.shape == (6, 1)
    with pytest.raises(KeyError, match="mine.npz"):
        ref.output("w")
    with pytest.raises(KeyError, match="mine.npz"):
        ref.select(["w"])
    assert ref.check(2, 2) is ref
    with pytest.raises(ValueError, match="mine.npz"):
        ref.check(3, 2)
    with pytest.raises(ValueError, match="output"):
        ref.check(2, 1)


def test_nan_and_name_mismatch_rejected_at_construction():
    with pytest.raises(ValueError, match="mine.dat"):
        ReferenceData(np.zeros((3, 2)), np.array([1.0, np.nan, 2.0]), ("x", "y"), ("u",), "mine.dat")
    with pytest.raises(ValueError, match="names"):
        ReferenceData(np.zeros((3, 2)), np.zeros(3), ("x",), ("u",))
    with pytest.raises(ValueError, match="3 points but 2 value rows"):
        ReferenceData(np.zeros((3, 2)), np.zeros(2), ("x", "y"), ("u",))
    points_only = ReferenceData(np.zeros((3, 2)), np.zeros((0,)), ("x", "y"), ())
    assert points_only.values.shape == (3, 0)


def test_space_time_grid_sorts_axes():
    x, t = np.array([1.0, -1.0, 0.0]), np.array([0.5, 0.0])
    u = x[:, None] * 10 + t[None, :]  # u[i_x, i_t]
    ref = space_time_grid(x, t, u, "st")
    assert ref.grid_shape == (3, 2) and ref.input_names == ("x", "t")
    np.testing.assert_array_equal(ref.points[:2], [[-1.0, 0.0], [-1.0, 0.5]])  # x-major, t fastest
    np.testing.assert_array_equal(ref.values[:, 0], 10 * ref.points[:, 0] + ref.points[:, 1])
    with pytest.raises(ValueError, match="st: solution shape"):
        space_time_grid(x, t, u.T, "st")


def test_finite_rows_and_renamed():
    pts = np.array([[0.0, 1.0], [np.nan, 0.0], [2.0, 3.0]])
    vals = np.array([1.0, 2.0, np.inf])
    p, v = finite_rows(pts, vals)
    np.testing.assert_array_equal(p, [[0.0, 1.0]])
    np.testing.assert_array_equal(v, [[1.0]])
    assert renamed(("x", "y"), None, "input", "f") == ("x", "y")
    assert renamed(("x", "y"), ["a", "b"], "input", "f") == ("a", "b")
    with pytest.raises(ValueError, match="f: 1 input names"):
        renamed(("x", "y"), ["a"], "input", "f")

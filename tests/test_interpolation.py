"""pinnlsr.interpolation: grids, scattered data in 1-3 dimensions, and the values on the shared references
(pinned: computed by the implementation before the reference-data modules were split out of pinnlsr.io)."""
from __future__ import annotations

import numpy as np
import pytest

from pinnlsr.datafolder import data_file
from pinnlsr.datasets import load_burgers_npz, load_poisson_lshape
from pinnlsr.interpolation import interpolate, make_interpolator
from pinnlsr.readers import load_dat, load_reference
from pinnlsr.reference import ReferenceData
from shared_data import reference_file


# --------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------
def test_interpolate_grid_exact_and_linear():
    x = np.linspace(0, 1, 5)
    t = np.array([0.0, 0.3, 1.0])
    X, T = np.meshgrid(x, t, indexing="ij")
    pts = np.column_stack([X.ravel(), T.ravel()])
    vals = np.column_stack([np.sin(7 * pts[:, 0]) + pts[:, 1] ** 2, 2 * pts[:, 0] - pts[:, 1]])
    ref = ReferenceData(pts, vals, ("x", "t"), ("a", "b"))
    assert ref.grid_shape == (5, 3)
    assert np.array_equal(interpolate(ref, pts), vals)
    # the same grid in shuffled row order is still interpolated as a grid
    perm = np.random.default_rng(0).permutation(len(pts))
    ref_s = ReferenceData(pts[perm], vals[perm], ("x", "t"), ("a", "b"))
    assert ref_s.grid_shape is None
    q = np.array([[0.125, 0.15], [0.9, 0.65]])
    np.testing.assert_allclose(interpolate(ref_s, q)[:, 1], 2 * q[:, 0] - q[:, 1], atol=1e-14)
    np.testing.assert_allclose(interpolate(ref, q), interpolate(ref_s, q), atol=1e-14)
    # outside the box: clamped
    np.testing.assert_allclose(interpolate(ref, [[2.0, 1.0]]), vals[[-1]], atol=1e-14)


def test_interpolate_grid_with_a_singleton_axis():
    x = np.linspace(0, 1, 4)
    pts = np.column_stack([x, np.full(4, 0.5)])
    ref = ReferenceData(pts, 3 * x, ("x", "t"), ("u",))
    assert ref.grid_shape == (4, 1)
    np.testing.assert_allclose(interpolate(ref, [[0.5, 0.0], [0.25, 9.0]])[:, 0], [1.5, 0.75], atol=1e-14)


def test_interpolate_scattered_and_outside_hull():
    rng = np.random.default_rng(1)
    pts = rng.random((200, 2))
    vals = (1 + 2 * pts[:, 0] - 3 * pts[:, 1])[:, None]
    ref = ReferenceData(pts, vals, ("x", "y"), ("u",))
    assert ref.grid_shape is None
    assert np.array_equal(interpolate(ref, pts), vals)
    q = np.array([[0.5, 0.5], [0.3, 0.6]])
    np.testing.assert_allclose(interpolate(ref, q)[:, 0], 1 + 2 * q[:, 0] - 3 * q[:, 1], atol=1e-12)
    far = np.array([[5.0, 5.0]])
    nearest = np.argmin(((pts - far) ** 2).sum(1))
    np.testing.assert_array_equal(interpolate(ref, far), vals[[nearest]])


def test_interpolate_scattered_degenerate_3d_grid_with_notch():
    # grid points are co-spherical: Qhull leaves flat simplices, the domain is non-convex
    x = np.linspace(0, 1, 9)
    X, Y, T = np.meshgrid(x, x, x, indexing="ij")
    pts = np.column_stack([X.ravel(), Y.ravel(), T.ravel()])
    pts = pts[(pts[:, 0] < 0.5) | (pts[:, 1] < 0.5)]
    lin = lambda p: 1 + p[:, 0] - 2 * p[:, 1] + 3 * p[:, 2]  # noqa: E731
    ref = ReferenceData(pts, lin(pts), ("x", "y", "t"), ("u",))
    assert ref.grid_shape is None
    q = np.random.default_rng(4).uniform(0, 1, (3000, 3))
    q = q[(q[:, 0] <= 0.375) | (q[:, 1] <= 0.375)]  # inside the L-shaped prism (nodes x < 0.5)
    np.testing.assert_allclose(interpolate(ref, q)[:, 0], lin(q), atol=1e-12)
    assert np.array_equal(interpolate(ref, pts)[:, 0], lin(pts))


def test_interpolate_1d_scattered_and_shape_errors():
    pts = np.array([0.0, 1.0, 0.4, 2.0])
    ref = ReferenceData(pts[:, None], (3 * pts)[:, None], ("x",), ("u",))
    np.testing.assert_allclose(interpolate(ref, np.array([[0.2], [1.5]]))[:, 0], [0.6, 4.5])
    np.testing.assert_allclose(interpolate(ref, np.array([0.2, 1.5]))[:, 0], [0.6, 4.5])  # (M,) in 1-D
    with pytest.raises(ValueError, match="d=1"):
        interpolate(ref, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        interpolate(ref, np.array([[np.nan]]))


def test_points_only_reference_gives_no_columns():
    ref = ReferenceData(np.random.default_rng(3).random((5, 2)), np.zeros((5, 0)), ("x", "y"), ())
    assert interpolate(ref, np.zeros((4, 2))).shape == (4, 0)


# --------------------------------------------------------------------------------------
# shared references: values pinned before the split, linear fields, cross-checks
# --------------------------------------------------------------------------------------
def prism_reference() -> ReferenceData:
    """poisson_boltzmann2d.dat nodes x 11 times, u(x, y)(1 + t): a space-time export's layout (3-D
    scattered, co-spherical nodes in time, so Qhull's triangulation has flat simplices)."""
    pb = load_reference(data_file("pinnacle/poisson_boltzmann2d.dat"))
    t = np.linspace(0, 1, 11)
    pts = np.column_stack([np.repeat(pb.points, 11, 0), np.tile(t, len(pb))])
    vals = np.repeat(pb.values, 11, 0) * (1 + np.tile(t, len(pb)))[:, None]
    return ReferenceData(pts, vals, ("x", "y", "t"), ("u",))


PINNED = {
    "lshape": ("deepxde/Poisson_Lshape.npz", load_poisson_lshape,
               [[-0.503, 0.317], [0.4101, -0.77], [-0.99, -0.99], [0.3, 0.3], [-0.123456, -0.654321]],
               [[0.10668050949646977], [0.07183239204325942], [0.00025141642887007993], [0.0],
                [0.10874667558782469]]),
    "ns_obstacle": ("pinnacle/ns_0_obstacle.dat", lambda: load_reference(data_file("pinnacle/ns_0_obstacle.dat")),
                    [[0.5, 0.5], [2.5, 1.5], [3.97, 0.02], [1.0, 1.5], [3.3333, 0.6667]],
                    [[9.9877490960819881e-01, 1.4064408736343174e-03, 7.5616358574952761e-02],
                     [-4.5188289786488346e-02, -4.2024436287880856e-02, -5.5472820410134793e-02],
                     [1.9090579249044851e-02, 1.6426922854101720e-04, -1.5411108572555639e-03],
                     [0.0, 0.0, 3.0247619882186546e-02],
                     [8.6316382709623451e-01, 1.1102709634856028e-01, -2.7921275725520507e-02]]),
    "lid_driven": ("pinnacle/lid_driven_a4.dat", lambda: load_reference(data_file("pinnacle/lid_driven_a4.dat")),
                   [[0.5, 0.5], [0.1234, 0.9876], [0.77, 0.05], [0.999, 0.999]],
                   [[-1.7876410434261381e-01, 5.4386221193437195e-02, -2.7623633820592824e-02],
                    [3.1784331426530804e-01, 3.4857406095003832e-02, -6.6202193147351207e-02],
                    [-1.0782834023940740e-02, -2.8373824102024313e-03, 6.8916063250993864e-03],
                    [3.9480061083291412e-03, -3.2194342541917449e-05, 5.4715912515312293e-01]]),
    "burgers_grid": ("deepxde/Burgers.npz", load_burgers_npz,
                     [[0.0, 0.5], [-0.3, 0.25], [0.77, 0.995], [1.5, -1.0]],
                     [[-1.2764678203325275e-11], [9.8268223771356222e-01], [-1.7524157674826335e-01],
                      [-1.2246467991473532e-16]]),
    "space_time_prism": ("pinnacle/poisson_boltzmann2d.dat", prism_reference,
                         [[0.0, 0.0, 0.55], [-0.9, 0.9, 0.05], [0.31, -0.47, 0.999], [0.5, 0.5, 0.5]],
                         [[0.45353141246450523], [0.47909103313289175], [1.999], [1.5]]),
}


@pytest.mark.parametrize("case", list(PINNED))
def test_values_on_shared_references_are_unchanged(case):
    rel, load, q, expected = PINNED[case]
    reference_file(rel)
    np.testing.assert_allclose(interpolate(load(), np.array(q)), np.array(expected), rtol=0, atol=1e-12)


def test_interpolate_lshape_linear_field():
    reference_file("deepxde/Poisson_Lshape.npz")
    ref = load_poisson_lshape()
    lin = lambda p: 0.5 + p[:, 0] - 3 * p[:, 1]  # noqa: E731
    ref = ReferenceData(ref.points, lin(ref.points), ("x", "y"), ("u",))
    q = np.random.default_rng(5).uniform(-1, 0, (2000, 2))
    f = make_interpolator(ref)
    np.testing.assert_allclose(f(q)[:, 0], lin(q), atol=1e-12)
    assert np.array_equal(f(ref.points)[:, 0], lin(ref.points))  # reference points: stored values


def test_pinnacle_burgers_vs_spectral():
    burgers = load_burgers_npz(reference_file("deepxde/Burgers.npz"))
    ref = load_dat(reference_file("pinnacle/burgers1d.dat"))
    u = interpolate(burgers, ref.points)  # t = 1 is clamped to the last snapshot t = 0.99
    err = np.linalg.norm(u - ref.values) / np.linalg.norm(ref.values)
    assert 0.005 < err < 0.05  # data README: about 1.3 %

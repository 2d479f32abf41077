"""pinnlsr.datasets: every shared data set loads with the shapes and properties of the data README."""
from __future__ import annotations

import numpy as np
import pytest

from pinnlsr import datasets
from shared_data import reference_file


@pytest.fixture(scope="module")
def burgers():
    return datasets.load_burgers_npz(reference_file("deepxde/Burgers.npz"))


def test_burgers_npz(burgers):
    assert burgers.points.shape == (25600, 2) and burgers.values.shape == (25600, 1)
    assert burgers.input_names == ("x", "t") and burgers.output_names == ("u",)
    assert burgers.grid_shape == (256, 100)
    x, t = burgers.axes
    assert x[0] == -1 and x[-1] == 1 and t[0] == 0 and np.isclose(t[-1], 0.99)
    u = burgers.grid_values()[..., 0]
    # rows are x-major, time fastest
    assert np.array_equal(burgers.points[1], [x[0], t[1]])
    np.testing.assert_allclose(u[:, 0], -np.sin(np.pi * x), atol=1e-12)  # data: ~1e-16
    np.testing.assert_allclose(u[0], 0, atol=1e-12)
    np.testing.assert_allclose(u[-1], 0, atol=1e-12)
    burgers.check(2, 1)
    with pytest.raises(ValueError, match="Burgers.npz"):
        burgers.check(3, 1)


@pytest.mark.parametrize("variant,shape", [("jaxpi", (512, 201)), ("deepxde", (201, 101))])
def test_allen_cahn(variant, shape):
    reference_file({"jaxpi": "jaxpi/allen_cahn.mat", "deepxde": "deepxde/Allen_Cahn.mat"}[variant])
    ref = datasets.load_allen_cahn_mat(variant=variant)
    assert ref.grid_shape == shape and ref.points.shape == (shape[0] * shape[1], 2)
    x, t = ref.axes
    assert x[0] == -1 and x[-1] == 1 and t[0] == 0 and t[-1] == 1
    u = ref.grid_values()[..., 0]
    np.testing.assert_allclose(u[:, 0], x**2 * np.cos(np.pi * x), atol=1e-12)
    if variant == "jaxpi":
        # both endpoints are stored and agree exactly (periodic); the boundary value is not -1
        np.testing.assert_allclose(u[0], u[-1], atol=1e-12)
    else:
        np.testing.assert_allclose(u[0], -1, atol=1e-12)
        np.testing.assert_allclose(u[-1], -1, atol=1e-12)


def test_allen_cahn_bad_variant():
    with pytest.raises(ValueError, match="variant"):
        datasets.load_allen_cahn_mat(variant="nope")


def test_poisson_lshape():
    p = reference_file("deepxde/Poisson_Lshape.npz")
    with np.load(p, allow_pickle=False) as raw:
        assert raw["X_test"].shape == (25921, 2) and raw["y_ref"].shape == (25921, 1)
    ref = datasets.load_poisson_lshape()
    # the 80x80 points of the removed quadrant carry NaN in the file and are dropped
    assert ref.points.shape == (25921 - 6400, 2) and ref.values.shape == (25921 - 6400, 1)
    assert not np.any((ref.points[:, 0] > 0) & (ref.points[:, 1] > 0))
    on_outer = np.isclose(np.abs(ref.points), 1).any(axis=1)
    np.testing.assert_allclose(ref.values[on_outer, 0], 0, atol=1e-12)
    assert ref.grid_shape is None


def test_stokes():
    reference_file("deepxde/stokes.npz")
    ref = datasets.load_stokes()
    assert ref.points.shape == (10201, 2) and ref.values.shape == (10201, 3)
    assert ref.output_names == ("u", "v", "p") and ref.grid_shape == (101, 101)
    s = np.linspace(0, 1, 101)
    g = ref.grid_values()  # [i_x, i_y, (u, v, p)]
    np.testing.assert_allclose(g[:, -1, 0], s * (1 - s), atol=1e-12)  # lid y = 1
    np.testing.assert_allclose(g[:, 0, :2], 0, atol=1e-12)  # bottom
    np.testing.assert_allclose(g[0, :-1, :2], 0, atol=1e-12)  # left wall
    np.testing.assert_allclose(g[-1, :-1, :2], 0, atol=1e-12)  # right wall
    # flow turns with the lid: up near x = 0, down near x = 1 (fixes the x direction)
    assert g[10, 80, 1] > 0 > g[90, 80, 1]


@pytest.mark.parametrize("split,n", [("train", 150), ("test", 1000)])
def test_antiderivative(split, n):
    from scipy.integrate import cumulative_trapezoid

    reference_file(f"deeponet/antiderivative_aligned_{split}.npz")
    d = datasets.load_antiderivative(split)
    assert d.X_branch.shape == (n, 100) and d.X_trunk.shape == (100, 1) and d.y.shape == (n, 100)
    x = d.X_trunk[:, 0]
    c = cumulative_trapezoid(d.X_branch, x, axis=1, initial=0)
    # y comes from the continuous input function, not its 100 samples: ~0.9% rel. L2 apart
    assert np.linalg.norm(c - d.y) / np.linalg.norm(d.y) < 0.02
    assert np.abs(c - d.y).max() < 0.05
    np.testing.assert_allclose(d.y[:, 0], 0, atol=1e-12)


def test_antiderivative_bad_split():
    with pytest.raises(ValueError, match="split"):
        datasets.load_antiderivative("val")


@pytest.mark.parametrize("loader", [datasets.load_burgers_npz, datasets.load_allen_cahn_mat,
                                    datasets.load_poisson_lshape, datasets.load_stokes])
def test_specific_loader_missing_path(tmp_path, loader):
    with pytest.raises(FileNotFoundError, match="nothere"):
        loader(tmp_path / "nothere.npz")


def test_specific_loader_wrong_arrays(tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, a=np.zeros(3))
    for loader in (datasets.load_burgers_npz, datasets.load_poisson_lshape, datasets.load_stokes):
        with pytest.raises(ValueError, match="other.npz"):
            loader(p)
    with pytest.raises(ValueError, match="other.npz"):
        datasets.load_antiderivative("train", path=p)

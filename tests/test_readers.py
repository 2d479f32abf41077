"""pinnlsr.readers: .npz, .mat and PINNacle/COMSOL .dat references, and load_reference's dispatch."""
from __future__ import annotations

import numpy as np
import pytest

from pinnlsr import readers
from pinnlsr.datasets import load_poisson_lshape, load_stokes
from pinnlsr.meshfiles import read_mesh_fields
from shared_data import reference_file


# --------------------------------------------------------------------------------------
# shared files
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,n,dim,k,outs",
    [
        ("burgers1d.dat", 101 * 11, 2, 1, ("u",)),
        ("poisson1_cg_data.dat", 1246, 2, 1, ("u",)),
        ("poisson_boltzmann2d.dat", 3236, 2, 1, ("u",)),
        ("lid_driven_a4.dat", 10201, 2, 3, ("u", "v", "p")),
        ("ns_0_obstacle.dat", 12910, 2, 3, ("u", "v", "p")),
    ],
)
def test_pinnacle_dat_shapes(name, n, dim, k, outs):
    ref = readers.load_reference(reference_file(f"pinnacle/{name}"))
    assert ref.points.shape == (n, dim) and ref.values.shape == (n, k)
    assert ref.output_names == outs
    ref.check(dim, k)


def test_pinnacle_burgers_layout():
    ref = readers.load_dat(reference_file("pinnacle/burgers1d.dat"))
    assert ref.input_names == ("x", "t")
    assert ref.grid_shape == (101, 11)
    x, t = ref.axes
    np.testing.assert_allclose(t, np.linspace(0, 1, 11), atol=1e-12)
    np.testing.assert_allclose(x, np.linspace(-1, 1, 101), atol=1e-12)
    u = ref.grid_values()[..., 0]
    np.testing.assert_allclose(u[:, 0], -np.sin(np.pi * x), atol=1e-5)  # COMSOL: ~3e-6 off
    np.testing.assert_allclose(u[[0, -1]], 0, atol=1e-6)


def test_lid_driven_a4_lid():
    ref = readers.load_dat(reference_file("pinnacle/lid_driven_a4.dat"))
    top = ref.points[:, 1] == 1
    assert top.sum() == 101
    x = ref.points[top, 0]
    # COMSOL export: lid matched to ~3e-4
    np.testing.assert_allclose(ref.output("u")[top], 4 * x * (1 - x), atol=1e-3)
    np.testing.assert_allclose(ref.output("v")[top], 0, atol=1e-3)


def test_heatinv_points():
    p = reference_file("pinnacle/heatinv_points.dat")
    pts = readers.load_points_dat(p)
    assert pts.shape == (2500, 3)
    ref = readers.load_reference(p, input_names=("x", "y", "t"))
    assert ref.points.shape == (2500, 3) and ref.values.shape == (2500, 0)
    assert np.array_equal(ref.points, pts)
    with pytest.raises(ValueError, match="heatinv_points.dat"):
        readers.load_dat(p)  # no header: cannot tell coordinates from outputs


def test_generic_loader_on_shared_npz():
    stokes = reference_file("deepxde/stokes.npz")
    ref = readers.load_reference(stokes)
    expected = load_stokes()
    assert np.array_equal(ref.points, expected.points) and np.array_equal(ref.values, expected.values)
    assert ref.grid_shape == (101, 101)
    lshape = reference_file("deepxde/Poisson_Lshape.npz")
    with pytest.raises(ValueError, match="drop_nonfinite"):
        readers.load_reference(lshape)
    assert readers.load_reference(lshape, drop_nonfinite=True).points.shape == load_poisson_lshape().points.shape
    with pytest.raises(ValueError, match="dim=3"):
        readers.load_reference(lshape, dim=3, drop_nonfinite=True)


# --------------------------------------------------------------------------------------
# synthetic .npz / .mat
# --------------------------------------------------------------------------------------
def test_npz_space_time_layouts(tmp_path):
    x, t = np.linspace(-1, 1, 4), np.linspace(0, 1, 3)
    u = np.add.outer(x, 10 * t)  # (n_x, n_t)
    np.savez(tmp_path / "a.npz", x=x[:, None], t=t[:, None], usol=u)
    np.savez(tmp_path / "b.npz", x=x, t=t, u=u.T)  # (n_t, n_x)
    for name in ("a.npz", "b.npz"):
        ref = readers.load_npz(tmp_path / name, output_names=["w"])
        assert ref.grid_shape == (4, 3) and ref.output_names == ("w",)
        np.testing.assert_array_equal(ref.values[:, 0], ref.points[:, 0] + 10 * ref.points[:, 1])
    np.savez(tmp_path / "square.npz", x=x, t=np.linspace(0, 1, 4), usol=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="time_axis"):
        readers.load_npz(tmp_path / "square.npz")
    assert readers.load_npz(tmp_path / "square.npz", time_axis=0).grid_shape == (4, 4)


def test_npz_points_values_pair_and_mat(tmp_path):
    import scipy.io

    pts = np.random.default_rng(0).random((7, 3))
    vals = np.column_stack([pts.sum(1), pts[:, 0]])
    np.savez(tmp_path / "pair.npz", X_test=pts, y_ref=vals)
    ref = readers.load_reference(tmp_path / "pair.npz")
    assert ref.input_names == ("x", "y", "z") and ref.output_names == ("u0", "u1")
    assert np.array_equal(ref.points, pts) and np.array_equal(ref.values, vals)
    scipy.io.savemat(tmp_path / "pair.mat", {"X": pts, "u": vals[:, :1]})
    assert readers.read_mat(tmp_path / "pair.mat").keys() == {"X", "u"}
    ref = readers.load_reference(tmp_path / "pair.mat", input_names=("a", "b", "c"))
    assert ref.input_names == ("a", "b", "c") and np.array_equal(ref.values[:, 0], vals[:, 0])
    np.savez(tmp_path / "onet.npz", X_branch=np.zeros((2, 3)), X_trunk=np.zeros((3, 1)), y=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="load_antiderivative"):
        readers.load_npz(tmp_path / "onet.npz")


def test_stokes_reference_layout():
    a = np.arange(27.0).reshape(9, 3)
    ref = readers.stokes_reference(a, "s.npz")
    assert ref.grid_shape == (3, 3) and ref.output_names == ("u", "v", "p")
    np.testing.assert_array_equal(ref.points[1], [0.0, 0.5])  # x-major, y fastest
    with pytest.raises(ValueError, match="s.npz: arr_0 has shape"):
        readers.stokes_reference(a[:8], "s.npz")


def test_npz_with_pickle_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="obj.npz"):
        readers.load_npz(p)


def test_npz_unknown_layout(tmp_path):
    p = tmp_path / "odd.npz"
    np.savez(p, foo=np.zeros(3))
    with pytest.raises(ValueError, match="odd.npz"):
        readers.load_reference(p)


# --------------------------------------------------------------------------------------
# synthetic .dat parsing
# --------------------------------------------------------------------------------------
def test_dat_time_dependent_multi_output(tmp_path):
    p = tmp_path / "td.dat"
    xs = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    times = [0.0, 0.5]
    cols = ["u (1) @ t=0", "v (m/s) @ t=0", "u (1) @ t=0.5", "v (m/s) @ t=0.5"]
    u = lambda x, y, t: x + 10 * y + 100 * t  # noqa: E731
    v = lambda x, y, t: -u(x, y, t)  # noqa: E731
    lines = ["% Model: synthetic", "% Dimension: 2", "% x" + " " * 24 + "y" + " " * 24 + "   ".join(cols)]
    for x, y in xs:
        row = [x, y, u(x, y, 0), v(x, y, 0), u(x, y, 0.5), v(x, y, 0.5)]
        lines.append("   ".join(repr(float(c)) for c in row))
    p.write_text("\n".join(lines) + "\n")
    ref = readers.load_dat(p)
    assert ref.input_names == ("x", "y", "t") and ref.output_names == ("u", "v")
    assert ref.points.shape == (6, 3) and ref.values.shape == (6, 2)
    # space-major, time fastest
    np.testing.assert_array_equal(ref.points[:2], [[0, 0, 0], [0, 0, 0.5]])
    for (x, y, t), (uu, vv) in zip(ref.points, ref.values):
        assert uu == u(x, y, t) and vv == v(x, y, t)
    assert set(times) == set(np.unique(ref.points[:, 2]))


def test_dat_steady_without_dimension_line(tmp_path):
    p = tmp_path / "s.dat"
    p.write_text("% X                       Y                        u (1)\n1 2 3\n4 5 6\n")
    ref = readers.load_dat(p)
    assert ref.input_names == ("x", "y") and ref.output_names == ("u",)
    np.testing.assert_array_equal(ref.values[:, 0], [3, 6])
    ref2 = readers.load_dat(p, input_names=("a", "b"), output_names=("w",))
    assert ref2.input_names == ("a", "b") and ref2.output_names == ("w",)


def test_garbage_text_dat(tmp_path):
    p = tmp_path / "words.dat"
    p.write_text("% x y u\nhello world foo\n")
    with pytest.raises(ValueError, match="words.dat"):
        readers.load_dat(p)


# --------------------------------------------------------------------------------------
# missing and damaged files, every suffix
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [readers.load_reference, readers.load_npz, readers.load_mat, readers.load_dat,
                                readers.load_points_dat, readers.read_npz, readers.read_mat, read_mesh_fields])
def test_missing_file(tmp_path, fn):
    p = tmp_path / "missing_file.npz"
    with pytest.raises(FileNotFoundError, match="missing_file"):
        fn(p)


@pytest.mark.parametrize("suffix", [".npz", ".mat", ".dat", ".vtu", ".xdmf", ".msh"])
def test_garbage_file(tmp_path, suffix):
    p = tmp_path / f"garbage{suffix}"
    p.write_bytes(b"\x00\x01 this is not data \xff\xfe" * 10)
    with pytest.raises(ValueError, match="garbage"):
        readers.load_reference(p)

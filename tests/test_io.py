"""Tests for pinnlsr.io: reference data loaders, interpolation, atomic writers."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from pinnlsr import io


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    try:
        return io.data_dir()
    except FileNotFoundError as exc:
        pytest.skip(f"shared reference data folder not available ({exc})")


def _file(data, rel):
    p = data / rel
    if not p.exists():
        pytest.skip(f"reference file {p} not available")
    return p


@pytest.fixture(scope="module")
def burgers(data):
    return io.load_burgers_npz(_file(data, "deepxde/Burgers.npz"))


# --------------------------------------------------------------------------------------
# data_dir
# --------------------------------------------------------------------------------------
def test_data_dir_explicit_and_env(tmp_path, monkeypatch):
    assert io.data_dir(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv(io.ENV_VAR, str(tmp_path))
    assert io.data_dir() == tmp_path.resolve()


def test_data_dir_missing_raises(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        io.data_dir(missing)
    monkeypatch.setenv(io.ENV_VAR, str(missing))
    with pytest.raises(FileNotFoundError, match="PINNLSR_DATA"):
        io.data_dir()


def test_data_dir_default_finds_shared(data):
    assert (data / "README.md").exists()


# --------------------------------------------------------------------------------------
# every shared file loads with the README shapes
# --------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("variant,shape", [("jaxpi", (512, 201)), ("deepxde", (201, 101))])
def test_allen_cahn(data, variant, shape):
    rel = {"jaxpi": "jaxpi/allen_cahn.mat", "deepxde": "deepxde/Allen_Cahn.mat"}[variant]
    _file(data, rel)
    ref = io.load_allen_cahn_mat(variant=variant)
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
        io.load_allen_cahn_mat(variant="nope")


def test_poisson_lshape(data):
    p = _file(data, "deepxde/Poisson_Lshape.npz")
    raw = np.load(p, allow_pickle=False)
    assert raw["X_test"].shape == (25921, 2) and raw["y_ref"].shape == (25921, 1)
    ref = io.load_poisson_lshape()
    # the 80x80 points of the removed quadrant carry NaN in the file and are dropped
    assert ref.points.shape == (25921 - 6400, 2) and ref.values.shape == (25921 - 6400, 1)
    assert not np.any((ref.points[:, 0] > 0) & (ref.points[:, 1] > 0))
    on_outer = np.isclose(np.abs(ref.points), 1).any(axis=1)
    np.testing.assert_allclose(ref.values[on_outer, 0], 0, atol=1e-12)
    with pytest.raises(ValueError, match="drop_nonfinite"):
        io.load_reference(p)
    assert io.load_reference(p, drop_nonfinite=True).points.shape == ref.points.shape


def test_stokes(data):
    _file(data, "deepxde/stokes.npz")
    ref = io.load_stokes()
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
    # same answer through the generic loader
    ref2 = io.load_reference(data / "deepxde/stokes.npz")
    assert np.array_equal(ref2.points, ref.points) and np.array_equal(ref2.values, ref.values)


@pytest.mark.parametrize("split,n", [("train", 150), ("test", 1000)])
def test_antiderivative(data, split, n):
    from scipy.integrate import cumulative_trapezoid

    _file(data, f"deeponet/antiderivative_aligned_{split}.npz")
    d = io.load_antiderivative(split)
    assert d.X_branch.shape == (n, 100) and d.X_trunk.shape == (100, 1) and d.y.shape == (n, 100)
    x = d.X_trunk[:, 0]
    c = cumulative_trapezoid(d.X_branch, x, axis=1, initial=0)
    # y comes from the continuous input function, not its 100 samples: ~0.9% rel. L2 apart
    assert np.linalg.norm(c - d.y) / np.linalg.norm(d.y) < 0.02
    assert np.abs(c - d.y).max() < 0.05
    np.testing.assert_allclose(d.y[:, 0], 0, atol=1e-12)


def test_antiderivative_bad_split():
    with pytest.raises(ValueError, match="split"):
        io.load_antiderivative("val")


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
def test_pinnacle_dat_shapes(data, name, n, dim, k, outs):
    ref = io.load_reference(_file(data, f"pinnacle/{name}"))
    assert ref.points.shape == (n, dim) and ref.values.shape == (n, k)
    assert ref.output_names == outs
    ref.check(dim, k)


def test_pinnacle_burgers_layout(data):
    ref = io.load_dat(_file(data, "pinnacle/burgers1d.dat"))
    assert ref.input_names == ("x", "t")
    assert ref.grid_shape == (101, 11)
    x, t = ref.axes
    np.testing.assert_allclose(t, np.linspace(0, 1, 11), atol=1e-12)
    np.testing.assert_allclose(x, np.linspace(-1, 1, 101), atol=1e-12)
    u = ref.grid_values()[..., 0]
    np.testing.assert_allclose(u[:, 0], -np.sin(np.pi * x), atol=1e-5)  # COMSOL: ~3e-6 off
    np.testing.assert_allclose(u[[0, -1]], 0, atol=1e-6)


def test_pinnacle_burgers_vs_spectral(data, burgers):
    ref = io.load_dat(_file(data, "pinnacle/burgers1d.dat"))
    u = io.interpolate(burgers, ref.points)  # t = 1 is clamped to the last snapshot t = 0.99
    err = np.linalg.norm(u - ref.values) / np.linalg.norm(ref.values)
    assert 0.005 < err < 0.05  # README: about 1.3 %


def test_lid_driven_a4_lid(data):
    ref = io.load_dat(_file(data, "pinnacle/lid_driven_a4.dat"))
    top = ref.points[:, 1] == 1
    assert top.sum() == 101
    x = ref.points[top, 0]
    # COMSOL export: lid matched to ~3e-4
    np.testing.assert_allclose(ref.output("u")[top], 4 * x * (1 - x), atol=1e-3)
    np.testing.assert_allclose(ref.output("v")[top], 0, atol=1e-3)


def test_heatinv_points(data):
    p = _file(data, "pinnacle/heatinv_points.dat")
    pts = io.load_points_dat(p)
    assert pts.shape == (2500, 3)
    ref = io.load_reference(p, input_names=("x", "y", "t"))
    assert ref.points.shape == (2500, 3) and ref.values.shape == (2500, 0)
    assert np.array_equal(ref.points, pts)
    with pytest.raises(ValueError, match="heatinv_points.dat"):
        io.load_dat(p)  # no header: cannot tell coordinates from outputs


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
    ref = io.load_dat(p)
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
    ref = io.load_dat(p)
    assert ref.input_names == ("x", "y") and ref.output_names == ("u",)
    np.testing.assert_array_equal(ref.values[:, 0], [3, 6])
    ref2 = io.load_dat(p, input_names=("a", "b"), output_names=("w",))
    assert ref2.input_names == ("a", "b") and ref2.output_names == ("w",)


# --------------------------------------------------------------------------------------
# interpolation
# --------------------------------------------------------------------------------------
def test_interpolate_grid_exact_and_linear():
    x = np.linspace(0, 1, 5)
    t = np.array([0.0, 0.3, 1.0])
    X, T = np.meshgrid(x, t, indexing="ij")
    pts = np.column_stack([X.ravel(), T.ravel()])
    vals = np.column_stack([np.sin(7 * pts[:, 0]) + pts[:, 1] ** 2, 2 * pts[:, 0] - pts[:, 1]])
    ref = io.ReferenceData(pts, vals, ("x", "t"), ("a", "b"))
    assert ref.grid_shape == (5, 3)
    assert np.array_equal(io.interpolate(ref, pts), vals)
    # the same grid in shuffled row order is still detected as a grid
    perm = np.random.default_rng(0).permutation(len(pts))
    ref_s = io.ReferenceData(pts[perm], vals[perm], ("x", "t"), ("a", "b"))
    assert ref_s.grid_shape is None
    q = np.array([[0.125, 0.15], [0.9, 0.65]])
    np.testing.assert_allclose(io.interpolate(ref_s, q)[:, 1], 2 * q[:, 0] - q[:, 1], atol=1e-14)
    np.testing.assert_allclose(io.interpolate(ref, q), io.interpolate(ref_s, q), atol=1e-14)
    # outside the box: clamped
    np.testing.assert_allclose(io.interpolate(ref, [[2.0, 1.0]]), vals[[-1]], atol=1e-14)


def test_interpolate_scattered_and_outside_hull():
    rng = np.random.default_rng(1)
    pts = rng.random((200, 2))
    vals = (1 + 2 * pts[:, 0] - 3 * pts[:, 1])[:, None]
    ref = io.ReferenceData(pts, vals, ("x", "y"), ("u",))
    assert ref.grid_shape is None
    assert np.array_equal(io.interpolate(ref, pts), vals)
    q = np.array([[0.5, 0.5], [0.3, 0.6]])
    np.testing.assert_allclose(io.interpolate(ref, q)[:, 0], 1 + 2 * q[:, 0] - 3 * q[:, 1], atol=1e-12)
    far = np.array([[5.0, 5.0]])
    nearest = np.argmin(((pts - far) ** 2).sum(1))
    np.testing.assert_array_equal(io.interpolate(ref, far), vals[[nearest]])


def test_interpolate_scattered_degenerate_3d_grid_with_notch():
    # grid points are co-spherical: Qhull leaves flat simplices, the domain is non-convex
    x = np.linspace(0, 1, 9)
    X, Y, T = np.meshgrid(x, x, x, indexing="ij")
    pts = np.column_stack([X.ravel(), Y.ravel(), T.ravel()])
    pts = pts[(pts[:, 0] < 0.5) | (pts[:, 1] < 0.5)]
    lin = lambda p: 1 + p[:, 0] - 2 * p[:, 1] + 3 * p[:, 2]  # noqa: E731
    ref = io.ReferenceData(pts, lin(pts), ("x", "y", "t"), ("u",))
    assert ref.grid_shape is None
    q = np.random.default_rng(4).uniform(0, 1, (3000, 3))
    q = q[(q[:, 0] <= 0.375) | (q[:, 1] <= 0.375)]  # inside the L-shaped prism (nodes x < 0.5)
    np.testing.assert_allclose(io.interpolate(ref, q)[:, 0], lin(q), atol=1e-12)
    assert np.array_equal(io.interpolate(ref, pts)[:, 0], lin(pts))


def test_interpolate_lshape_linear_field(data):
    _file(data, "deepxde/Poisson_Lshape.npz")
    ref = io.load_poisson_lshape()
    lin = lambda p: 0.5 + p[:, 0] - 3 * p[:, 1]  # noqa: E731
    ref = io.ReferenceData(ref.points, lin(ref.points), ("x", "y"), ("u",))
    q = np.random.default_rng(5).uniform(-1, 0, (2000, 2))
    f = io.make_interpolator(ref)
    np.testing.assert_allclose(f(q)[:, 0], lin(q), atol=1e-12)


def test_interpolate_1d_scattered_and_shape_error():
    pts = np.array([0.0, 1.0, 0.4, 2.0])
    ref = io.ReferenceData(pts[:, None], (3 * pts)[:, None] ** 1, ("x",), ("u",))
    np.testing.assert_allclose(io.interpolate(ref, np.array([[0.2], [1.5]]))[:, 0], [0.6, 4.5])
    with pytest.raises(ValueError, match="d=1"):
        io.interpolate(ref, np.zeros((3, 2)))


# --------------------------------------------------------------------------------------
# meshio writers / readers
# --------------------------------------------------------------------------------------
def test_vtu_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    pts = rng.random((17, 2))
    fields = {"u": rng.standard_normal(17), "vel": rng.standard_normal((17, 2))}
    p = io.write_vtu(tmp_path / "out.vtu", pts, fields)
    assert sorted(os.listdir(tmp_path)) == ["out.vtu"]
    pts3, back = io.read_mesh_fields(p)
    assert pts3.shape == (17, 3)
    assert np.array_equal(pts3[:, :2], pts) and not pts3[:, 2].any()
    assert set(back) == {"u", "vel"}
    assert np.array_equal(back["u"], fields["u"]) and np.array_equal(back["vel"], fields["vel"])
    ref = io.load_reference(p)
    assert ref.input_names == ("x", "y") and ref.output_names == ("u", "vel_0", "vel_1")
    assert np.array_equal(ref.points, pts)
    assert io.load_reference(p, output_names=["vel"]).values.shape == (17, 2)


def test_xdmf_timeseries_round_trip(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # meshio 5.3 would drop the .h5 here
    out = tmp_path / "res"
    rng = np.random.default_rng(3)
    pts = rng.random((9, 2))
    times = np.array([0.0, 0.25, 1.0])
    fields = {"u": rng.standard_normal((3, 9)), "w": rng.standard_normal((3, 9, 2))}
    p = io.write_xdmf_timeseries(out / "ts.xdmf", pts, times, fields)
    assert sorted(os.listdir(out)) == ["ts.h5", "ts.xdmf"]
    assert os.listdir(cwd) == []
    pts3, t, back = io.read_xdmf_timeseries(p)
    assert np.array_equal(pts3[:, :2], pts) and np.array_equal(t, times)
    assert np.array_equal(back["u"], fields["u"]) and np.array_equal(back["w"], fields["w"])
    ref = io.load_reference(p, output_names=["u"])
    assert ref.input_names == ("x", "y", "t") and ref.points.shape == (27, 3)
    np.testing.assert_array_equal(ref.values[:, 0], fields["u"].T.ravel())  # space-major
    # overwrite in place
    io.write_xdmf_timeseries(p, pts, times[:2], {"u": fields["u"][:2]})
    assert io.read_xdmf_timeseries(p)[1].size == 2


def test_mesh_reference_interpolation(tmp_path):
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    tri = np.array([[0, 1, 2], [0, 2, 3]])
    f = 1.0 + 2.0 * pts[:, 0] + 3.0 * pts[:, 1] ** 2  # nodal values (not linear in y)
    p = io.write_vtu(tmp_path / "m.vtu", pts, {"f": f}, cells={"triangle": tri})
    ref = io.load_reference(p, dim=2)
    ref.check(2, 1)
    assert np.array_equal(io.interpolate(ref, pts)[:, 0], f)
    mid = np.array([[0.5, 0.0], [0.0, 0.5], [1.0, 0.5]])
    expect = np.array([(f[0] + f[1]) / 2, (f[0] + f[3]) / 2, (f[1] + f[2]) / 2])
    np.testing.assert_allclose(io.interpolate(ref, mid)[:, 0], expect, rtol=1e-14)


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [io.load_reference, io.load_npz, io.load_mat, io.load_dat,
                                io.read_mesh_fields, io.load_points_dat])
def test_missing_file(tmp_path, fn):
    p = tmp_path / "missing_file.npz"
    with pytest.raises(FileNotFoundError, match="missing_file"):
        fn(p)


def test_specific_loader_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        io.load_burgers_npz(tmp_path / "nothere.npz")


@pytest.mark.parametrize("suffix", [".npz", ".mat", ".dat", ".vtu", ".xdmf", ".msh"])
def test_garbage_file(tmp_path, suffix):
    p = tmp_path / f"garbage{suffix}"
    p.write_bytes(b"\x00\x01 this is not data \xff\xfe" * 10)
    with pytest.raises(ValueError, match="garbage"):
        io.load_reference(p)


def test_garbage_text_dat(tmp_path):
    p = tmp_path / "words.dat"
    p.write_text("% x y u\nhello world foo\n")
    with pytest.raises(ValueError, match="words.dat"):
        io.load_dat(p)


def test_npz_with_pickle_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="obj.npz"):
        io.load_npz(p)


def test_npz_unknown_layout(tmp_path):
    p = tmp_path / "odd.npz"
    np.savez(p, foo=np.zeros(3))
    with pytest.raises(ValueError, match="odd.npz"):
        io.load_reference(p)


def test_check_mismatch(burgers):
    with pytest.raises(ValueError, match="Burgers.npz"):
        burgers.check(3, 1)
    with pytest.raises(ValueError, match="output"):
        burgers.check(2, 2)


def test_nan_rejected_at_construction():
    with pytest.raises(ValueError, match="mine.dat"):
        io.ReferenceData(np.zeros((3, 2)), np.array([1.0, np.nan, 2.0]), ("x", "y"), ("u",), "mine.dat")
    with pytest.raises(ValueError, match="names"):
        io.ReferenceData(np.zeros((3, 2)), np.zeros(3), ("x",), ("u",))


# --------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------
def test_atomic_json_numpy(tmp_path):
    p = io.atomic_write_json(tmp_path / "a.json",
                             {"n": np.int64(3), "x": np.float32(0.5), "arr": np.arange(3), "p": pathlib.Path("q")})
    text = p.read_text()
    assert json.loads(text) == {"n": 3, "x": 0.5, "arr": [0, 1, 2], "p": "q"}
    assert '\n  "n": 3' in text  # indent=2


def test_atomic_json_failure_keeps_original(tmp_path, monkeypatch):
    p = tmp_path / "a.json"
    io.atomic_write_json(p, {"v": 1})
    before = p.read_text()

    def boom(*a, **k):
        raise RuntimeError("serialisation failed")

    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(RuntimeError):
        io.atomic_write_json(p, {"v": 2})
    assert p.read_text() == before
    assert os.listdir(tmp_path) == ["a.json"]


def test_atomic_text_replace_failure_keeps_original(tmp_path, monkeypatch):
    p = tmp_path / "a.txt"
    io.atomic_write_text(p, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(OSError):
        io.atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]  # no temporary files left behind


def test_vtu_write_failure_keeps_original(tmp_path, monkeypatch):
    import meshio

    p = io.write_vtu(tmp_path / "k.vtu", np.zeros((2, 2)), {"u": np.array([1.0, 2.0])})
    before = p.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(meshio, "write", boom)
    with pytest.raises(RuntimeError):
        io.write_vtu(p, np.ones((2, 2)), {"u": np.array([3.0, 4.0])})
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["k.vtu"]


def test_xdmf_write_failure_keeps_original(tmp_path, monkeypatch):
    p = io.write_xdmf_timeseries(tmp_path / "s.xdmf", np.zeros((2, 1)), [0.0], {"u": np.ones((1, 2))})
    before = (p.read_bytes(), p.with_suffix(".h5").read_bytes())
    with pytest.raises(ValueError, match="s.xdmf"):
        io.write_xdmf_timeseries(p, np.zeros((2, 1)), [0.0, 1.0], {"u": np.ones((1, 2))})  # bad shape
    real_replace = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        raise OSError("interrupted")

    monkeypatch.setattr(io.os, "replace", flaky)
    with pytest.raises(OSError):
        io.write_xdmf_timeseries(p, np.ones((2, 1)), [0.0], {"u": np.zeros((1, 2))})
    monkeypatch.setattr(io.os, "replace", real_replace)
    assert calls
    assert (p.read_bytes(), p.with_suffix(".h5").read_bytes()) == before
    assert sorted(os.listdir(tmp_path)) == ["s.h5", "s.xdmf"]


def test_atomic_writes_make_ordinarily_readable_files(tmp_path):
    import os
    import stat

    from pinnlsr.io import atomic_write_json

    path = atomic_write_json(tmp_path / "m.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask

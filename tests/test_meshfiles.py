"""pinnlsr.meshfiles: VTU and XDMF time series written and read back, mesh references, atomic replacement."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pinnlsr import meshfiles
from pinnlsr.interpolation import interpolate
from pinnlsr.readers import load_reference


def test_vtu_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    pts = rng.random((17, 2))
    fields = {"u": rng.standard_normal(17), "vel": rng.standard_normal((17, 2))}
    p = meshfiles.write_vtu(tmp_path / "out.vtu", pts, fields)
    assert sorted(os.listdir(tmp_path)) == ["out.vtu"]
    pts3, back = meshfiles.read_mesh_fields(p)
    assert pts3.shape == (17, 3)
    assert np.array_equal(pts3[:, :2], pts) and not pts3[:, 2].any()
    assert set(back) == {"u", "vel"}
    assert np.array_equal(back["u"], fields["u"]) and np.array_equal(back["vel"], fields["vel"])
    ref = meshfiles.load_mesh(p)
    assert ref.input_names == ("x", "y") and ref.output_names == ("u", "vel_0", "vel_1")
    assert np.array_equal(ref.points, pts)
    assert np.array_equal(ref.values, np.column_stack([fields["u"], fields["vel"]]))
    assert meshfiles.load_mesh(p, output_names=["vel"]).values.shape == (17, 2)
    assert meshfiles.load_mesh(p, dim=3).points.shape == (17, 3)  # keeps the zero z column
    with pytest.raises(ValueError, match="no point field 'w'"):
        meshfiles.load_mesh(p, output_names=["w"])


def test_load_mesh_keeps_nonzero_coordinates(tmp_path):
    pts = np.random.default_rng(6).random((5, 3))
    p = meshfiles.write_vtu(tmp_path / "c.vtu", pts, {"u": pts[:, 0]})
    assert meshfiles.load_mesh(p).points.shape == (5, 3)
    with pytest.raises(ValueError, match="not all zero"):
        meshfiles.load_mesh(p, dim=2)


def test_xdmf_timeseries_round_trip(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # meshio 5.3 would drop the .h5 here
    out = tmp_path / "res"
    rng = np.random.default_rng(3)
    pts = rng.random((9, 2))
    times = np.array([0.0, 0.25, 1.0])
    fields = {"u": rng.standard_normal((3, 9)), "w": rng.standard_normal((3, 9, 2))}
    p = meshfiles.write_xdmf_timeseries(out / "ts.xdmf", pts, times, fields)
    assert sorted(os.listdir(out)) == ["ts.h5", "ts.xdmf"]
    assert os.listdir(cwd) == []
    pts3, t, back = meshfiles.read_xdmf_timeseries(p)
    assert np.array_equal(pts3[:, :2], pts) and np.array_equal(t, times)
    assert np.array_equal(back["u"], fields["u"]) and np.array_equal(back["w"], fields["w"])
    ref = load_reference(p, output_names=["u"])
    assert ref.input_names == ("x", "y", "t") and ref.points.shape == (27, 3)
    np.testing.assert_array_equal(ref.values[:, 0], fields["u"].T.ravel())  # space-major
    # overwrite in place
    meshfiles.write_xdmf_timeseries(p, pts, times[:2], {"u": fields["u"][:2]})
    assert meshfiles.read_xdmf_timeseries(p)[1].size == 2


def test_xdmf_needs_its_h5(tmp_path):
    p = meshfiles.write_xdmf_timeseries(tmp_path / "a.xdmf", np.zeros((2, 1)), [0.0], {"u": np.ones((1, 2))})
    p.with_suffix(".h5").unlink()
    with pytest.raises(FileNotFoundError, match="a.xdmf"):
        meshfiles.read_xdmf_timeseries(p)
    with pytest.raises(ValueError, match="b.vtu"):
        meshfiles.write_xdmf_timeseries(tmp_path / "b.vtu", np.zeros((2, 1)), [0.0], {"u": np.ones((1, 2))})


def test_mesh_reference_interpolation(tmp_path):
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    tri = np.array([[0, 1, 2], [0, 2, 3]])
    f = 1.0 + 2.0 * pts[:, 0] + 3.0 * pts[:, 1] ** 2  # nodal values (not linear in y)
    p = meshfiles.write_vtu(tmp_path / "m.vtu", pts, {"f": f}, cells={"triangle": tri})
    ref = load_reference(p, dim=2)
    ref.check(2, 1)
    assert np.array_equal(interpolate(ref, pts)[:, 0], f)
    mid = np.array([[0.5, 0.0], [0.0, 0.5], [1.0, 0.5]])
    expect = np.array([(f[0] + f[1]) / 2, (f[0] + f[3]) / 2, (f[1] + f[2]) / 2])
    np.testing.assert_allclose(interpolate(ref, mid)[:, 0], expect, rtol=1e-14)


def test_write_vtu_bad_field_shape(tmp_path):
    with pytest.raises(ValueError, match="field 'u'"):
        meshfiles.write_vtu(tmp_path / "bad.vtu", np.zeros((3, 2)), {"u": np.zeros(4)})
    with pytest.raises(ValueError, match="points must be"):
        meshfiles.write_vtu(tmp_path / "bad.vtu", np.zeros((3, 4)))
    assert os.listdir(tmp_path) == []


def test_vtu_write_failure_keeps_original(tmp_path, monkeypatch):
    import meshio

    p = meshfiles.write_vtu(tmp_path / "k.vtu", np.zeros((2, 2)), {"u": np.array([1.0, 2.0])})
    before = p.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(meshio, "write", boom)
    with pytest.raises(RuntimeError):
        meshfiles.write_vtu(p, np.ones((2, 2)), {"u": np.array([3.0, 4.0])})
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["k.vtu"]


def test_xdmf_write_failure_keeps_original(tmp_path, monkeypatch):
    p = meshfiles.write_xdmf_timeseries(tmp_path / "s.xdmf", np.zeros((2, 1)), [0.0], {"u": np.ones((1, 2))})
    before = (p.read_bytes(), p.with_suffix(".h5").read_bytes())
    with pytest.raises(ValueError, match="s.xdmf"):
        meshfiles.write_xdmf_timeseries(p, np.zeros((2, 1)), [0.0, 1.0], {"u": np.ones((1, 2))})  # bad shape
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        raise OSError("interrupted")

    monkeypatch.setattr(meshfiles.os, "replace", flaky)
    with pytest.raises(OSError):
        meshfiles.write_xdmf_timeseries(p, np.ones((2, 1)), [0.0], {"u": np.zeros((1, 2))})
    monkeypatch.undo()
    assert calls
    assert (p.read_bytes(), p.with_suffix(".h5").read_bytes()) == before
    assert sorted(os.listdir(tmp_path)) == ["s.h5", "s.xdmf"]

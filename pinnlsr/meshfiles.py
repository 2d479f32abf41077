"""Mesh files through meshio: read point fields of any meshio format (``.vtu``, ``.msh``, ...) and
XDMF time series as reference data, and write VTU files and XDMF + HDF5 time series for ParaView.

The writers write to temporary files in the destination folder and ``os.replace`` them into
place, so an interrupted write never destroys an existing file.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from .datafolder import existing_file
from .io import write_atomically
from .reference import ReferenceData, renamed

__all__ = ["load_mesh", "read_mesh_fields", "read_xdmf_timeseries", "write_vtu", "write_xdmf_timeseries"]


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
def _trim_points(points: np.ndarray, dim: int | None, src: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 1:
        points = points[:, None]
    if dim is not None:
        if dim > points.shape[1]:
            raise ValueError(f"{src}: {dim} coordinates requested, the mesh has {points.shape[1]}")
        extra = points[:, dim:]
        if extra.size and np.any(extra != 0):
            raise ValueError(
                f"{src}: cannot drop coordinate columns {list(range(dim, points.shape[1]))} to get "
                f"dim={dim}: they are not all zero"
            )
        return np.ascontiguousarray(points[:, :dim])
    d = points.shape[1]
    while d > 1 and not np.any(points[:, d - 1] != 0):
        d -= 1
    return np.ascontiguousarray(points[:, :d])


def _field_columns(fields: Mapping[str, np.ndarray], n: int, src: str, output_names=None):
    cols, names = [], []
    for name, arr in fields.items():
        a = np.asarray(arr)
        if a.shape[0] != n:
            continue
        a = a.reshape(n, -1)
        if a.shape[1] == 1:
            cols.append(a[:, 0]); names.append(name)
        else:
            for i in range(a.shape[1]):
                cols.append(a[:, i]); names.append(f"{name}_{i}")
    if output_names is not None:
        sel_cols, sel_names = [], []
        for want in output_names:
            if want in names:
                sel_cols.append(cols[names.index(want)]); sel_names.append(want)
                continue
            sub = [i for i, nm in enumerate(names) if nm.startswith(f"{want}_") and want in fields]
            if not sub:
                raise ValueError(f"{src}: no point field {want!r}; fields are {list(fields)}")
            for i in sub:
                sel_cols.append(cols[i]); sel_names.append(names[i])
        cols, names = sel_cols, sel_names
    vals = np.column_stack(cols).astype(np.float64) if cols else np.zeros((n, 0))
    return vals, tuple(names)


def read_mesh_fields(path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read any meshio format: ``(points (N, 3 or 2), {name: (N,) or (N, k) point field})``."""
    import meshio

    p = existing_file(path)
    try:
        mesh = meshio.read(str(p))
    # meshio.ReadError, KeyError for unknown suffixes, parse errors; meshio 5.3 calls
    # sys.exit(1) when the reader for the suffix fails, so SystemExit is caught as well
    except (Exception, SystemExit) as exc:
        raise ValueError(
            f"cannot read {str(p)!r} with meshio ({type(exc).__name__}: {exc}); check the file "
            "and its extension (.vtu, .xdmf, .msh, ...)"
        ) from None
    return np.asarray(mesh.points), {k: np.asarray(v) for k, v in mesh.point_data.items()}


def _is_xdmf_timeseries(p: pathlib.Path) -> bool:
    try:
        head = p.read_bytes()[:200_000]
    except OSError:
        return False
    return b"Temporal" in head and b"Collection" in head


def read_xdmf_timeseries(path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Read an XDMF time series: ``(points (N, 3), times (T,), {name: (T, N) or (T, N, k)})``."""
    import meshio

    p = existing_file(path)
    try:
        with meshio.xdmf.TimeSeriesReader(str(p)) as reader:
            points, _ = reader.read_points_cells()
            times, frames = [], []
            for k in range(reader.num_steps):
                t, pd, _ = reader.read_data(k)
                times.append(t)
                frames.append({n: np.asarray(v) for n, v in pd.items()})
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{str(p)!r}: missing HDF5 sidecar ({exc}); keep the .h5 next to the .xdmf") from None
    except Exception as exc:
        raise ValueError(f"cannot read {str(p)!r} as an XDMF time series ({type(exc).__name__}: {exc})") from None
    names = list(frames[0]) if frames else []
    fields = {}
    for n in names:
        try:
            fields[n] = np.stack([f[n] for f in frames])
        except (KeyError, ValueError):
            raise ValueError(f"{str(p)!r}: field {n!r} is not present with one shape at every time step") from None
    return np.asarray(points), np.asarray(times, dtype=np.float64), fields


def load_mesh(path, input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
              dim: int | None = None) -> ReferenceData:
    """Reference from a meshio-readable file: mesh points and point data.

    ``dim`` keeps that many coordinates (the dropped ones must be zero); without it, trailing
    all-zero coordinate columns (z of a planar mesh) are dropped. Vector fields ``(N, k)`` give
    outputs ``name_0..name_{k-1}``; ``output_names`` selects fields. An XDMF time series gives
    space-time points with time last (space-major, time fastest; ``dim`` counts space only).
    """
    p = existing_file(path)
    src = str(p)
    if p.suffix.lower() in (".xdmf", ".xmf") and _is_xdmf_timeseries(p):
        pts3, times, fields = read_xdmf_timeseries(p)
        space = _trim_points(pts3, dim, src)
        n_s, n_t = space.shape[0], times.size
        # (T, N, ...) -> (N, T, ...) -> rows space-major, time fastest
        flat = {n: np.swapaxes(a, 0, 1).reshape(n_s * n_t, -1) for n, a in fields.items()}
        vals, names = _field_columns(flat, n_s * n_t, src, output_names)
        pts = np.column_stack([np.repeat(space, n_t, axis=0), np.tile(times, n_s)])
        ins = tuple(("x", "y", "z")[: space.shape[1]]) + ("t",)
        return ReferenceData(pts, vals, renamed(ins, input_names, "input", src), names, src)
    pts3, fields = read_mesh_fields(p)
    pts = _trim_points(pts3, dim if dim is not None else (len(input_names) if input_names else None), src)
    vals, names = _field_columns(fields, pts.shape[0], src, output_names)
    ins = tuple(("x", "y", "z")[: pts.shape[1]])
    return ReferenceData(pts, vals, renamed(ins, input_names, "input", src), names, src)


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
def _pad3(points: Any, src: str) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1:
        pts = pts[:, None]
    if pts.ndim != 2 or not 1 <= pts.shape[1] <= 3:
        raise ValueError(f"{src}: points must be (N, 1..3), got shape {pts.shape}")
    if pts.shape[1] < 3:
        pts = np.hstack([pts, np.zeros((pts.shape[0], 3 - pts.shape[1]))])
    return np.ascontiguousarray(pts)


def _cells(cells, n: int) -> list:
    """meshio cells as a list of ``(type, array)``; ``None``: one ``vertex`` cell per point."""
    if cells is None:
        return [("vertex", np.arange(n, dtype=np.int64).reshape(-1, 1))]
    return list(cells.items()) if isinstance(cells, Mapping) else cells


def write_vtu(path, points: np.ndarray, fields: Mapping[str, np.ndarray] | None = None,
              cells=None) -> pathlib.Path:
    """Write a VTU file (atomically) with point fields.

    Args:
        points: ``(N, d)``, d <= 3 (padded with zeros to 3-D).
        fields: ``{name: (N,) or (N, k)}`` point data.
        cells: meshio cells (``{"triangle": (C, 3)}`` or list of ``(type, array)``); ``None``
            writes one ``vertex`` cell per point so ParaView shows the points.
    """
    import meshio

    dest = pathlib.Path(path)
    pts = _pad3(points, str(dest))
    n = pts.shape[0]
    pd = {}
    for name, arr in (fields or {}).items():
        a = np.asarray(arr)
        if a.ndim == 0 or a.shape[0] != n or a.ndim > 2:
            raise ValueError(f"{dest}: field {name!r} has shape {a.shape}, expected ({n},) or ({n}, k)")
        pd[str(name)] = a
    mesh = meshio.Mesh(pts, _cells(cells, n), point_data=pd)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(dest, lambda tmp: meshio.write(tmp, mesh, file_format="vtu"), ".tmp.vtu")


def write_xdmf_timeseries(path, points_space: np.ndarray, times: np.ndarray,
                          fields: Mapping[str, np.ndarray], cells=None) -> pathlib.Path:
    """Write an XDMF + HDF5 time series (atomically, both files).

    Args:
        path: ``.xdmf`` file; the data go to ``<stem>.h5`` next to it.
        points_space: ``(N, ds)``, ds <= 3 (padded with zeros to 3-D).
        times: ``(T,)``.
        fields: ``{name: (T, N) or (T, N, k)}``.
        cells: as in :func:`write_vtu` (``None``: vertex cells).

    meshio 5.3's ``TimeSeriesWriter`` creates the ``.h5`` in the current working directory;
    here it is created next to the ``.xdmf`` in a temporary folder, then both are moved
    into place with ``os.replace`` (``.h5`` first).
    """
    import meshio

    dest = pathlib.Path(path)
    if dest.suffix.lower() not in (".xdmf", ".xmf"):
        raise ValueError(f"{dest}: an XDMF time series needs a .xdmf file name")
    pts = _pad3(points_space, str(dest))
    n = pts.shape[0]
    tt = np.asarray(times, dtype=np.float64).ravel()
    data = {}
    for name, arr in fields.items():
        a = np.asarray(arr)
        if a.ndim not in (2, 3) or a.shape[:2] != (tt.size, n):
            raise ValueError(
                f"{dest}: field {name!r} has shape {a.shape}, expected ({tt.size}, {n}) or ({tt.size}, {n}, k)"
            )
        data[str(name)] = a
    cells = _cells(cells, n)

    class _Writer(meshio.xdmf.TimeSeriesWriter):
        def __enter__(self):  # put the .h5 next to the .xdmf, not in the cwd
            import h5py

            self.h5_filename = str(self.filename.with_suffix(".h5"))
            self.h5_file = h5py.File(self.h5_filename, "w")
            return self

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        tmp_xdmf = tmpdir / dest.name
        with _Writer(tmp_xdmf) as w:
            w.write_points_cells(pts, cells)
            for i, t in enumerate(tt):
                w.write_data(float(t), point_data={nm: a[i] for nm, a in data.items()})
        os.replace(tmp_xdmf.with_suffix(".h5"), dest.with_suffix(".h5"))
        os.replace(tmp_xdmf, dest)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return dest

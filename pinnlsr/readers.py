"""Reference files: ``.npz``, ``.mat`` and PINNacle/COMSOL ``.dat`` text exports, and
:func:`load_reference`, which dispatches on the suffix (meshio formats go to :mod:`pinnlsr.meshfiles`).

Loading is safe: ``np.load(..., allow_pickle=False)`` and ``scipy.io.loadmat``; a missing file
raises ``FileNotFoundError`` and an unreadable one ``ValueError``, both naming the file. The
layout of the returned :class:`~pinnlsr.reference.ReferenceData` is described in
:mod:`pinnlsr.reference`.
"""

from __future__ import annotations

import math
import pathlib
import re
from typing import Sequence

import numpy as np

from .datafolder import existing_file
from .meshfiles import load_mesh
from .reference import ReferenceData, finite_rows, renamed, space_time_grid

__all__ = ["load_dat", "load_mat", "load_npz", "load_points_dat", "load_reference", "read_mat", "read_npz",
           "stokes_reference"]


# --------------------------------------------------------------------------------------
# npz / mat
# --------------------------------------------------------------------------------------
def read_npz(path) -> dict[str, np.ndarray]:
    """``{name: array}`` of an ``.npz`` archive, read with ``allow_pickle=False``."""
    p = existing_file(path)
    try:
        with np.load(p, allow_pickle=False) as d:
            if not hasattr(d, "files"):
                raise ValueError("not an .npz archive")
            return {k: np.asarray(d[k]) for k in d.files}
    except FileNotFoundError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, OSError, pickle refusal, ...
        raise ValueError(
            f"cannot read {str(p)!r} as a numpy .npz archive ({type(exc).__name__}: {exc}); "
            "the file is damaged or not an npz (object arrays/pickles are refused)"
        ) from None


def read_mat(path) -> dict[str, np.ndarray]:
    """``{name: array}`` of a MATLAB v5/v7 ``.mat`` file (``scipy.io.loadmat``, no ``__`` headers)."""
    import scipy.io

    p = existing_file(path)
    try:
        d = scipy.io.loadmat(str(p))
    except NotImplementedError as exc:  # MATLAB v7.3 = HDF5
        raise ValueError(
            f"cannot read {str(p)!r}: {exc}; MATLAB v7.3 files are HDF5, re-save with "
            "save(..., '-v7') or read them with h5py"
        ) from None
    except Exception as exc:
        raise ValueError(
            f"cannot read {str(p)!r} as a MATLAB .mat file ({type(exc).__name__}: {exc})"
        ) from None
    return {k: v for k, v in d.items() if not k.startswith("__")}


_SOLUTION_KEYS = ("usol", "u", "uu", "Exact", "exact", "U", "sol")
_PAIR_KEYS = (("X_test", "y_ref"), ("X_test", "y_test"), ("X_star", "u_star"), ("points", "values"),
              ("X", "y"), ("X", "u"))


def _from_arrays(d: dict[str, np.ndarray], p: pathlib.Path, input_names, output_names,
                 time_axis: int | None, drop_nonfinite: bool = False) -> ReferenceData:
    src = str(p)
    keys = sorted(d)
    # 1) space-time grid: x, t and a 2-D solution
    if "x" in d and "t" in d:
        sol_key = next((k for k in _SOLUTION_KEYS if k in d and np.ndim(d[k]) == 2), None)
        if sol_key is not None:
            x, t, u = np.ravel(d["x"]), np.ravel(d["t"]), np.asarray(d[sol_key])
            if time_axis is None:
                if x.size == t.size:
                    raise ValueError(
                        f"{src}: n_x == n_t = {x.size}, cannot tell the layout of {sol_key!r}; "
                        "pass time_axis=0 or 1"
                    )
                if u.shape == (t.size, x.size):
                    time_axis = 0
                elif u.shape == (x.size, t.size):
                    time_axis = 1
                else:
                    raise ValueError(
                        f"{src}: {sol_key!r} has shape {u.shape}, expected ({x.size}, {t.size}) "
                        f"or ({t.size}, {x.size}) from x and t"
                    )
            if time_axis == 0:
                u = u.T
            ref = space_time_grid(x, t, u, src)
            ref.input_names = renamed(ref.input_names, input_names, "input", src)
            ref.output_names = renamed(ref.output_names, output_names, "output", src)
            return ref
    # 2) scattered points/values pairs
    for kp, kv in _PAIR_KEYS:
        if kp in d and kv in d:
            pts, vals = np.asarray(d[kp]), np.asarray(d[kv])
            pts2 = pts if pts.ndim == 2 else pts.reshape(len(pts), -1)
            vals2 = vals if vals.ndim == 2 else vals.reshape(len(vals), -1)
            if drop_nonfinite:
                pts2, vals2 = finite_rows(pts2, vals2)
            d_in, k = pts2.shape[1], vals2.shape[1]
            ins = tuple(("x", "y", "z")[:d_in]) if d_in <= 3 else tuple(f"x{i}" for i in range(d_in))
            outs = ("u",) if k == 1 else tuple(f"u{i}" for i in range(k))
            return ReferenceData(pts2, vals2, renamed(ins, input_names, "input", src),
                                 renamed(outs, output_names, "output", src), src)
    if {"X_branch", "X_trunk", "y"} <= set(d):
        raise ValueError(f"{src}: DeepONet data (X_branch, X_trunk, y); use pinnlsr.datasets.load_antiderivative()")
    if keys == ["arr_0"] and "stokes" in p.name.lower():
        return stokes_reference(d["arr_0"], src, input_names, output_names)
    raise ValueError(
        f"{src}: unrecognised array layout (keys {keys}); expected x, t and a solution "
        f"({'/'.join(_SOLUTION_KEYS)}), or a points/values pair such as X_test/y_ref; "
        "use a specific loader (pinnlsr.datasets.load_stokes, load_antiderivative, ...)"
    )


def load_npz(path, input_names: Sequence[str] | None = None,
             output_names: Sequence[str] | None = None, time_axis: int | None = None,
             drop_nonfinite: bool = False) -> ReferenceData:
    """Load a reference ``.npz`` (``allow_pickle=False``).

    Recognised layouts: ``x (n_x,[1])``, ``t (n_t,[1])`` and a 2-D solution ``usol``/``u``/...
    (``(n_x, n_t)`` or ``(n_t, n_x)``; ``time_axis`` resolves n_x == n_t) -> space-time grid
    ``(n_x*n_t, 2)``; or a points/values pair (``X_test``/``y_ref``, ``X``/``y``, ...) ->
    ``(N, d)``/``(N, k)``; a file named ``*stokes*`` with a single ``arr_0`` -> :func:`stokes_reference`.
    ``drop_nonfinite`` drops points/values rows containing NaN/Inf (scattered layouts only).
    """
    p = pathlib.Path(path)
    return _from_arrays(read_npz(p), p, input_names, output_names, time_axis, drop_nonfinite)


def load_mat(path, input_names: Sequence[str] | None = None,
             output_names: Sequence[str] | None = None, time_axis: int | None = None,
             drop_nonfinite: bool = False) -> ReferenceData:
    """Load a MATLAB ``.mat`` (v5/v7) reference with the same layouts as :func:`load_npz`."""
    p = pathlib.Path(path)
    return _from_arrays(read_mat(p), p, input_names, output_names, time_axis, drop_nonfinite)


def stokes_reference(arr_0: np.ndarray, source: str, input_names: Sequence[str] | None = None,
                     output_names: Sequence[str] | None = None) -> ReferenceData:
    """Grid data from DeepXDE's coordinate-free ``stokes.npz`` layout: ``arr_0 (n*n, 3)`` = u, v, p
    on [0,1]^2.

    The coordinates are reconstructed as ``x = s[r // n]``, ``y = s[r % n]`` with
    ``s = linspace(0, 1, n)`` (x-major, y fastest), which is the ordering for which the data
    satisfy the lid condition u = x(1-x) at y = 1 (to ~1e-16), u = v = 0 on the other walls
    and v > 0 near x = 0 / v < 0 near x = 1 under the lid (flow turning with the lid).
    Returns a grid ``(n, n)`` with ``axes = (s, s)``.
    """
    a = np.asarray(arr_0, dtype=np.float64)
    n = int(round(math.sqrt(a.shape[0]))) if a.ndim == 2 else -1
    if a.ndim != 2 or a.shape[1] != 3 or n * n != a.shape[0]:
        raise ValueError(f"{source}: arr_0 has shape {a.shape}, expected (n*n, 3) with columns u, v, p")
    s = np.linspace(0.0, 1.0, n)
    X, Y = np.meshgrid(s, s, indexing="ij")
    pts = np.column_stack([X.ravel(), Y.ravel()])
    return ReferenceData(pts, a, renamed(("x", "y"), input_names, "input", source),
                         renamed(("u", "v", "p"), output_names, "output", source), source, (n, n), (s, s))


# --------------------------------------------------------------------------------------
# PINNacle / COMSOL text exports
# --------------------------------------------------------------------------------------
_TIME_TAG = re.compile(r"^(?P<name>.*?)\s*@\s*t\s*=\s*(?P<t>\S+)\s*$")
_COORDS = {"x", "y", "z", "t"}


def _clean_name(name: str) -> str:
    name = re.sub(r"\s*@.*$", "", name.strip())      # drop "@ Re=100" style tags
    name = re.sub(r"\s*\([^()]*\)\s*$", "", name)    # drop units "(1)", "(m/s)"
    name = name.strip()
    return name.lower() if name.lower() in _COORDS else name


def _read_text_table(path) -> tuple[list[str], dict[str, str], np.ndarray]:
    """(comment lines, ``% key: value`` metadata, numeric table (rows, cols))."""
    p = existing_file(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {str(p)!r}: {exc}") from None
    if b"\x00" in raw[:4096]:
        raise ValueError(f"{str(p)!r} is a binary file, not a text export (x, y, ... columns)")
    text = raw.decode("utf-8", errors="replace")
    comments, rows = [], []
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("%") or s.startswith("#"):
            comments.append(s.lstrip("%#").strip())
        else:
            rows.append(s)
    meta = {}
    for c in comments:
        m = re.match(r"^([A-Za-z][A-Za-z ]*?):\s*(.*)$", c)
        if m:
            meta[m.group(1).strip().lower()] = m.group(2).strip()
    if not rows:
        raise ValueError(f"{str(p)!r} has no data rows (only {len(comments)} comment lines)")
    try:
        table = np.loadtxt(rows, dtype=np.float64, ndmin=2, delimiter=None if "," not in rows[0] else ",")
    except ValueError as exc:
        raise ValueError(
            f"cannot parse {str(p)!r} as a numeric text table ({exc}); expected '%' comment "
            "lines then whitespace-separated numbers"
        ) from None
    return comments, meta, table


def load_points_dat(path) -> np.ndarray:
    """Numeric table ``(N, c)`` of a text file of points (``%`` comments skipped), e.g. x, y, t."""
    _, _, table = _read_text_table(path)
    return table


def load_dat(path, input_names: Sequence[str] | None = None,
             output_names: Sequence[str] | None = None, drop_nonfinite: bool = False) -> ReferenceData:
    """Load a PINNacle/COMSOL text export.

    Lines starting with ``%`` are comments; the last one is the column header.
    Steady files: coordinate columns then outputs -> points ``(N, d)``, values ``(N, k)``.
    Time-dependent files (header columns tagged ``@ t=...``): spatial columns then one
    column per output per snapshot -> points ``(N_space*N_t, d_space+1)`` with time LAST,
    rows space-major (node order of the file), time fastest; values ``(N_space*N_t, k)``.

    The number of coordinate columns is, in order: the untagged leading columns (time
    dependent), ``len(input_names)`` if given, the ``% Dimension:`` line, the leading columns
    named x/y/z/t. ``input_names``/``output_names`` rename the columns (a time-dependent
    file's input_names include the time name last). A file with only coordinates (0 outputs)
    is allowed. ``drop_nonfinite`` drops rows containing NaN/Inf.
    """
    p = pathlib.Path(path)
    src = str(p)
    comments, meta, table = _read_text_table(p)
    ncol = table.shape[1]
    header: list[str] | None = None
    if comments:
        h = [c for c in re.split(r"\s{2,}|\t", comments[-1]) if c.strip()]
        if len(h) == ncol:
            header = h
    if header is not None and any(_TIME_TAG.match(c) for c in header):
        tagged = [_TIME_TAG.match(c) for c in header]
        ns = 0
        while ns < ncol and tagged[ns] is None:
            ns += 1
        if ns == 0 or any(m is None for m in tagged[ns:]):
            raise ValueError(
                f"{src}: time-dependent header must list the spatial columns first, then only "
                f"'name @ t=...' columns; got {header}"
            )
        names, times, cells = [], [], {}
        for j in range(ns, ncol):
            m = tagged[j]
            name = _clean_name(m.group("name"))
            try:
                t = float(m.group("t"))
            except ValueError:
                raise ValueError(f"{src}: cannot read the time in header column {header[j]!r}") from None
            if name not in names:
                names.append(name)
            if t not in times:
                times.append(t)
            if (name, t) in cells:
                raise ValueError(f"{src}: header column {header[j]!r} is repeated")
            cells[(name, t)] = j
        if len(cells) != len(names) * len(times):
            raise ValueError(f"{src}: not every output has a column for every time in the header")
        times_sorted = sorted(times)
        space = table[:, :ns]
        n_s, n_t, k = space.shape[0], len(times_sorted), len(names)
        vals = np.empty((n_s, n_t, k))
        for io, name in enumerate(names):
            for it, t in enumerate(times_sorted):
                vals[:, it, io] = table[:, cells[(name, t)]]
        tt = np.asarray(times_sorted)
        pts = np.column_stack([np.repeat(space, n_t, axis=0), np.tile(tt, n_s)])
        vals = vals.reshape(n_s * n_t, k)
        if drop_nonfinite:
            pts, vals = finite_rows(pts, vals)
        ins = tuple(_clean_name(c) for c in header[:ns]) + ("t",)
        return ReferenceData(pts, vals, renamed(ins, input_names, "input", src),
                             renamed(tuple(names), output_names, "output", src), src)
    # steady
    if input_names is not None:
        d = len(tuple(input_names))
    elif "dimension" in meta and meta["dimension"].isdigit():
        d = int(meta["dimension"])
    elif header is not None:
        d = 0
        while d < ncol and _clean_name(header[d]) in _COORDS:
            d += 1
    else:
        raise ValueError(
            f"{src}: no header line, cannot tell coordinate columns from outputs; pass "
            "input_names=(...) or use load_points_dat() for a plain point list"
        )
    if not 1 <= d <= ncol:
        raise ValueError(f"{src}: {d} coordinate columns requested but the file has {ncol} columns")
    if header is not None:
        ins = tuple(_clean_name(c) for c in header[:d])
        outs = tuple(_clean_name(c) for c in header[d:])
    else:
        ins = tuple(("x", "y", "z", "t")[:d]) if d <= 4 else tuple(f"x{i}" for i in range(d))
        outs = tuple(f"u{i}" for i in range(ncol - d)) if ncol - d > 1 else ("u",) * (ncol - d)
    pts, vals = table[:, :d], table[:, d:]
    if drop_nonfinite:
        pts, vals = finite_rows(pts, vals)
    return ReferenceData(pts, vals, renamed(ins, input_names, "input", src),
                         renamed(outs, output_names, "output", src), src)



def load_reference(path, input_names: Sequence[str] | None = None,
                   output_names: Sequence[str] | None = None, dim: int | None = None,
                   drop_nonfinite: bool = False) -> ReferenceData:
    """Load a reference file, dispatching on its suffix.

    ``.npz`` -> :func:`load_npz`, ``.mat`` -> :func:`load_mat`, ``.dat``/``.txt`` ->
    :func:`load_dat`, anything else -> :func:`load_mesh` (meshio: .vtu, .xdmf, .msh, ...).
    ``dim`` is the expected number of input columns (meshio: coordinates kept);
    ``drop_nonfinite`` drops NaN/Inf rows (e.g. ``Poisson_Lshape.npz`` marks the points
    outside the L-shape with NaN).
    """
    p = existing_file(path)
    suf = p.suffix.lower()
    if suf == ".npz":
        ref = load_npz(p, input_names, output_names, drop_nonfinite=drop_nonfinite)
    elif suf == ".mat":
        ref = load_mat(p, input_names, output_names, drop_nonfinite=drop_nonfinite)
    elif suf in (".dat", ".txt"):
        ref = load_dat(p, input_names, output_names, drop_nonfinite=drop_nonfinite)
    else:
        return load_mesh(p, input_names, output_names, dim)
    if dim is not None and ref.dim != dim:
        raise ValueError(f"{p}: {ref.dim} input columns {ref.input_names}, dim={dim} requested")
    return ref

"""Reference data loading, interpolation and result writing.

Everything here takes and returns numpy arrays; no torch, no global state.

Layout conventions
------------------
* ``ReferenceData.points`` is ``(N, d)`` float64, ``values`` is ``(N, k)`` float64.
* Time-dependent data puts time in the LAST input column: points are ``(x[, y], t)``.
* When the rows form a full tensor grid, ``grid_shape`` and ``axes`` are set and the rows
  are in C order over ``axes`` (``np.meshgrid(*axes, indexing="ij")``, last axis fastest),
  so ``values.reshape(*grid_shape, k)`` (see :meth:`ReferenceData.grid_values`) is a map.
  For space-time data that means space-major, time fastest: ``grid_values()[i_x, i_t]``.

Loading is safe: ``np.load(..., allow_pickle=False)`` and ``scipy.io.loadmat``; a missing file
raises ``FileNotFoundError`` and an unreadable one ``ValueError``, both naming the file.

Writers (``write_vtu``, ``write_xdmf_timeseries``, ``atomic_write_text``, ``atomic_write_json``)
write to a temporary file in the destination folder and ``os.replace`` it into place, so an
interrupted write never destroys an existing file.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "AntiderivativeData",
    "ReferenceData",
    "atomic_write_json",
    "atomic_write_text",
    "data_dir",
    "data_file",
    "interpolate",
    "make_interpolator",
    "load_allen_cahn_mat",
    "load_antiderivative",
    "load_burgers_npz",
    "load_dat",
    "load_mat",
    "load_mesh",
    "load_npz",
    "load_points_dat",
    "load_poisson_lshape",
    "load_reference",
    "load_stokes",
    "read_mesh_fields",
    "read_xdmf_timeseries",
    "write_vtu",
    "write_xdmf_timeseries",
]

ENV_VAR = "PINNLSR_DATA"


# --------------------------------------------------------------------------------------
# data folder
# --------------------------------------------------------------------------------------
def data_dir(path: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Resolve the shared reference-data folder.

    Order: explicit ``path``; else the ``PINNLSR_DATA`` environment variable; else
    ``<repo root>/../shared/data`` (repo root = parent of the ``pinnlsr`` package folder);
    else ``./../shared/data`` relative to the current working directory.

    Raises ``FileNotFoundError`` saying where it looked when none exists.
    """
    if path is not None:
        p = pathlib.Path(path).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(
                f"reference data folder {str(p)!r} (given explicitly) does not exist; "
                f"pass an existing folder or set {ENV_VAR}"
            )
        return p.resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        p = pathlib.Path(env).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(
                f"{ENV_VAR}={env!r} is not an existing folder; point {ENV_VAR} at the "
                "shared reference data folder (the one holding README.md, deepxde/, pinnacle/ ...)"
            )
        return p.resolve()
    repo_root = pathlib.Path(__file__).resolve().parent.parent
    candidates = [repo_root.parent / "shared" / "data", pathlib.Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"reference data folder not found (looked in: {looked}); set the environment "
        f"variable {ENV_VAR} to the shared data folder or pass path=..."
    )


def data_file(relpath: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Path of ``relpath`` inside :func:`data_dir` (``root`` overrides); must exist."""
    p = data_dir(root) / relpath
    if not p.exists():
        raise FileNotFoundError(
            f"reference file {str(p)!r} not found in the data folder; check the name "
            f"(see README.md there) or set {ENV_VAR} to the right folder"
        )
    return p


def _existing(path: str | os.PathLike[str]) -> pathlib.Path:
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"reference file {str(p)!r} not found; check the path or set {ENV_VAR} "
            "to the shared data folder"
        )
    return p


# --------------------------------------------------------------------------------------
# containers
# --------------------------------------------------------------------------------------
def _as_2d_float(a: Any, what: str, source: str) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {what} is not numeric ({exc})") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{source}: {what} must be 1-D or 2-D, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _grid_axes_c_order(points: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Axes if ``points`` is exactly the C-ordered tensor grid of its unique column values."""
    n, d = points.shape
    if n < 2 or d == 0:
        return None
    axes = []
    total = 1
    for j in range(d):
        u = np.unique(points[:, j])
        axes.append(u)
        total *= len(u)
        if total > n:
            return None
    if total != n:
        return None
    mesh = np.meshgrid(*axes, indexing="ij")
    for j in range(d):
        if not np.array_equal(mesh[j].ravel(), points[:, j]):
            return None
    return tuple(axes)


@dataclass(eq=False)
class ReferenceData:
    """Reference solution sampled at points.

    Attributes:
        points: ``(N, d)`` float64 inputs (time, if any, is the last column).
        values: ``(N, k)`` float64 outputs (``k`` may be 0 for point-only files).
        input_names: ``d`` names, e.g. ``("x", "t")``.
        output_names: ``k`` names, e.g. ``("u",)``.
        source: file the data came from (used in error messages).
        grid_shape: ``(n_1, ..., n_d)`` when rows are a C-ordered tensor grid over ``axes``,
            else ``None``. Detected automatically when not given.
        axes: the 1-D grid axes (``len(axes[j]) == grid_shape[j]``), else ``None``.
    """

    points: np.ndarray
    values: np.ndarray
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    source: str = "<memory>"
    grid_shape: tuple[int, ...] | None = None
    axes: tuple[np.ndarray, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        src = str(self.source)
        self.source = src
        self.points = _as_2d_float(self.points, "points", src)
        self.values = _as_2d_float(self.values, "values", src)
        if self.values.shape[0] != self.points.shape[0]:
            if self.values.size == 0 and self.values.shape[0] in (0, 1):
                self.values = np.zeros((self.points.shape[0], 0))
            else:
                raise ValueError(
                    f"{src}: {self.points.shape[0]} points but {self.values.shape[0]} value rows"
                )
        self.input_names = tuple(str(s) for s in self.input_names)
        self.output_names = tuple(str(s) for s in self.output_names)
        if len(self.input_names) != self.points.shape[1]:
            raise ValueError(
                f"{src}: {len(self.input_names)} input names {self.input_names} for "
                f"{self.points.shape[1]} point columns"
            )
        if len(self.output_names) != self.values.shape[1]:
            raise ValueError(
                f"{src}: {len(self.output_names)} output names {self.output_names} for "
                f"{self.values.shape[1]} value columns"
            )
        for what, arr in (("points", self.points), ("values", self.values)):
            bad = ~np.isfinite(arr)
            if bad.any():
                rows = np.nonzero(bad.any(axis=1))[0]
                raise ValueError(
                    f"{src}: {what} contain {int(bad.sum())} NaN/Inf entries "
                    f"(first rows {rows[:5].tolist()}); clean the file or load it with "
                    "drop_nonfinite=True to drop those rows"
                )
        if self.axes is not None:
            self.axes = tuple(np.asarray(a, dtype=np.float64).ravel() for a in self.axes)
            shape = tuple(len(a) for a in self.axes)
            if self.grid_shape is not None and tuple(self.grid_shape) != shape:
                raise ValueError(f"{src}: grid_shape {self.grid_shape} does not match axes {shape}")
            if len(shape) != self.points.shape[1] or math.prod(shape) != self.points.shape[0]:
                raise ValueError(
                    f"{src}: grid axes of shape {shape} do not match points {self.points.shape}"
                )
            mesh = np.meshgrid(*self.axes, indexing="ij")
            if not all(np.array_equal(mesh[j].ravel(), self.points[:, j]) for j in range(len(shape))):
                raise ValueError(
                    f"{src}: points are not the C-ordered grid of the given axes "
                    "(np.meshgrid(*axes, indexing='ij'), last axis fastest)"
                )
            self.grid_shape = shape
        elif self.grid_shape is not None:
            raise ValueError(f"{src}: grid_shape given without axes")
        else:
            axes = _grid_axes_c_order(self.points)
            if axes is not None:
                self.axes = axes
                self.grid_shape = tuple(len(a) for a in axes)

    # -- properties ------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Number of input columns ``d``."""
        return self.points.shape[1]

    @property
    def n_outputs(self) -> int:
        """Number of output columns ``k``."""
        return self.values.shape[1]

    def __len__(self) -> int:
        return self.points.shape[0]

    def check(self, dim: int, n_outputs: int) -> "ReferenceData":
        """Raise ``ValueError`` naming the file unless there are ``dim`` inputs and ``n_outputs`` outputs."""
        if self.dim != dim or self.n_outputs != n_outputs:
            raise ValueError(
                f"{self.source}: expected {dim} input column(s) and {n_outputs} output(s), "
                f"the file has {self.dim} input(s) {self.input_names} and {self.n_outputs} "
                f"output(s) {self.output_names}; use the reference file that matches the problem "
                "or pass input_names/output_names to the loader"
            )
        return self

    def grid_values(self) -> np.ndarray:
        """Values as a map ``(*grid_shape, k)``; ``ValueError`` if the data is not a grid."""
        if self.grid_shape is None:
            raise ValueError(f"{self.source}: the reference points are not a tensor grid")
        return self.values.reshape(*self.grid_shape, self.n_outputs)

    def output(self, name: str) -> np.ndarray:
        """Column ``(N,)`` of output ``name``."""
        try:
            j = self.output_names.index(name)
        except ValueError:
            raise KeyError(f"{self.source}: no output {name!r}; outputs are {self.output_names}") from None
        return self.values[:, j]

    def select(self, output_names: Sequence[str]) -> "ReferenceData":
        """New ``ReferenceData`` with only the named outputs (in that order)."""
        idx = []
        for name in output_names:
            if name not in self.output_names:
                raise KeyError(f"{self.source}: no output {name!r}; outputs are {self.output_names}")
            idx.append(self.output_names.index(name))
        return ReferenceData(
            self.points, self.values[:, idx], self.input_names, tuple(output_names),
            self.source, self.grid_shape, self.axes,
        )


@dataclass
class AntiderivativeData:
    """DeepONet antiderivative data (aligned).

    Attributes:
        X_branch: ``(N, m)`` input function v at the m sensors.
        X_trunk: ``(m, 1)`` evaluation points in [0, 1] (same as the sensors).
        y: ``(N, m)`` u(x) = int_0^x v(s) ds at ``X_trunk``.
        source: file name.
    """

    X_branch: np.ndarray
    X_trunk: np.ndarray
    y: np.ndarray
    source: str = "<memory>"


def _rename(names: tuple[str, ...], new: Sequence[str] | None, what: str, source: str) -> tuple[str, ...]:
    if new is None:
        return names
    new = tuple(new)
    if len(new) != len(names):
        raise ValueError(
            f"{source}: {len(new)} {what} names {new} given but the file has {len(names)} "
            f"{what} column(s) {names}"
        )
    return new


def _drop_nonfinite(points: np.ndarray, values: np.ndarray):
    """Drop rows with a NaN/Inf in points or values (e.g. points outside the domain)."""
    points = np.asarray(points, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    p2 = points.reshape(len(points), -1)
    v2 = values.reshape(len(values), -1)
    keep = np.isfinite(p2).all(axis=1) & np.isfinite(v2).all(axis=1)
    return p2[keep], v2[keep]


def _space_time(x: np.ndarray, t: np.ndarray, u: np.ndarray, source: str,
                input_names=("x", "t"), output_names=("u",)) -> ReferenceData:
    """ReferenceData from a 1-D space-time grid ``u[i_x, i_t]`` (x-major, t fastest)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    t = np.asarray(t, dtype=np.float64).ravel()
    u = np.asarray(u, dtype=np.float64)
    if u.shape != (x.size, t.size):
        raise ValueError(f"{source}: solution shape {u.shape} is not (n_x, n_t) = {(x.size, t.size)}")
    ox, ot = np.argsort(x, kind="stable"), np.argsort(t, kind="stable")
    x, t, u = x[ox], t[ot], u[np.ix_(ox, ot)]
    X, T = np.meshgrid(x, t, indexing="ij")
    pts = np.column_stack([X.ravel(), T.ravel()])
    return ReferenceData(pts, u.reshape(-1, 1), tuple(input_names), tuple(output_names),
                         source, (x.size, t.size), (x, t))


# --------------------------------------------------------------------------------------
# npz / mat
# --------------------------------------------------------------------------------------
def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    p = _existing(path)
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


def _read_mat(path: pathlib.Path) -> dict[str, np.ndarray]:
    import scipy.io

    p = _existing(path)
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
            ref = _space_time(x, t, u, src)
            ref.input_names = _rename(ref.input_names, input_names, "input", src)
            ref.output_names = _rename(ref.output_names, output_names, "output", src)
            return ref
    # 2) scattered points/values pairs
    for kp, kv in _PAIR_KEYS:
        if kp in d and kv in d:
            pts, vals = np.asarray(d[kp]), np.asarray(d[kv])
            pts2 = pts if pts.ndim == 2 else pts.reshape(len(pts), -1)
            vals2 = vals if vals.ndim == 2 else vals.reshape(len(vals), -1)
            if drop_nonfinite:
                pts2, vals2 = _drop_nonfinite(pts2, vals2)
            d_in, k = pts2.shape[1], vals2.shape[1]
            ins = tuple(("x", "y", "z")[:d_in]) if d_in <= 3 else tuple(f"x{i}" for i in range(d_in))
            outs = ("u",) if k == 1 else tuple(f"u{i}" for i in range(k))
            return ReferenceData(pts2, vals2, _rename(ins, input_names, "input", src),
                                 _rename(outs, output_names, "output", src), src)
    if {"X_branch", "X_trunk", "y"} <= set(d):
        raise ValueError(f"{src}: DeepONet data (X_branch, X_trunk, y); use load_antiderivative()")
    if keys == ["arr_0"] and "stokes" in p.name.lower():
        return load_stokes(p, input_names=input_names, output_names=output_names)
    raise ValueError(
        f"{src}: unrecognised array layout (keys {keys}); expected x, t and a solution "
        f"({'/'.join(_SOLUTION_KEYS)}), or a points/values pair such as X_test/y_ref; "
        "use a specific loader (load_stokes, load_antiderivative, ...)"
    )


def load_npz(path, input_names: Sequence[str] | None = None,
             output_names: Sequence[str] | None = None, time_axis: int | None = None,
             drop_nonfinite: bool = False) -> ReferenceData:
    """Load a reference ``.npz`` (``allow_pickle=False``).

    Recognised layouts: ``x (n_x,[1])``, ``t (n_t,[1])`` and a 2-D solution ``usol``/``u``/...
    (``(n_x, n_t)`` or ``(n_t, n_x)``; ``time_axis`` resolves n_x == n_t) -> space-time grid
    ``(n_x*n_t, 2)``; or a points/values pair (``X_test``/``y_ref``, ``X``/``y``, ...) ->
    ``(N, d)``/``(N, k)``; a file named ``*stokes*`` with a single ``arr_0`` -> :func:`load_stokes`.
    ``drop_nonfinite`` drops points/values rows containing NaN/Inf (scattered layouts only).
    """
    p = pathlib.Path(path)
    return _from_arrays(_read_npz(p), p, input_names, output_names, time_axis, drop_nonfinite)


def load_mat(path, input_names: Sequence[str] | None = None,
             output_names: Sequence[str] | None = None, time_axis: int | None = None,
             drop_nonfinite: bool = False) -> ReferenceData:
    """Load a MATLAB ``.mat`` (v5/v7) reference with the same layouts as :func:`load_npz`."""
    p = pathlib.Path(path)
    return _from_arrays(_read_mat(p), p, input_names, output_names, time_axis, drop_nonfinite)


def load_burgers_npz(path=None) -> ReferenceData:
    """DeepXDE ``Burgers.npz``: points ``(25600, 2)`` = (x, t), values ``(25600, 1)`` = u.

    Grid ``(256, 100)`` over ``axes = (x in [-1, 1], t in [0, 0.99])``; rows x-major, t fastest.
    """
    p = pathlib.Path(path) if path is not None else data_file("deepxde/Burgers.npz")
    d = _read_npz(p)
    for k in ("x", "t", "usol"):
        if k not in d:
            raise ValueError(f"{p}: missing array {k!r} (has {sorted(d)}); not DeepXDE's Burgers.npz")
    return _space_time(d["x"], d["t"], d["usol"], str(p))


def load_allen_cahn_mat(path=None, variant: str = "jaxpi") -> ReferenceData:
    """Allen–Cahn reference as space-time grid data, points (x, t), values u.

    ``variant="jaxpi"`` (``jaxpi/allen_cahn.mat``: x 512, t 201, ``usol (n_t, n_x)``, periodic)
    or ``"deepxde"`` (``deepxde/Allen_Cahn.mat``: x 201, t 101, ``u (n_t, n_x)``, u(+-1,t)=-1).
    Returns grid ``(n_x, n_t)``, rows x-major, t fastest.
    """
    files = {"jaxpi": "jaxpi/allen_cahn.mat", "deepxde": "deepxde/Allen_Cahn.mat"}
    if variant not in files:
        raise ValueError(f"unknown Allen–Cahn variant {variant!r}; use 'jaxpi' or 'deepxde'")
    p = pathlib.Path(path) if path is not None else data_file(files[variant])
    d = _read_mat(p)
    key = "usol" if "usol" in d else "u"
    for k in ("x", "t", key):
        if k not in d:
            raise ValueError(f"{p}: missing array {k!r} (has {sorted(d)}); not an Allen–Cahn .mat")
    x, t, u = np.ravel(d["x"]), np.ravel(d["t"]), np.asarray(d[key])
    if u.shape == (t.size, x.size):
        u = u.T
    return _space_time(x, t, u, str(p))


def load_poisson_lshape(path=None) -> ReferenceData:
    """DeepXDE ``Poisson_Lshape.npz`` on the L-shape [-1,1]^2 minus [0,1]^2.

    The file holds a 161x161 (non-uniform) grid ``X_test (25921, 2)``, ``y_ref (25921, 1)``
    whose 6400 points in the removed quadrant (x > 0 and y > 0) have ``y_ref = NaN``. Those
    rows are dropped: points ``(19521, 2)`` (x, y), values ``(19521, 1)`` u (scattered, so
    ``grid_shape`` is None).
    """
    p = pathlib.Path(path) if path is not None else data_file("deepxde/Poisson_Lshape.npz")
    d = _read_npz(p)
    if "X_test" not in d or "y_ref" not in d:
        raise ValueError(f"{p}: expected arrays X_test and y_ref, has {sorted(d)}")
    pts, vals = _drop_nonfinite(d["X_test"], d["y_ref"])
    return ReferenceData(pts, vals, ("x", "y"), ("u",), str(p))


def load_stokes(path=None, input_names: Sequence[str] | None = None,
                output_names: Sequence[str] | None = None) -> ReferenceData:
    """DeepXDE ``stokes.npz`` (``arr_0 (n*n, 3)`` = u, v, p, no coordinates) on [0,1]^2.

    The coordinates are reconstructed as ``x = s[r // n]``, ``y = s[r % n]`` with
    ``s = linspace(0, 1, n)`` (x-major, y fastest), which is the ordering for which the data
    satisfy the lid condition u = x(1-x) at y = 1 (to ~1e-16), u = v = 0 on the other walls
    and v > 0 near x = 0 / v < 0 near x = 1 under the lid (flow turning with the lid).
    Returns a grid ``(n, n)`` with ``axes = (s, s)``.
    """
    p = pathlib.Path(path) if path is not None else data_file("deepxde/stokes.npz")
    d = _read_npz(p)
    if "arr_0" not in d:
        raise ValueError(f"{p}: expected array arr_0 (u, v, p), has {sorted(d)}")
    a = np.asarray(d["arr_0"], dtype=np.float64)
    n = int(round(math.sqrt(a.shape[0]))) if a.ndim == 2 else -1
    if a.ndim != 2 or a.shape[1] != 3 or n * n != a.shape[0]:
        raise ValueError(f"{p}: arr_0 has shape {a.shape}, expected (n*n, 3) with columns u, v, p")
    s = np.linspace(0.0, 1.0, n)
    X, Y = np.meshgrid(s, s, indexing="ij")
    pts = np.column_stack([X.ravel(), Y.ravel()])
    src = str(p)
    return ReferenceData(pts, a, _rename(("x", "y"), input_names, "input", src),
                         _rename(("u", "v", "p"), output_names, "output", src), src, (n, n), (s, s))


def load_antiderivative(split: str = "train", path=None) -> AntiderivativeData:
    """DeepONet antiderivative data: ``X_branch (N, 100)``, ``X_trunk (100, 1)``, ``y (N, 100)``.

    ``split`` is ``"train"`` (N = 150) or ``"test"`` (N = 1000); ``path`` overrides the file.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    p = pathlib.Path(path) if path is not None else data_file(
        f"deeponet/antiderivative_aligned_{split}.npz")
    d = _read_npz(p)
    missing = [k for k in ("X_branch", "X_trunk", "y") if k not in d]
    if missing:
        raise ValueError(f"{p}: missing arrays {missing} (has {sorted(d)}); not DeepONet antiderivative data")
    xb = np.asarray(d["X_branch"], dtype=np.float64)
    xt = np.asarray(d["X_trunk"], dtype=np.float64).reshape(-1, 1)
    y = np.asarray(d["y"], dtype=np.float64)
    if xb.ndim != 2 or y.shape != (xb.shape[0], xt.shape[0]):
        raise ValueError(f"{p}: inconsistent shapes X_branch {xb.shape}, X_trunk {xt.shape}, y {y.shape}")
    for name, arr in (("X_branch", xb), ("X_trunk", xt), ("y", y)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{p}: {name} contains NaN/Inf")
    return AntiderivativeData(xb, xt, y, str(p))


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
    p = _existing(path)
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
            pts, vals = _drop_nonfinite(pts, vals)
        ins = tuple(_clean_name(c) for c in header[:ns]) + ("t",)
        return ReferenceData(pts, vals, _rename(ins, input_names, "input", src),
                             _rename(tuple(names), output_names, "output", src), src)
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
        pts, vals = _drop_nonfinite(pts, vals)
    return ReferenceData(pts, vals, _rename(ins, input_names, "input", src),
                         _rename(outs, output_names, "output", src), src)


# --------------------------------------------------------------------------------------
# meshio formats
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

    p = _existing(path)
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

    p = _existing(path)
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
    p = _existing(path)
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
        return ReferenceData(pts, vals, _rename(ins, input_names, "input", src), names, src)
    pts3, fields = read_mesh_fields(p)
    pts = _trim_points(pts3, dim if dim is not None else (len(input_names) if input_names else None), src)
    vals, names = _field_columns(fields, pts.shape[0], src, output_names)
    ins = tuple(("x", "y", "z")[: pts.shape[1]])
    return ReferenceData(pts, vals, _rename(ins, input_names, "input", src), names, src)


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
    p = _existing(path)
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


# --------------------------------------------------------------------------------------
# interpolation
# --------------------------------------------------------------------------------------
def _grid_any_order(points: np.ndarray):
    """(axes, perm) if the rows are a tensor grid in some row order: points[perm] is C-ordered."""
    n, d = points.shape
    total = 1
    for j in range(d):
        total *= len(np.unique(points[:, j]))
        if total > n:
            return None
    if total != n:
        return None
    perm = np.lexsort(points.T[::-1])  # first column primary, last fastest
    axes = _grid_axes_c_order(points[perm])
    return None if axes is None else (axes, perm)


class _LinearSimplexInterpolator:
    """Piecewise-linear interpolation on a Delaunay triangulation; NaN outside the hull.

    Same result as ``scipy.interpolate.LinearNDInterpolator(points, values, rescale=True)``,
    but the barycentric transforms are computed with one batched ``numpy.linalg.inv`` and the
    containing simplex is found by a vectorised visibility walk, then, for points whose walk
    stops at a flat simplex or a hull face, by testing the simplices around their nearest
    vertices (points still not found get NaN). scipy's ``find_simplex`` makes
    one small LAPACK call per simplex; with multi-threaded OpenBLAS on busy cores that was
    measured at 150 s instead of 0.7 s for the 19,521-point L-shape.
    """

    def __init__(self, points: np.ndarray, values: np.ndarray) -> None:
        from scipy.spatial import Delaunay, cKDTree

        self.lo = points.min(axis=0)
        span = points.max(axis=0) - self.lo
        self.span = np.where(span > 0, span, 1.0)
        p = (points - self.lo) / self.span
        # a tiny deterministic joggle breaks the co-circular/co-spherical ties of grid data,
        # which otherwise leave many flat (zero-volume) simplices in Qhull's triangulation
        # (scipy's own walk then falls back to brute force); values at the data points are
        # restored exactly by the caller
        pj = p + 1e-10 * np.random.default_rng(12345).uniform(-1.0, 1.0, p.shape)
        self.values = values
        self.tri = Delaunay(pj)
        simp = self.tri.simplices
        d = p.shape[1]

        def affine(coords, tol):
            verts = coords[simp]  # (S, d+1, d)
            last = verts[:, d]
            T = np.swapaxes(verts[:, :d] - last[:, None, :], 1, 2)  # columns v_i - v_d
            scale = np.abs(T).reshape(len(T), -1).max(axis=1) ** d
            return last, T, np.abs(np.linalg.det(T)) > tol * scale

        # weights from the true coordinates, from the joggled ones only where a simplex
        # is flat in the true coordinates
        self.last, T, ok = affine(p, 1e-8)
        lastj, Tj, okj = affine(pj, 1e-14)
        use_j = ~ok & okj
        self.last[use_j], T[use_j] = lastj[use_j], Tj[use_j]
        ok = ok | okj
        Tinv = np.full_like(T, np.nan)
        if ok.any():
            Tinv[ok] = np.linalg.inv(T[ok])
        self.Tinv = Tinv
        self.start = self.tri.vertex_to_simplex
        flat_ids = simp.ravel()  # vertex -> incident simplices (CSR)
        order = np.argsort(flat_ids, kind="stable")
        self.inc_simplex = (order // (d + 1)).astype(np.int64)
        self.inc_ptr = np.concatenate([[0], np.cumsum(np.bincount(flat_ids, minlength=len(p)))])
        self.vtree = cKDTree(p)
        self.d = d

    def _bary(self, s: np.ndarray, q: np.ndarray) -> np.ndarray:
        b = np.einsum("mij,mj->mi", self.Tinv[s], q - self.last[s])
        return np.column_stack([b, 1.0 - b.sum(axis=1)])

    def _local_search(self, qs, idx, s, bary, found, n_near: int = 12) -> None:
        """Test every simplex touching one of the ``n_near`` nearest vertices of each point."""
        n_near = min(n_near, len(self.vtree.data))
        _, near = self.vtree.query(qs[idx], k=n_near)
        near = near.reshape(len(idx), -1)
        eps = 1e-12
        for chunk in np.array_split(np.arange(len(idx)), max(1, len(idx) // 2000)):
            verts = near[chunk].ravel()
            counts = self.inc_ptr[verts + 1] - self.inc_ptr[verts]
            owner = np.repeat(np.repeat(chunk, near.shape[1]), counts)
            starts = np.repeat(self.inc_ptr[verts], counts)
            pos = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            cand = self.inc_simplex[starts + pos]
            b = self._bary(cand, qs[idx[owner]])
            score = np.where(np.isnan(b).any(axis=1), -np.inf, b.min(axis=1))
            # best candidate per point
            order = np.lexsort((-score, owner))
            first = np.ones(order.size, dtype=bool)
            first[1:] = owner[order][1:] != owner[order][:-1]
            best = order[first]
            ok = score[best] >= -eps
            pts = idx[owner[best[ok]]]
            found[pts] = True
            bary[pts] = b[best[ok]]
            s[pts] = cand[best[ok]]

    def __call__(self, q: np.ndarray) -> np.ndarray:
        qs = (q - self.lo) / self.span
        m, k = q.shape[0], self.values.shape[1]
        out = np.full((m, k), np.nan)
        if m == 0:
            return out
        _, nearest = self.vtree.query(qs)
        s = self.start[nearest].astype(np.int64)
        bary = np.full((m, self.d + 1), np.nan)
        found = np.zeros(m, dtype=bool)
        unresolved = [np.nonzero(s < 0)[0]]
        active = np.nonzero(s >= 0)[0]
        eps = 1e-12
        for _ in range(int(10 * len(self.tri.simplices) ** (1.0 / self.d)) + 100):
            if active.size == 0:
                break
            b = self._bary(s[active], qs[active])
            flat = np.isnan(b).any(axis=1)
            j = np.argmin(np.where(np.isnan(b), np.inf, b), axis=1)
            inside = ~flat & (b[np.arange(active.size), j] >= -eps)
            hit = active[inside]
            found[hit] = True
            bary[hit] = b[inside]
            walk = ~inside & ~flat
            nxt = self.tri.neighbors[s[active[walk]], j[walk]]
            s[active[walk]] = nxt
            # degenerate simplex or hull face reached: decide by the local search below
            unresolved += [active[flat], active[walk][nxt < 0]]
            active = active[walk][nxt >= 0]
        unresolved.append(active)
        rest = np.concatenate(unresolved)
        if rest.size:
            self._local_search(qs, rest, s, bary, found)
        if found.any():
            ids = self.tri.simplices[s[found]]  # (f, d+1)
            bf = np.clip(bary[found], 0.0, 1.0)
            bf /= bf.sum(axis=1, keepdims=True)
            out[found] = np.einsum("fi,fik->fk", bf, self.values[ids])
        return out


def make_interpolator(ref: ReferenceData):
    """Build ``f(points (M, d)) -> (M, k)`` for repeated :func:`interpolate` calls on ``ref``.

    The triangulation / grid setup is done once here; see :func:`interpolate` for the rules.
    """
    from scipy.interpolate import RegularGridInterpolator
    from scipy.spatial import cKDTree

    k = ref.n_outputs
    tree = cKDTree(ref.points) if len(ref) else None
    tol = 1e-12 * max(1.0, float(np.abs(ref.points).max())) if len(ref) else 0.0
    grid = (ref.axes, np.arange(len(ref))) if ref.axes is not None else _grid_any_order(ref.points)

    if k == 0 or len(ref) == 0:
        def raw(q):
            return np.zeros((q.shape[0], k))
    elif grid is not None:
        axes, perm = grid
        vals = ref.values[perm].reshape(*(len(a) for a in axes), k)
        keep = [j for j, a in enumerate(axes) if len(a) >= 2]  # drop singleton axes
        vals = vals.reshape(*(len(axes[j]) for j in keep), k)
        kept_axes = tuple(axes[j] for j in keep)
        lo = np.array([a[0] for a in kept_axes])
        hi = np.array([a[-1] for a in kept_axes])
        rgi = RegularGridInterpolator(kept_axes, vals, method="linear") if keep else None

        def raw(q):
            if rgi is None:
                return np.repeat(vals.reshape(1, k), q.shape[0], axis=0)
            return rgi(np.clip(q[:, keep], lo, hi))
    elif ref.dim == 1:
        order = np.argsort(ref.points[:, 0], kind="stable")
        xs, ys = ref.points[order, 0], ref.values[order]

        def raw(q):
            return np.column_stack([np.interp(q[:, 0], xs, ys[:, j]) for j in range(k)])
    else:
        lin = _LinearSimplexInterpolator(ref.points, ref.values)

        def raw(q):
            out = lin(q)
            miss = np.isnan(out).any(axis=1)
            if miss.any():
                _, idx = tree.query(q[miss])
                out[miss] = ref.values[idx]
            return out

    def f(points: np.ndarray) -> np.ndarray:
        q = np.asarray(points, dtype=np.float64)
        if q.ndim == 1 and ref.dim == 1:
            q = q[:, None]
        if q.ndim != 2 or q.shape[1] != ref.dim:
            raise ValueError(
                f"{ref.source}: query points of shape {np.shape(points)} do not match the "
                f"reference inputs {ref.input_names} (d={ref.dim})"
            )
        if not np.isfinite(q).all():
            raise ValueError(f"{ref.source}: query points contain NaN/Inf")
        out = np.array(raw(q), dtype=np.float64).reshape(q.shape[0], k)
        if tree is not None and k and q.shape[0]:
            dist, idx = tree.query(q, distance_upper_bound=tol)  # exact values at coinciding points
            hit = np.isfinite(dist)
            out[hit] = ref.values[idx[hit]]
        return out

    return f


def interpolate(ref: ReferenceData, points: np.ndarray) -> np.ndarray:
    """Reference values ``(M, k)`` at ``points (M, d)``.

    Points that coincide with reference points (to 1e-12 relative) get the stored values
    exactly. Tensor-grid data (also in shuffled row order) use
    ``scipy.interpolate.RegularGridInterpolator`` (linear; query points are clamped to the grid
    box); scattered data use piecewise-linear interpolation on a Delaunay triangulation of
    the rescaled points (as ``scipy.interpolate.LinearNDInterpolator(..., rescale=True)``;
    ``np.interp`` in 1-D, which clamps) with nearest-neighbour values outside the convex hull. For repeated calls use
    :func:`make_interpolator`.
    """
    return make_interpolator(ref)(points)


# --------------------------------------------------------------------------------------
# atomic writers
# --------------------------------------------------------------------------------------
def readable_temp_file(folder, prefix: str, suffix: str) -> pathlib.Path:
    """A new empty temporary file in ``folder`` with the permissions of an ordinary new file
    (0666 minus the umask; ``mkstemp`` alone makes it 0600), for write-then-rename."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return pathlib.Path(name)


def write_atomically(path, write, suffix: str = ".tmp") -> pathlib.Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place;
    on any failure the temporary file is removed and an existing ``path`` is left untouched."""
    dest = pathlib.Path(path)
    tmp = readable_temp_file(dest.parent, f".{dest.name}.", suffix)
    try:
        write(str(tmp))
        os.replace(tmp, dest)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return dest


def _tmp_path(dest: pathlib.Path, suffix: str) -> pathlib.Path:
    return readable_temp_file(dest.parent, f".{dest.name}.", suffix)


def _unlink_quiet(p: pathlib.Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> pathlib.Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    dest = pathlib.Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(dest, ".tmp")
    try:
        with open(tmp, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return dest


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (pathlib.PurePath,)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path, obj: Any) -> pathlib.Path:
    """Write ``obj`` as JSON (indent=2; numpy scalars/arrays and paths converted) atomically."""
    text = json.dumps(obj, indent=2, default=_json_default)
    return atomic_write_text(path, text + "\n")


def _pad3(points: Any, src: str) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1:
        pts = pts[:, None]
    if pts.ndim != 2 or not 1 <= pts.shape[1] <= 3:
        raise ValueError(f"{src}: points must be (N, 1..3), got shape {pts.shape}")
    if pts.shape[1] < 3:
        pts = np.hstack([pts, np.zeros((pts.shape[0], 3 - pts.shape[1]))])
    return np.ascontiguousarray(pts)


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
    if cells is None:
        cells = [("vertex", np.arange(n, dtype=np.int64).reshape(-1, 1))]
    elif isinstance(cells, Mapping):
        cells = list(cells.items())
    mesh = meshio.Mesh(pts, cells, point_data=pd)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(dest, ".tmp.vtu")
    try:
        meshio.write(str(tmp), mesh, file_format="vtu")
        os.replace(tmp, dest)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return dest


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
    if cells is None:
        cells = [("vertex", np.arange(n, dtype=np.int64).reshape(-1, 1))]
    elif isinstance(cells, Mapping):
        cells = list(cells.items())

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

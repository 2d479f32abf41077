"""Loaders of the shared reference data sets, by name (files in :func:`pinnlsr.datafolder.data_dir`).

Each loader takes an optional ``path`` that overrides the file in the shared folder and checks
that the file holds the arrays it expects, with an error naming the file.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .datafolder import data_file
from .readers import read_mat, read_npz, stokes_reference
from .reference import ReferenceData, finite_rows, space_time_grid

__all__ = ["AntiderivativeData", "load_allen_cahn_mat", "load_antiderivative", "load_burgers_npz",
           "load_poisson_lshape", "load_stokes"]


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


def load_burgers_npz(path=None) -> ReferenceData:
    """DeepXDE ``Burgers.npz``: points ``(25600, 2)`` = (x, t), values ``(25600, 1)`` = u.

    Grid ``(256, 100)`` over ``axes = (x in [-1, 1], t in [0, 0.99])``; rows x-major, t fastest.
    """
    p = pathlib.Path(path) if path is not None else data_file("deepxde/Burgers.npz")
    d = read_npz(p)
    for k in ("x", "t", "usol"):
        if k not in d:
            raise ValueError(f"{p}: missing array {k!r} (has {sorted(d)}); not DeepXDE's Burgers.npz")
    return space_time_grid(d["x"], d["t"], d["usol"], str(p))


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
    d = read_mat(p)
    key = "usol" if "usol" in d else "u"
    for k in ("x", "t", key):
        if k not in d:
            raise ValueError(f"{p}: missing array {k!r} (has {sorted(d)}); not an Allen–Cahn .mat")
    x, t, u = np.ravel(d["x"]), np.ravel(d["t"]), np.asarray(d[key])
    if u.shape == (t.size, x.size):
        u = u.T
    return space_time_grid(x, t, u, str(p))


def load_poisson_lshape(path=None) -> ReferenceData:
    """DeepXDE ``Poisson_Lshape.npz`` on the L-shape [-1,1]^2 minus [0,1]^2.

    The file holds a 161x161 (non-uniform) grid ``X_test (25921, 2)``, ``y_ref (25921, 1)``
    whose 6400 points in the removed quadrant (x > 0 and y > 0) have ``y_ref = NaN``. Those
    rows are dropped: points ``(19521, 2)`` (x, y), values ``(19521, 1)`` u (scattered, so
    ``grid_shape`` is None).
    """
    p = pathlib.Path(path) if path is not None else data_file("deepxde/Poisson_Lshape.npz")
    d = read_npz(p)
    if "X_test" not in d or "y_ref" not in d:
        raise ValueError(f"{p}: expected arrays X_test and y_ref, has {sorted(d)}")
    pts, vals = finite_rows(d["X_test"], d["y_ref"])
    return ReferenceData(pts, vals, ("x", "y"), ("u",), str(p))


def load_stokes(path=None, input_names: Sequence[str] | None = None,
                output_names: Sequence[str] | None = None) -> ReferenceData:
    """DeepXDE ``stokes.npz`` (``arr_0 (n*n, 3)`` = u, v, p, no coordinates) on [0,1]^2: grid
    ``(101, 101)``, points (x, y) x-major; see :func:`pinnlsr.readers.stokes_reference`."""
    p = pathlib.Path(path) if path is not None else data_file("deepxde/stokes.npz")
    d = read_npz(p)
    if "arr_0" not in d:
        raise ValueError(f"{p}: expected array arr_0 (u, v, p), has {sorted(d)}")
    return stokes_reference(d["arr_0"], str(p), input_names, output_names)


def load_antiderivative(split: str = "train", path=None) -> AntiderivativeData:
    """DeepONet antiderivative data: ``X_branch (N, 100)``, ``X_trunk (100, 1)``, ``y (N, 100)``.

    ``split`` is ``"train"`` (N = 150) or ``"test"`` (N = 1000); ``path`` overrides the file.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    p = pathlib.Path(path) if path is not None else data_file(
        f"deeponet/antiderivative_aligned_{split}.npz")
    d = read_npz(p)
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

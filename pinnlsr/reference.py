"""The reference-solution container: points and values with names, and its grid detection.

Layout conventions
------------------
* ``ReferenceData.points`` is ``(N, d)`` float64, ``values`` is ``(N, k)`` float64.
* Time-dependent data puts time in the LAST input column: points are ``(x[, y], t)``.
* When the rows form a full tensor grid, ``grid_shape`` and ``axes`` are set and the rows
  are in C order over ``axes`` (``np.meshgrid(*axes, indexing="ij")``, last axis fastest),
  so ``values.reshape(*grid_shape, k)`` (see :meth:`ReferenceData.grid_values`) is a map.
  For space-time data that means space-major, time fastest: ``grid_values()[i_x, i_t]``.

Numpy only; no torch, no files (the readers are :mod:`pinnlsr.readers`, :mod:`pinnlsr.meshfiles`
and :mod:`pinnlsr.datasets`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["ReferenceData", "finite_rows", "grid_axes", "renamed", "space_time_grid"]


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

def grid_axes(points: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray] | None:
    """``(axes, perm)`` if the rows of ``points (N, d)`` are a full tensor grid in any row order.

    ``axes[j]`` are the sorted unique values of column j and ``points[perm]`` is the C-ordered grid
    (``np.meshgrid(*axes, indexing="ij")``, last axis fastest); ``perm`` is ``arange(N)`` when the
    rows are already in that order. ``None`` when the rows are not a grid (or N < 2).
    """
    n, d = points.shape
    if n < 2 or d == 0:
        return None
    axes = []
    total = 1
    for j in range(d):
        axes.append(np.unique(points[:, j]))
        total *= len(axes[-1])
        if total > n:
            return None
    if total != n:
        return None
    perm = np.lexsort(points.T[::-1])  # first column primary, last fastest
    mesh = np.meshgrid(*axes, indexing="ij")
    if not all(np.array_equal(mesh[j].ravel(), points[perm, j]) for j in range(d)):
        return None
    return tuple(axes), perm


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
            grid = grid_axes(self.points)
            if grid is not None and np.array_equal(grid[1], np.arange(len(self.points))):
                self.axes = grid[0]
                self.grid_shape = tuple(len(a) for a in self.axes)

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


def renamed(names: tuple[str, ...], new: Sequence[str] | None, what: str, source: str) -> tuple[str, ...]:
    """``new`` (checked to have as many names as ``names``) or, when ``None``, ``names``;
    ``what`` ("input"/"output") and ``source`` go into the error message."""
    if new is None:
        return names
    new = tuple(new)
    if len(new) != len(names):
        raise ValueError(
            f"{source}: {len(new)} {what} names {new} given but the file has {len(names)} "
            f"{what} column(s) {names}"
        )
    return new


def finite_rows(points: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(points (M, d), values (M, k))``: the rows of ``points (N, ...)`` and ``values (N, ...)``
    without a NaN/Inf in either (e.g. points outside the domain)."""
    points = np.asarray(points, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    p2 = points.reshape(len(points), -1)
    v2 = values.reshape(len(values), -1)
    keep = np.isfinite(p2).all(axis=1) & np.isfinite(v2).all(axis=1)
    return p2[keep], v2[keep]


def space_time_grid(x: np.ndarray, t: np.ndarray, u: np.ndarray, source: str) -> ReferenceData:
    """Grid data ``(x, t) -> u`` from ``x (n_x,)``, ``t (n_t,)`` and ``u (n_x, n_t)``, both axes
    sorted: points ``(n_x*n_t, 2)``, x-major, t fastest, grid ``(n_x, n_t)``."""
    x = np.asarray(x, dtype=np.float64).ravel()
    t = np.asarray(t, dtype=np.float64).ravel()
    u = np.asarray(u, dtype=np.float64)
    if u.shape != (x.size, t.size):
        raise ValueError(f"{source}: solution shape {u.shape} is not (n_x, n_t) = {(x.size, t.size)}")
    ox, ot = np.argsort(x, kind="stable"), np.argsort(t, kind="stable")
    x, t, u = x[ox], t[ot], u[np.ix_(ox, ot)]
    X, T = np.meshgrid(x, t, indexing="ij")
    pts = np.column_stack([X.ravel(), T.ravel()])
    return ReferenceData(pts, u.reshape(-1, 1), ("x", "t"), ("u",), source, (x.size, t.size), (x, t))


"""Colour maps of fields: values on 2-D points (a grid or scattered points in a domain with holes),
space-time maps and prediction / reference / error comparisons; and the style and helpers that every
figure of :mod:`pinnlsr.plotting` shares (see there for the conventions).

Fields keep their aspect ratio when both axes are space (neither is named "t" or "time"); every
colorbar is an inset of its panel, so it is as tall as the panel.
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.tri import Triangulation

__all__ = ["figure_style", "draw_field_2d", "comparison_figure", "draw_spacetime",
           "spacetime_comparison_figure", "FIELD_CMAP", "ERROR_CMAP", "TIME_NAMES"]

# --------------------------------------------------------------------------
# style and shared helpers
# --------------------------------------------------------------------------

_STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": False,          # grids are switched on per line plot only
    "grid.alpha": 0.35,
    "grid.linestyle": ":",
    "lines.linewidth": 1.6,
    "axes.facecolor": "white",
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "image.cmap": "viridis",
    "axes.prop_cycle": matplotlib.cycler(
        color=["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]),
}

FIELD_CMAP = "viridis"
ERROR_CMAP = "inferno"
TIME_NAMES = ("t", "time")   # axis names that are not space: no equal aspect


def figure_style():
    """Context manager applying the style of the saved figures (nothing leaks out)."""
    return matplotlib.rc_context(_STYLE)


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _panel(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """``ax``, or the one Axes of a new figure of ``figsize`` inches."""
    return ax if ax is not None else _new_figure(figsize).add_subplot()


def _panels(axes, n: int, figsize: tuple[float, float]) -> list[Axes]:
    """``axes`` (any sequence or array of n Axes), or a new figure's row of n Axes."""
    if axes is None:
        return list(_new_figure(figsize).subplots(1, n))
    axes = list(np.ravel(np.asarray(axes, dtype=object)))
    if len(axes) != n:
        raise ValueError(f"axes must hold {n} Axes for this figure, got {len(axes)}")
    return axes


def _colorbar(ax: Axes, mappable, label: str | None = None):
    """Colorbar right of ``ax`` in an inset (axes coordinates): exactly as tall as the panel, also at
    a fixed aspect, and seen by constrained layout (which makes room for its ticks and label)."""
    cax = ax.inset_axes([1.03, 0.0, 0.045, 1.0], label="<colorbar>")
    return ax.figure.colorbar(mappable, cax=cax, label=label)


def _to_numpy(x: Any, dtype=float) -> np.ndarray:
    """Convert arrays / torch tensors / lists to a numpy array."""
    if hasattr(x, "detach"):
        x = np.asarray(x.detach().cpu())
    arr = np.asarray(x)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr


def _vec(x: Any, name: str = "array") -> np.ndarray:
    """1-D float array; (N,1) and (1,N) are flattened."""
    a = _to_numpy(x)
    if a.ndim > 1:
        if sum(s != 1 for s in a.shape) > 1:
            raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
        a = a.reshape(-1)
    return np.atleast_1d(a)


def _error_norm(prediction: np.ndarray, reference: np.ndarray, log: bool):
    """(|prediction - reference|, its colour norm): None (linear), or with ``log`` a LogNorm from a
    floor (1st percentile of the positive errors, >= 1e-10 * max), the error clipped to the floor."""
    err = np.abs(prediction - reference)
    if not log:
        return err, None
    finite = err[np.isfinite(err)]
    pos = finite[finite > 0]
    vmax = float(pos.max()) if pos.size else 1e-15
    # robust floor: isolated zeros of the error must not stretch the scale
    floor = max(float(np.percentile(pos, 1)) if pos.size else 1e-16, vmax * 1e-10)
    if floor >= vmax:
        floor = vmax / 10.0
    clipped = np.where(np.isfinite(err), np.clip(err, floor, None), np.nan)
    return clipped, LogNorm(vmin=floor, vmax=vmax)


def _shared_norm(*arrays: np.ndarray) -> Normalize:
    vals = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if vals.size == 0:
        return Normalize(0.0, 1.0)
    lo, hi = float(vals.min()), float(vals.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return Normalize(lo, hi)


def _finish_axes(ax, title=None, xlabel=None, ylabel=None, legend=False, grid=True):
    if title:
        ax.set_title(title)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if grid:
        ax.grid(True, which="major")
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend()


def _marker(n: int) -> dict:
    return {"marker": "o", "markersize": 3} if n <= 40 else {}


def _is_space(name: str) -> bool:
    return str(name).lower() not in TIME_NAMES


def _comparison_panels(p: np.ndarray, r: np.ndarray, log_error: bool) -> list[tuple]:
    """(values, cmap, norm) of the prediction, reference and |error| panels: prediction and reference
    share one colour scale, the error has its own (log-scaled when ``log_error``)."""
    err, enorm = _error_norm(p, r, log_error)
    norm = _shared_norm(p, r)
    return [(p, FIELD_CMAP, norm), (r, FIELD_CMAP, norm), (err, ERROR_CMAP, enorm)]


# --------------------------------------------------------------------------
# 2-D field layout: full grid or masked triangulation
# --------------------------------------------------------------------------

def _cluster(v: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Group nearly equal values. Returns (sorted representatives, index per value)."""
    order = np.argsort(v, kind="stable")
    sv = v[order]
    new = np.empty(sv.size, dtype=bool)
    new[0] = True
    new[1:] = np.diff(sv) > tol
    labels_sorted = np.cumsum(new) - 1
    labels = np.empty_like(labels_sorted)
    labels[order] = labels_sorted
    counts = np.bincount(labels_sorted)
    reps = np.bincount(labels_sorted, weights=sv) / counts
    return reps, labels


def _detect_grid(points: np.ndarray):
    """Return (xs, ys, ix, iy) if ``points`` (N,2) is a full regular grid, else None."""
    n = points.shape[0]
    if n < 4:
        return None
    x, y = points[:, 0], points[:, 1]
    scale = max(float(np.ptp(x)), float(np.ptp(y)), 1e-300)
    tol = 1e-8 * scale
    xs, ix = _cluster(x, tol)
    ys, iy = _cluster(y, tol)
    nx, ny = xs.size, ys.size
    if nx < 2 or ny < 2 or nx * ny != n:
        return None
    flat = iy * nx + ix
    if np.unique(flat).size != n:
        return None
    return xs, ys, ix, iy


def _contains(domain, pts: np.ndarray) -> np.ndarray:
    """Call ``domain.contains`` with numpy (falling back to torch); bool (M,)."""
    try:
        res = domain.contains(pts)
    except (TypeError, AttributeError):
        import torch  # only for torch-only geometry classes
        res = domain.contains(torch.as_tensor(pts))
    return _to_numpy(res, dtype=None).astype(bool).reshape(-1)


class _FieldLayout:
    """How to draw values on a fixed set of 2-D points (computed once, reused)."""

    def __init__(self, points: Any, domain=None, edge_factor: float = 3.0):
        pts = _to_numpy(points)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"points must have shape (N, 2), got {pts.shape}")
        self.points = pts
        self.n = pts.shape[0]
        grid = _detect_grid(pts)
        self.is_grid = grid is not None
        if self.is_grid:
            self.xs, self.ys, self.ix, self.iy = grid
            self.outside = ~_contains(domain, pts) if domain is not None else None
            self.triangulation = None
        else:
            tri = Triangulation(pts[:, 0], pts[:, 1])
            t = tri.triangles
            if domain is not None:
                centroids = pts[t].mean(axis=1)
                mask = ~_contains(domain, centroids)
            else:
                e = tri.edges
                med = np.median(np.hypot(*(pts[e[:, 0]] - pts[e[:, 1]]).T))
                p0, p1, p2 = pts[t[:, 0]], pts[t[:, 1]], pts[t[:, 2]]
                longest = np.maximum.reduce([np.hypot(*(p0 - p1).T),
                                             np.hypot(*(p1 - p2).T),
                                             np.hypot(*(p2 - p0).T)])
                mask = longest > edge_factor * med
            if mask.all():  # nothing would be drawn: fall back to no mask
                mask[:] = False
            tri.set_mask(mask)
            self.triangulation = tri

    def draw(self, ax, values: Any, cmap=FIELD_CMAP, norm=None):
        v = _vec(values, "values")
        if v.size != self.n:
            raise ValueError(f"values has {v.size} entries, points has {self.n}")
        if self.is_grid:
            z = np.full((self.ys.size, self.xs.size), np.nan)
            vv = v.copy()
            if self.outside is not None:
                vv[self.outside] = np.nan
            z[self.iy, self.ix] = vv
            m = ax.pcolormesh(self.xs, self.ys, np.ma.masked_invalid(z),
                              shading="nearest", cmap=cmap, norm=norm,
                              rasterized=True)
        else:
            tri = self.triangulation
            bad = ~np.isfinite(v)
            if bad.any():
                tmask = tri.mask | bad[tri.triangles].any(axis=1)
                tri = Triangulation(tri.x, tri.y, triangles=tri.triangles, mask=tmask)
                v = np.where(bad, 0.0, v)
            m = ax.tripcolor(tri, v, shading="gouraud", cmap=cmap, norm=norm,
                             rasterized=True)
        return m


# --------------------------------------------------------------------------
# 2-D fields
# --------------------------------------------------------------------------

def _draw_field(ax: Axes, layout: _FieldLayout, values, title, ax_labels, cmap=FIELD_CMAP,
                norm=None, label=None) -> Axes:
    m = layout.draw(ax, values, cmap=cmap, norm=norm)
    if all(_is_space(name) for name in ax_labels[:2]):
        ax.set_aspect("equal")
    _colorbar(ax, m, label)
    _finish_axes(ax, title, ax_labels[0], ax_labels[1], grid=False)
    return ax


def draw_field_2d(points, values, title: str | None = None, ax_labels: Sequence[str] = ("x", "y"),
                  domain=None, cmap: str = FIELD_CMAP, label: str | None = None, norm=None,
                  ax: Axes | None = None) -> Axes:
    """Colour map of a scalar field on 2-D points, with a colorbar (``label``) as tall as the panel.

    points: (N, 2); values: (N,). A full tensor grid (unique x count times unique y count == N) is
    drawn cell by cell with pcolormesh; scattered points are triangulated, masking triangles whose
    centroid is outside ``domain`` (object with ``contains((M,2)) -> bool (M,)``, numpy or torch) or,
    without a domain, triangles with an edge longer than 3x the median edge length (so holes and
    concave parts stay empty). On a grid, points outside ``domain`` are left blank. ``ax_labels``
    name the two inputs; the aspect is equal unless one is time. ``norm``: a matplotlib colour norm.
    """
    return _draw_field(_panel(ax, (5.6, 4.6)), _FieldLayout(points, domain), values, title,
                       ax_labels, cmap=cmap, norm=norm, label=label)


def _draw_comparison_1d(axes, x, p, r, titles, xlabel) -> None:
    if not (x.size == p.size == r.size):
        raise ValueError("points, prediction and reference must have the same length")
    order = np.argsort(x, kind="stable")
    x, p, r = x[order], p[order], r[order]
    err = np.abs(p - r)
    ax1, ax2 = axes
    ax1.plot(x, r, label=titles[1], color="k", lw=2.2, alpha=0.6)
    ax1.plot(x, p, label=titles[0], color="C0", ls="--")
    _finish_axes(ax1, f"{titles[0]} vs {titles[1]}", xlabel, "u", legend=True)
    pos = err[np.isfinite(err) & (err > 0)]
    floor = pos.min() if pos.size else 1e-16
    ax2.plot(x, np.maximum(err, floor), color="C1", **_marker(x.size))
    ax2.set_yscale("log")
    _finish_axes(ax2, titles[2], xlabel, titles[2])


def comparison_figure(points, prediction, reference,
                      titles: Sequence[str] = ("prediction", "reference", "|error|"), domain=None,
                      suptitle: str | None = None, log_error: bool = False,
                      ax_labels: Sequence[str] = ("x", "y"), axes=None) -> Figure:
    """Prediction / reference / |error|; returns the Figure (that of ``axes`` where given).

    points: (N, 2) -> three colour panels as in :func:`draw_field_2d` (prediction and reference share
    one colour scale; the error has its own, log-scaled when ``log_error``); ``axes``: 3 Axes.
    points: (N,) or (N, 1) -> two panels: both curves, and |error| on a log y-axis; ``axes``: 2 Axes.
    prediction, reference: (N,). ``ax_labels``: the names of the inputs (the first one in 1-D).
    """
    pts = _to_numpy(points)
    p, r = _vec(prediction, "prediction"), _vec(reference, "reference")
    if pts.ndim == 1 or (pts.ndim == 2 and pts.shape[1] == 1):
        axes = _panels(axes, 2, (10.0, 3.8))
        _draw_comparison_1d(axes, _vec(pts, "points"), p, r, titles, ax_labels[0])
    else:
        layout = _FieldLayout(pts, domain)
        axes = _panels(axes, 3, (15.0, 4.4))
        for ax, title, (v, cmap, norm) in zip(axes, titles, _comparison_panels(p, r, log_error)):
            _draw_field(ax, layout, v, title, ax_labels, cmap=cmap, norm=norm)
    if suptitle:
        axes[0].figure.suptitle(suptitle)
    return axes[0].figure


# --------------------------------------------------------------------------
# space-time maps
# --------------------------------------------------------------------------

def _spacetime_arrays(x, t, values, name="values"):
    xv, tv = _vec(x, "x"), _vec(t, "t")
    v = _to_numpy(values)
    if v.ndim == 1 and v.size == tv.size * xv.size:
        v = v.reshape(tv.size, xv.size)
    if v.shape != (tv.size, xv.size):
        hint = (" (looks like (Nx, Nt); pass values.T)"
                if v.shape == (xv.size, tv.size) else "")
        raise ValueError(f"{name} must have shape (Nt, Nx) = ({tv.size}, {xv.size}),"
                         f" got {v.shape}{hint}")
    ox, ot = np.argsort(xv, kind="stable"), np.argsort(tv, kind="stable")
    return xv[ox], tv[ot], v[np.ix_(ot, ox)]


def draw_spacetime(x, t, values, title: str | None = None, xlabel: str = "x", tlabel: str = "t",
                   cmap: str = FIELD_CMAP, label: str | None = None, norm=None,
                   ax: Axes | None = None) -> Axes:
    """Space-time colour map, x horizontal and t vertical, with a colorbar as tall as the panel.

    x: (Nx,); t: (Nt,); values: (Nt, Nx) with values[i, j] = u(x[j], t[i]) (a flat (Nt*Nx,) array in
    that row-major order is also accepted).
    """
    xs, ts, v = _spacetime_arrays(x, t, values)
    ax = _panel(ax, (6.0, 4.4))
    m = ax.pcolormesh(xs, ts, np.ma.masked_invalid(v), shading="nearest", cmap=cmap, norm=norm,
                      rasterized=True)
    _colorbar(ax, m, label)
    _finish_axes(ax, title, xlabel, tlabel, grid=False)
    return ax


def spacetime_comparison_figure(x, t, prediction, reference,
                                titles: Sequence[str] = ("prediction", "reference", "|error|"),
                                suptitle: str | None = None, log_error: bool = False,
                                xlabel: str = "x", tlabel: str = "t", axes=None) -> Figure:
    """Three space-time panels, prediction, reference and |error|, into ``axes`` (3 Axes) or a new
    figure; returns the Figure. x: (Nx,); t: (Nt,); prediction, reference: (Nt, Nx)."""
    xs, ts, p = _spacetime_arrays(x, t, prediction, "prediction")
    r = _spacetime_arrays(x, t, reference, "reference")[2]
    axes = _panels(axes, 3, (15.0, 4.4))
    for ax, title, (v, cmap, norm) in zip(axes, titles, _comparison_panels(p, r, log_error)):
        draw_spacetime(xs, ts, v, title, xlabel, tlabel, cmap=cmap, norm=norm, ax=ax)
    if suptitle:
        axes[0].figure.suptitle(suptitle)
    return axes[0].figure



"""Figures for PINN refinement experiments.

Everything here works on explicit :class:`matplotlib.figure.Figure` objects
rendered with the Agg canvas; no pyplot state is touched and no global
rcParams are changed (one consistent style is applied through
``matplotlib.rc_context`` inside each call).

Each public ``plot_*`` function has a private builder (``_*_figure``) that
returns the Figure; the public function builds it, saves it atomically
(temporary file in the same folder, then ``os.replace``) and returns the
written path as a :class:`pathlib.Path`.  Paths without a suffix get
``.png``; parent folders are created.

Array inputs may be numpy arrays, anything ``np.asarray`` accepts, or torch
tensors (converted with ``np.asarray(x.detach().cpu())``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
import sys
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.tri import Triangulation

from .io import readable_temp_file

__all__ = [
    "plot_curves_1d",
    "plot_field_2d",
    "plot_comparison",
    "plot_spacetime",
    "plot_spacetime_comparison",
    "plot_histories",
    "plot_singular_values",
    "plot_error_vs_rank",
    "plot_rank_scan",
    "plot_error_per_instance",
]

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



_T = TypeVar("_T")


def draw_safely(draw: Callable[[], _T]) -> _T | None:
    """``draw()``, or None after a warning on stderr if it fails: a figure never costs a run its numbers."""
    try:
        return draw()
    except Exception as exc:
        print(f"warning: figure not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None

def _style():
    """Context manager applying the module style (nothing leaks out)."""
    return matplotlib.rc_context(_STYLE)


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


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


def _series(values: Any) -> np.ndarray:
    """History list (may contain None) -> float array with NaN for None."""
    if hasattr(values, "detach"):
        return _vec(values)
    return np.array([np.nan if v is None else float(_to_numpy(v)) for v in values],
                    dtype=float)


def _positive(y: np.ndarray) -> np.ndarray:
    """Replace non-positive / non-finite values by NaN (for log axes)."""
    y = np.array(y, dtype=float)
    y[~np.isfinite(y) | (y <= 0)] = np.nan
    return y


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Atomically write ``fig`` to ``path`` (temp file + os.replace)."""
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower()
    tmp = str(readable_temp_file(path.parent, "." + path.stem + ".", path.suffix))
    try:
        fig.savefig(tmp, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path


def _build_and_save(builder, path, *args, **kwargs) -> Path:
    with _style():
        fig = builder(*args, **kwargs)
        return _save(fig, path)


def _log_norm(err: np.ndarray) -> tuple[np.ndarray, LogNorm]:
    """Clip ``err`` to a floor (1st percentile of positive values, >= 1e-10*max)
    and return it with a matching LogNorm."""
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
        x, y = self.points[:, 0], self.points[:, 1]
        wx, wy = np.ptp(x), np.ptp(y)
        if wx > 0 and wy > 0 and 0.2 <= wy / wx <= 5:
            ax.set_aspect("equal")
        return m


# --------------------------------------------------------------------------
# 1-D curves
# --------------------------------------------------------------------------

def _curves_1d_figure(x, curves: Mapping[str, Any], xlabel="x", ylabel="u",
                      title=None, logy=False) -> Figure:
    xv = _vec(x, "x")
    order = np.argsort(xv, kind="stable")
    fig = _new_figure((6.0, 4.0))
    ax = fig.add_subplot()
    for label, c in curves.items():
        cv = _vec(c, f"curve {label!r}")
        if cv.size != xv.size:
            raise ValueError(f"curve {label!r} has {cv.size} values, x has {xv.size}")
        ax.plot(xv[order], (_positive(cv) if logy else cv)[order], label=str(label),
                **_marker(xv.size))
    if logy:
        ax.set_yscale("log")
    _finish_axes(ax, title, xlabel, ylabel, legend=True)
    return fig


def plot_curves_1d(x, curves: Mapping[str, Any], path, xlabel: str = "x",
                   ylabel: str = "u", title: str | None = None,
                   logy: bool = False) -> Path:
    """Plot several curves over a common 1-D abscissa.

    x: (N,); curves: {label: (N,)} (x need not be sorted). Returns the path.
    """
    return _build_and_save(_curves_1d_figure, path, x, curves, xlabel=xlabel,
                           ylabel=ylabel, title=title, logy=logy)


# --------------------------------------------------------------------------
# 2-D fields
# --------------------------------------------------------------------------

def _field_figure(points, values, title=None, ax_labels=("x", "y"), domain=None,
                  cmap=FIELD_CMAP, label=None) -> Figure:
    layout = _FieldLayout(points, domain)
    fig = _new_figure((5.6, 4.6))
    ax = fig.add_subplot()
    m = layout.draw(ax, values, cmap=cmap)
    fig.colorbar(m, ax=ax, label=label)
    _finish_axes(ax, title, ax_labels[0], ax_labels[1], grid=False)
    return fig


def plot_field_2d(points, values, path, title: str | None = None,
                  ax_labels: Sequence[str] = ("x", "y"), domain=None,
                  cmap: str = FIELD_CMAP, label: str | None = None) -> Path:
    """Colour map of a scalar field on 2-D points, with colorbar.

    points: (N, 2); values: (N,). A full tensor grid (unique x count times
    unique y count == N) is drawn cell-by-cell with pcolormesh; scattered
    points are triangulated, masking triangles whose centroid is outside
    ``domain`` (object with ``contains((M,2)) -> bool (M,)``, numpy or torch)
    or, without a domain, triangles with an edge longer than 3x the median
    edge length (so holes and concave parts stay empty). On a grid, points
    outside ``domain`` are left blank.
    """
    return _build_and_save(_field_figure, path, points, values, title=title,
                           ax_labels=ax_labels, domain=domain, cmap=cmap, label=label)


def _comparison_1d_figure(points, prediction, reference, titles, suptitle,
                          ax_labels) -> Figure:
    x = _vec(points, "points")
    p, r = _vec(prediction, "prediction"), _vec(reference, "reference")
    if not (x.size == p.size == r.size):
        raise ValueError("points, prediction and reference must have the same length")
    order = np.argsort(x, kind="stable")
    x, p, r = x[order], p[order], r[order]
    err = np.abs(p - r)
    fig = _new_figure((10.0, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(x, r, label=titles[1], color="k", lw=2.2, alpha=0.6)
    ax1.plot(x, p, label=titles[0], color="C0", ls="--")
    _finish_axes(ax1, f"{titles[0]} vs {titles[1]}", ax_labels[0], "u", legend=True)
    pos = err[np.isfinite(err) & (err > 0)]
    floor = pos.min() if pos.size else 1e-16
    ax2.plot(x, np.maximum(err, floor), color="C1", **_marker(x.size))
    ax2.set_yscale("log")
    _finish_axes(ax2, titles[2], ax_labels[0], titles[2])
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def _comparison_figure(points, prediction, reference,
                       titles=("prediction", "reference", "|error|"), domain=None,
                       suptitle=None, log_error=False, ax_labels=("x", "y"),
                       cmap=FIELD_CMAP, error_cmap=ERROR_CMAP) -> Figure:
    pts = _to_numpy(points)
    if pts.ndim == 1 or (pts.ndim == 2 and pts.shape[1] == 1):
        return _comparison_1d_figure(pts, prediction, reference, titles, suptitle,
                                     ax_labels)
    layout = _FieldLayout(pts, domain)
    p, r = _vec(prediction, "prediction"), _vec(reference, "reference")
    err = np.abs(p - r)
    fig = _new_figure((15.0, 4.4))
    axes = fig.subplots(1, 3)
    norm = _shared_norm(p, r)
    for ax, v, t in zip(axes[:2], (p, r), titles[:2]):
        m = layout.draw(ax, v, cmap=cmap, norm=norm)
        fig.colorbar(m, ax=ax)
        _finish_axes(ax, t, ax_labels[0], ax_labels[1], grid=False)
    if log_error:
        err, enorm = _log_norm(err)
    else:
        enorm = None
    m = layout.draw(axes[2], err, cmap=error_cmap, norm=enorm)
    fig.colorbar(m, ax=axes[2])
    _finish_axes(axes[2], titles[2], ax_labels[0], ax_labels[1], grid=False)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_comparison(points, prediction, reference, path,
                    titles: Sequence[str] = ("prediction", "reference", "|error|"),
                    domain=None, suptitle: str | None = None, log_error: bool = False,
                    ax_labels: Sequence[str] = ("x", "y")) -> Path:
    """Prediction / reference / |error| figure.

    points: (N, 2) -> three colour panels (prediction and reference share one
    colour scale; the error panel has its own colorbar, log-scaled when
    ``log_error``); ``domain`` as in :func:`plot_field_2d`.
    points: (N,) or (N, 1) -> two panels: both curves, and |error| on a log
    y-axis. prediction, reference: (N,).
    """
    return _build_and_save(_comparison_figure, path, points, prediction, reference,
                           titles=tuple(titles), domain=domain, suptitle=suptitle,
                           log_error=log_error, ax_labels=tuple(ax_labels))


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


def _draw_spacetime(ax, x, t, v, cmap, norm, title, xlabel, tlabel):
    m = ax.pcolormesh(x, t, np.ma.masked_invalid(v), shading="nearest", cmap=cmap,
                      norm=norm, rasterized=True)
    _finish_axes(ax, title, xlabel, tlabel, grid=False)
    return m


def _spacetime_figure(x, t, values, title=None, xlabel="x", tlabel="t",
                      cmap=FIELD_CMAP, label=None) -> Figure:
    xs, ts, v = _spacetime_arrays(x, t, values)
    fig = _new_figure((6.0, 4.4))
    ax = fig.add_subplot()
    m = _draw_spacetime(ax, xs, ts, v, cmap, None, title, xlabel, tlabel)
    fig.colorbar(m, ax=ax, label=label)
    return fig


def plot_spacetime(x, t, values, path, title: str | None = None, xlabel: str = "x",
                   tlabel: str = "t", cmap: str = FIELD_CMAP,
                   label: str | None = None) -> Path:
    """Space-time colour map: x on the horizontal axis, t on the vertical axis.

    x: (Nx,); t: (Nt,); values: (Nt, Nx) with values[i, j] = u(x[j], t[i])
    (a flat (Nt*Nx,) array in that row-major order is also accepted).
    """
    return _build_and_save(_spacetime_figure, path, x, t, values, title=title,
                           xlabel=xlabel, tlabel=tlabel, cmap=cmap, label=label)


def _spacetime_comparison_figure(x, t, prediction, reference,
                                 titles=("prediction", "reference", "|error|"),
                                 suptitle=None, log_error=False, xlabel="x",
                                 tlabel="t") -> Figure:
    xs, ts, p = _spacetime_arrays(x, t, prediction, "prediction")
    _, _, r = _spacetime_arrays(x, t, reference, "reference")
    err = np.abs(p - r)
    fig = _new_figure((15.0, 4.4))
    axes = fig.subplots(1, 3)
    norm = _shared_norm(p, r)
    for ax, v, title in zip(axes[:2], (p, r), titles[:2]):
        m = _draw_spacetime(ax, xs, ts, v, FIELD_CMAP, norm, title, xlabel, tlabel)
        fig.colorbar(m, ax=ax)
    enorm = None
    if log_error:
        err, enorm = _log_norm(err)
    m = _draw_spacetime(axes[2], xs, ts, err, ERROR_CMAP, enorm, titles[2], xlabel,
                        tlabel)
    fig.colorbar(m, ax=axes[2])
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_spacetime_comparison(x, t, prediction, reference, path,
                              titles: Sequence[str] = ("prediction", "reference",
                                                       "|error|"),
                              suptitle: str | None = None, log_error: bool = False,
                              xlabel: str = "x", tlabel: str = "t") -> Path:
    """Three space-time panels: prediction, reference, |error|.

    x: (Nx,); t: (Nt,); prediction, reference: (Nt, Nx). x horizontal, t vertical.
    """
    return _build_and_save(_spacetime_comparison_figure, path, x, t, prediction,
                           reference, titles=tuple(titles), suptitle=suptitle,
                           log_error=log_error, xlabel=xlabel, tlabel=tlabel)


# --------------------------------------------------------------------------
# convergence histories
# --------------------------------------------------------------------------

_HISTORY_QUANTITIES = (("rel_l2", "relative L2 error"), ("residual", "residual"))
_HISTORY_AXES = (("iteration", "iteration"), ("seconds", "time [s]"))


def _has(hist: Mapping, key: str) -> bool:
    v = hist.get(key)
    return v is not None and len(v) > 0


def _histories_figure(histories: Mapping[str, Mapping[str, Sequence]],
                      title=None) -> Figure:
    quantities = [(k, lab) for k, lab in _HISTORY_QUANTITIES
                  if any(_has(h, k) for h in histories.values())]
    if not quantities:
        fig = _new_figure((6.0, 4.0))
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no 'rel_l2' or 'residual' history", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
        if title:
            fig.suptitle(title)
        return fig
    nrows = len(quantities)
    fig = _new_figure((11.0, 3.8 * nrows))
    axes = np.atleast_2d(fig.subplots(nrows, 2, squeeze=False))
    colors = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
    for row, (qkey, qlabel) in enumerate(quantities):
        for col, (xkey, xlabel) in enumerate(_HISTORY_AXES):
            ax = axes[row, col]
            for i, (method, hist) in enumerate(histories.items()):
                if not (_has(hist, qkey) and _has(hist, xkey)):
                    continue
                xs, ys = _series(hist[xkey]), _series(hist[qkey])
                if xs.size != ys.size:
                    warnings.warn(f"history {method!r}: {xkey!r} has {xs.size} entries,"
                                  f" {qkey!r} has {ys.size}; truncating", stacklevel=3)
                    n = min(xs.size, ys.size)
                    xs, ys = xs[:n], ys[:n]
                ax.plot(xs, _positive(ys), label=str(method),
                        color=colors[i % len(colors)], **_marker(xs.size))
            ax.set_yscale("log")
            _finish_axes(ax, f"{qlabel} vs {xlabel.split(' ')[0]}", xlabel, qlabel,
                         legend=(col == 0))
    if title:
        fig.suptitle(title)
    return fig


def plot_histories(histories: Mapping[str, Mapping[str, Sequence]], path,
                   title: str | None = None) -> Path:
    """Convergence figure for several methods.

    histories: {method: {"iteration": (K,), "seconds": (K,), optional
    "rel_l2": (K,), "residual": (K,)}} (None entries are skipped). Panels:
    rows = quantities present in at least one method (rel_l2, residual),
    columns = vs iteration, vs seconds; log y-axis, one line per method.
    """
    return _build_and_save(_histories_figure, path, histories, title=title)


# --------------------------------------------------------------------------
# spectra and ranks
# --------------------------------------------------------------------------

def _singular_values_figure(sigma, title=None, sigma_reduced=None,
                            labels=("singular values", "reduced")) -> Figure:
    s = _vec(sigma, "sigma")
    fig = _new_figure((6.0, 4.0))
    ax = fig.add_subplot()
    ax.plot(np.arange(1, s.size + 1), _positive(s), label=labels[0], **_marker(s.size))
    if sigma_reduced is not None:
        sr = _vec(sigma_reduced, "sigma_reduced")
        ax.plot(np.arange(1, sr.size + 1), _positive(sr), label=labels[1], ls="--",
                **_marker(sr.size))
    ax.set_yscale("log")
    _finish_axes(ax, title, "index", r"$\sigma_i$", legend=sigma_reduced is not None)
    return fig


def plot_singular_values(sigma, path, title: str | None = None, sigma_reduced=None,
                         labels: Sequence[str] = ("singular values", "reduced")) -> Path:
    """Semilog-y plot of singular values sigma: (r,) against index 1..r.

    Optional second series ``sigma_reduced``: (r',).
    """
    return _build_and_save(_singular_values_figure, path, sigma, title=title,
                           sigma_reduced=sigma_reduced, labels=tuple(labels))


def _error_vs_rank_figure(ranks, errors: Mapping[str, Any], chosen_rank=None,
                          title=None, xlabel="rank",
                          ylabel="relative L2 error") -> Figure:
    rk = _vec(ranks, "ranks")
    order = np.argsort(rk, kind="stable")
    fig = _new_figure((6.0, 4.0))
    ax = fig.add_subplot()
    for label, e in errors.items():
        ev = _vec(e, f"errors {label!r}")
        if ev.size != rk.size:
            raise ValueError(f"errors {label!r} has {ev.size} values, ranks has {rk.size}")
        ax.plot(rk[order], _positive(ev)[order], label=str(label), **_marker(rk.size))
    if chosen_rank is not None:
        ax.axvline(float(chosen_rank), color="k", ls="--", lw=1.0,
                   label=f"chosen rank = {chosen_rank:g}")
    ax.set_yscale("log")
    _finish_axes(ax, title, xlabel, ylabel, legend=True)
    return fig


def plot_error_vs_rank(ranks, errors: Mapping[str, Any], path, chosen_rank=None,
                       title: str | None = None, xlabel: str = "rank",
                       ylabel: str = "relative L2 error") -> Path:
    """Semilog-y error against rank, one line per label.

    ranks: (R,); errors: {label: (R,)}; a dashed vertical line at ``chosen_rank``.
    """
    return _build_and_save(_error_vs_rank_figure, path, ranks, errors,
                           chosen_rank=chosen_rank, title=title, xlabel=xlabel,
                           ylabel=ylabel)


def _error_per_instance_figure(before, after, title=None, xlabel="error before",
                               ylabel="error after") -> Figure:
    b, a = _vec(before, "before"), _vec(after, "after")
    if b.size != a.size:
        raise ValueError(f"before has {b.size} values, after has {a.size}")
    ok = np.isfinite(b) & np.isfinite(a) & (b > 0) & (a > 0)
    b, a = b[ok], a[ok]
    fig = _new_figure((5.0, 4.8))
    ax = fig.add_subplot()
    ax.scatter(b, a, s=14, alpha=0.75, color="C0", edgecolors="none",
               label=f"instances (n={b.size})")
    if b.size:
        lo = min(b.min(), a.min()) / 1.5
        hi = max(b.max(), a.max()) * 1.5
        ax.plot([lo, hi], [lo, hi], color="k", ls="--", lw=1.0, label="y = x")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ratio = float(np.median(a / b))
        ax.text(0.03, 0.97, f"median after/before = {ratio:.3g}",
                transform=ax.transAxes, va="top", ha="left", fontsize=9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_aspect("equal", adjustable="box")
    _finish_axes(ax, title, xlabel, ylabel, legend=True)
    return fig


def plot_error_per_instance(before, after, path, title: str | None = None,
                            xlabel: str = "error before",
                            ylabel: str = "error after") -> Path:
    """Scatter of per-instance errors after vs before, log-log, with y = x.

    before, after: (M,) (non-positive / non-finite pairs are dropped).
    """
    return _build_and_save(_error_per_instance_figure, path, before, after,
                           title=title, xlabel=xlabel, ylabel=ylabel)


def plot_rank_scan(scan, path, title: str | None = None, normalize: bool = True):
    """Error against rank of a :class:`pinnlsr.rank.RankScan`: test errors, validation error and linearized residual (each divided by
    its rank-0 value when ``normalize``), with the chosen rank marked. Returns the path."""
    curves = {f"test {k}": v for k, v in scan.test_errors.items()}
    if scan.validation_error is not None:
        curves["validation"] = scan.validation_error
    curves["linearized residual"] = scan.linearized_residual
    if normalize:
        curves = {k: [x / v[0] if v[0] > 0 else x for x in v] for k, v in curves.items()}
    return plot_error_vs_rank(scan.ranks, curves, path, chosen_rank=scan.rank, title=title,
                              ylabel="relative to the trained model" if normalize else "error")

"""Figures for PINN refinement experiments.

Two kinds of functions, on explicit :class:`matplotlib.figure.Figure` objects (no pyplot state, no
global rcParams changed):

- builders draw and return what was drawn: ``draw_*`` draw one panel into ``ax=`` (a matplotlib
  Axes, e.g. one cell of a subplot grid the caller composed) or, without one, into a new figure,
  and return the Axes (its figure is ``ax.figure``); ``*_figure`` draw several panels, into
  ``axes=`` where given, and return the Figure. Builders use the caller's rcParams; wrap them in
  ``with figure_style():`` for the look of the saved figures.
- ``plot_*`` build a figure in :func:`figure_style`, save it atomically (temporary file in the same
  folder, then ``os.replace``) and return the written path as a :class:`pathlib.Path`. Paths without
  a suffix get ``.png``; parent folders are created.

Fields (:mod:`pinnlsr.plotting_fields`) keep their aspect ratio when both axes are space, and every
colorbar is an inset as tall as its panel (compose panels in a figure with ``layout="constrained"``,
which makes room for it). Array inputs may be numpy arrays, anything ``np.asarray`` accepts,
or torch tensors (converted with ``np.asarray(x.detach().cpu())``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .io import readable_temp_file
from .plotting_fields import (FIELD_CMAP, _finish_axes, _marker, _new_figure, _panel, _to_numpy,
                              _vec, comparison_figure, draw_field_2d, draw_spacetime, figure_style,
                              spacetime_comparison_figure)

__all__ = [
    "figure_style", "draw_safely",
    "draw_curves_1d", "draw_field_2d", "draw_spacetime", "draw_singular_values",
    "draw_error_vs_rank", "draw_error_per_instance", "draw_rank_scan",
    "comparison_figure", "spacetime_comparison_figure", "histories_figure",
    "plot_curves_1d", "plot_field_2d", "plot_comparison", "plot_spacetime",
    "plot_spacetime_comparison", "plot_histories", "plot_singular_values",
    "plot_error_vs_rank", "plot_rank_scan", "plot_error_per_instance",
]

_T = TypeVar("_T")


def draw_safely(draw: Callable[[], _T]) -> _T | None:
    """``draw()``, or None after a warning on stderr if it fails: a figure never costs a run its numbers."""
    try:
        return draw()
    except Exception as exc:
        print(f"warning: figure not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


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


def _build_and_save(build, path, *args, **kwargs) -> Path:
    """Build in the figure style and save the figure of what ``build`` returns (Axes or Figure)."""
    with figure_style():
        drawn = build(*args, **kwargs)
        return _save(drawn if isinstance(drawn, Figure) else drawn.figure, path)


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


# --------------------------------------------------------------------------
# 1-D curves
# --------------------------------------------------------------------------

def draw_curves_1d(x, curves: Mapping[str, Any], xlabel: str = "x", ylabel: str = "u",
                   title: str | None = None, logy: bool = False, ax: Axes | None = None) -> Axes:
    """Several curves over a common abscissa. x: (N,), in any order; curves: {label: (N,)}."""
    xv = _vec(x, "x")
    order = np.argsort(xv, kind="stable")
    ax = _panel(ax, (6.0, 4.0))
    for label, c in curves.items():
        cv = _vec(c, f"curve {label!r}")
        if cv.size != xv.size:
            raise ValueError(f"curve {label!r} has {cv.size} values, x has {xv.size}")
        ax.plot(xv[order], (_positive(cv) if logy else cv)[order], label=str(label),
                **_marker(xv.size))
    if logy:
        ax.set_yscale("log")
    _finish_axes(ax, title, xlabel, ylabel, legend=True)
    return ax


# --------------------------------------------------------------------------
# convergence histories
# --------------------------------------------------------------------------

_HISTORY_QUANTITIES = (("rel_l2", "relative L2 error"), ("residual", "residual"))
_HISTORY_AXES = (("iteration", "iteration"), ("seconds", "time [s]"))


def _has(hist: Mapping, key: str) -> bool:
    v = hist.get(key)
    return v is not None and len(v) > 0


def histories_figure(histories: Mapping[str, Mapping[str, Sequence]],
                     title: str | None = None) -> Figure:
    """Convergence figure for several methods; returns the Figure.

    histories: {method: {"iteration": (K,), "seconds": (K,), optional "rel_l2": (K,),
    "residual": (K,)}} (None entries are skipped). Panels: rows = quantities present in at least one
    method (rel_l2, residual), columns = vs iteration, vs seconds; log y-axis, one line per method.
    """
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


# --------------------------------------------------------------------------
# spectra, ranks and instances
# --------------------------------------------------------------------------

def draw_singular_values(sigma, title: str | None = None, sigma_reduced=None,
                         labels: Sequence[str] = ("singular values", "reduced"),
                         ax: Axes | None = None) -> Axes:
    """Semilog-y singular values sigma: (r,) against index 1..r; optional second series
    ``sigma_reduced``: (r',)."""
    s = _vec(sigma, "sigma")
    ax = _panel(ax, (6.0, 4.0))
    ax.plot(np.arange(1, s.size + 1), _positive(s), label=labels[0], **_marker(s.size))
    if sigma_reduced is not None:
        sr = _vec(sigma_reduced, "sigma_reduced")
        ax.plot(np.arange(1, sr.size + 1), _positive(sr), label=labels[1], ls="--",
                **_marker(sr.size))
    ax.set_yscale("log")
    _finish_axes(ax, title, "index", r"$\sigma_i$", legend=sigma_reduced is not None)
    return ax


def draw_error_vs_rank(ranks, errors: Mapping[str, Any], chosen_rank=None, title: str | None = None,
                       xlabel: str = "rank", ylabel: str = "relative L2 error",
                       ax: Axes | None = None) -> Axes:
    """Semilog-y error against rank, one line per label; ranks: (R,), errors: {label: (R,)}; a
    dashed vertical line at ``chosen_rank``."""
    rk = _vec(ranks, "ranks")
    order = np.argsort(rk, kind="stable")
    ax = _panel(ax, (6.0, 4.0))
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
    return ax


def draw_rank_scan(scan, title: str | None = None, normalize: bool = True,
                   ax: Axes | None = None) -> Axes:
    """Error against rank of a :class:`pinnlsr.rank.RankScan`: test errors, validation error and
    linearized residual (each divided by its rank-0 value when ``normalize``), the chosen rank marked."""
    curves = {f"test {k}": v for k, v in scan.test_errors.items()}
    if scan.validation_error is not None:
        curves["validation"] = scan.validation_error
    curves["linearized residual"] = scan.linearized_residual
    if normalize:
        curves = {k: [x / v[0] if v[0] > 0 else x for x in v] for k, v in curves.items()}
    return draw_error_vs_rank(scan.ranks, curves, chosen_rank=scan.rank, title=title, ax=ax,
                              ylabel="relative to the trained model" if normalize else "error")


def draw_error_per_instance(before, after, title: str | None = None, xlabel: str = "error before",
                            ylabel: str = "error after", ax: Axes | None = None) -> Axes:
    """Log-log scatter of per-instance errors after against before, with y = x.
    before, after: (M,) (non-positive / non-finite pairs are dropped)."""
    b, a = _vec(before, "before"), _vec(after, "after")
    if b.size != a.size:
        raise ValueError(f"before has {b.size} values, after has {a.size}")
    ok = np.isfinite(b) & np.isfinite(a) & (b > 0) & (a > 0)
    b, a = b[ok], a[ok]
    ax = _panel(ax, (5.0, 4.8))
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
    return ax


# --------------------------------------------------------------------------
# saved figures: each builds in figure_style() and returns the written path
# --------------------------------------------------------------------------

def plot_curves_1d(x, curves: Mapping[str, Any], path, xlabel: str = "x", ylabel: str = "u",
                   title: str | None = None, logy: bool = False) -> Path:
    """:func:`draw_curves_1d` saved to ``path``."""
    return _build_and_save(draw_curves_1d, path, x, curves, xlabel=xlabel, ylabel=ylabel,
                           title=title, logy=logy)


def plot_field_2d(points, values, path, title: str | None = None,
                  ax_labels: Sequence[str] = ("x", "y"), domain=None, cmap: str = FIELD_CMAP,
                  label: str | None = None) -> Path:
    """:func:`draw_field_2d` saved to ``path``."""
    return _build_and_save(draw_field_2d, path, points, values, title=title,
                           ax_labels=tuple(ax_labels), domain=domain, cmap=cmap, label=label)


def plot_comparison(points, prediction, reference, path,
                    titles: Sequence[str] = ("prediction", "reference", "|error|"),
                    domain=None, suptitle: str | None = None, log_error: bool = False,
                    ax_labels: Sequence[str] = ("x", "y")) -> Path:
    """:func:`comparison_figure` saved to ``path``."""
    return _build_and_save(comparison_figure, path, points, prediction, reference,
                           titles=tuple(titles), domain=domain, suptitle=suptitle,
                           log_error=log_error, ax_labels=tuple(ax_labels))


def plot_spacetime(x, t, values, path, title: str | None = None, xlabel: str = "x",
                   tlabel: str = "t", cmap: str = FIELD_CMAP, label: str | None = None) -> Path:
    """:func:`draw_spacetime` saved to ``path``."""
    return _build_and_save(draw_spacetime, path, x, t, values, title=title, xlabel=xlabel,
                           tlabel=tlabel, cmap=cmap, label=label)


def plot_spacetime_comparison(x, t, prediction, reference, path,
                              titles: Sequence[str] = ("prediction", "reference", "|error|"),
                              suptitle: str | None = None, log_error: bool = False,
                              xlabel: str = "x", tlabel: str = "t") -> Path:
    """:func:`spacetime_comparison_figure` saved to ``path``."""
    return _build_and_save(spacetime_comparison_figure, path, x, t, prediction, reference,
                           titles=tuple(titles), suptitle=suptitle, log_error=log_error,
                           xlabel=xlabel, tlabel=tlabel)


def plot_histories(histories: Mapping[str, Mapping[str, Sequence]], path,
                   title: str | None = None) -> Path:
    """:func:`histories_figure` saved to ``path``."""
    return _build_and_save(histories_figure, path, histories, title=title)


def plot_singular_values(sigma, path, title: str | None = None, sigma_reduced=None,
                         labels: Sequence[str] = ("singular values", "reduced")) -> Path:
    """:func:`draw_singular_values` saved to ``path``."""
    return _build_and_save(draw_singular_values, path, sigma, title=title,
                           sigma_reduced=sigma_reduced, labels=tuple(labels))


def plot_error_vs_rank(ranks, errors: Mapping[str, Any], path, chosen_rank=None,
                       title: str | None = None, xlabel: str = "rank",
                       ylabel: str = "relative L2 error") -> Path:
    """:func:`draw_error_vs_rank` saved to ``path``."""
    return _build_and_save(draw_error_vs_rank, path, ranks, errors, chosen_rank=chosen_rank,
                           title=title, xlabel=xlabel, ylabel=ylabel)


def plot_rank_scan(scan, path, title: str | None = None, normalize: bool = True) -> Path:
    """:func:`draw_rank_scan` saved to ``path``."""
    return _build_and_save(draw_rank_scan, path, scan, title=title, normalize=normalize)


def plot_error_per_instance(before, after, path, title: str | None = None,
                            xlabel: str = "error before", ylabel: str = "error after") -> Path:
    """:func:`draw_error_per_instance` saved to ``path``."""
    return _build_and_save(draw_error_per_instance, path, before, after, title=title,
                           xlabel=xlabel, ylabel=ylabel)

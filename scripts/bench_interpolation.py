"""Time pinnlsr's interpolation of the shared references against SciPy's, and check they agree.

For every case the same M query points (uniform in the bounding box of the reference points,
seed 0) go through
  walk      pinnlsr.interpolation's Delaunay walk (what ``interpolate`` uses for scattered data);
  linearnd  scipy.interpolate.LinearNDInterpolator(points, values, rescale=True);
  griddata  scipy.interpolate.griddata(..., method="linear", rescale=True) (grid files only);
  rgi       scipy.interpolate.RegularGridInterpolator (grid files only; what ``interpolate`` uses there).
Each time is build + one query of the file's outputs and one linear column, the best of up to
--repeats runs (a run over 30 s is not repeated), with 1 torch thread and SciPy inside
``threadpoolctl.threadpool_limits(--blas-threads)``.

Cases: the scattered 2-D references (Poisson_Lshape.npz, the PINNacle .dat files), a space-time
case in the layout of a time-dependent COMSOL export (poisson_boltzmann2d.dat nodes x 11 times,
u(x, y)(1 + t)), and the grid references (Burgers.npz, stokes.npz, jaxpi allen_cahn.mat).

Agreement: ``linear`` is the largest error of any method on the linear column (every
piecewise-linear interpolant reproduces a linear function, so this must be ~1e-15);
``field`` is the largest difference between walk and linearnd on the file's own values (they
differ where the Delaunay triangulation is not unique, e.g. nodes on a grid, since the walk
triangulates slightly joggled points); ``n>1e-12`` counts the query points where they differ by
more than 1e-12; ``hull`` says whether both leave the same points (outside the convex hull) NaN;
``flat simplices`` counts the zero-volume simplices of Qhull's triangulation as LinearND builds it
(SciPy searches the simplex of a query point by brute force when its walk meets one).

    python scripts/bench_interpolation.py                     # needs threadpoolctl and ../shared/data
    python scripts/bench_interpolation.py --blas-threads 0 --cases Lshape lid_driven --repeats 1
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.interpolate import LinearNDInterpolator, RegularGridInterpolator, griddata

from pinnlsr.datafolder import data_file
from pinnlsr.datasets import load_allen_cahn_mat, load_burgers_npz, load_poisson_lshape, load_stokes
from pinnlsr.interpolation import _LinearSimplexInterpolator
from pinnlsr.io import atomic_write_json
from pinnlsr.readers import load_reference

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - a message instead of a traceback
    raise SystemExit("this benchmark needs threadpoolctl: pip install threadpoolctl") from None


def space_time(name: str, n_times: int = 11):
    """(points (N n_times, 3), values (N n_times, 1)): the nodes of a 2-D reference at n_times
    times in [0, 1] with u(x, y)(1 + t), the layout of a time-dependent COMSOL export."""
    ref = load_reference(data_file(name))
    t = np.linspace(0.0, 1.0, n_times)
    pts = np.column_stack([np.repeat(ref.points, n_times, 0), np.tile(t, len(ref))])
    return pts, np.repeat(ref.values, n_times, 0) * (1 + np.tile(t, len(ref)))[:, None]


def cases():
    """{name: (points (N, d), values (N, k), grid axes or None)}."""
    lshape = load_poisson_lshape()
    out = {"Poisson_Lshape.npz": (lshape.points, lshape.values, None)}
    for name in ("lid_driven_a4", "ns_0_obstacle", "poisson1_cg_data", "poisson_boltzmann2d"):
        ref = load_reference(data_file(f"pinnacle/{name}.dat"))
        out[f"{name}.dat"] = (ref.points, ref.values, None)
    out["poisson_boltzmann2d.dat x 11 times"] = (*space_time("pinnacle/poisson_boltzmann2d.dat"), None)
    for name, ref in (("Burgers.npz", load_burgers_npz()), ("stokes.npz", load_stokes()),
                      ("jaxpi allen_cahn.mat", load_allen_cahn_mat(variant="jaxpi"))):
        out[name] = (ref.points, ref.values, ref.axes)
    return out


def best_time(run, repeats: int):
    """(best seconds, last result) of up to ``repeats`` calls; a call over 30 s is not repeated."""
    best, result = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - t0)
        if best > 30:
            break
    return best, result


def methods(points, values, axes, q, blas_threads):
    """{name: () -> (M, k) values at q}; SciPy runs under the BLAS thread limit (0: none)."""

    def scipy(fn):
        def run():
            with threadpool_limits(limits=blas_threads if blas_threads > 0 else None):
                return fn()
        return run

    out = {"walk": lambda: _LinearSimplexInterpolator(points, values)(q),
           "linearnd": scipy(lambda: LinearNDInterpolator(points, values, rescale=True)(q))}
    if axes is not None:
        grid_vals = values.reshape(*(len(a) for a in axes), values.shape[1])
        lo, hi = [a[0] for a in axes], [a[-1] for a in axes]
        out["griddata"] = scipy(lambda: griddata(points, values, q, method="linear", rescale=True))
        out["rgi"] = scipy(lambda: RegularGridInterpolator(axes, grid_vals)(np.clip(q, lo, hi)))
    return out


def flat_simplices(points, blas_threads) -> tuple[int, int]:
    """(flat, all) simplices of Qhull's triangulation of the rescaled points, as LinearND builds it."""
    from scipy.spatial import Delaunay

    lo, span = points.min(0), np.ptp(points, axis=0)
    tri = Delaunay((points - lo) / np.where(span > 0, span, 1.0))
    with threadpool_limits(limits=blas_threads if blas_threads > 0 else None):
        return int(np.isnan(tri.transform).any(axis=(1, 2)).sum()), len(tri.simplices)


def max_diff(a, b) -> tuple[float, int, bool]:
    """(max |a - b| where both are finite, rows differing by more than 1e-12, same NaN rows)."""
    both = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    d = np.abs(a[both] - b[both]).max(axis=1) if both.any() else np.zeros(0)
    same_nan = np.array_equal(np.isfinite(a), np.isfinite(b))
    return float(d.max(initial=0.0)), int((d > 1e-12).sum()), bool(same_nan)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=20000, help="query points M (default 20000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--blas-threads", type=int, default=1, help="threadpool limit around SciPy; 0: none")
    ap.add_argument("--cases", nargs="*", help="only the cases whose name contains one of these words")
    ap.add_argument("--out", help="also write the results to this JSON file")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print(f"M = {args.points} query points, best of {args.repeats}, SciPy BLAS threads "
          f"{args.blas_threads or 'unlimited'}; seconds (build + query)")
    for name, (points, values, axes) in cases().items():
        if args.cases and not any(word in name for word in args.cases):
            continue
        lo, hi = points.min(0), points.max(0)
        q = np.random.default_rng(0).uniform(lo, hi, (args.points, points.shape[1]))
        coef = np.arange(1.0, points.shape[1] + 1)
        # the file's outputs and one linear column, interpolated together
        both = np.column_stack([values, 0.5 + points @ coef])
        times, result = {}, {}
        for m, run in methods(points, both, axes, q, args.blas_threads).items():
            times[m], result[m] = best_time(run, args.repeats)
        field = {m: r[:, :-1] for m, r in result.items()}
        exact = (0.5 + q @ coef)[:, None]
        lin_err = max(max_diff(r[:, -1:], exact)[0] for r in result.values())
        d, n_big, same_nan = max_diff(field["walk"], field["linearnd"])
        flat = flat_simplices(points, args.blas_threads)
        row = dict(case=name, n=len(points), d=points.shape[1], seconds=times, ratio_linearnd_to_walk=
                   times["linearnd"] / times["walk"], linear_max_diff=lin_err, field_max_diff=d,
                   field_points_over_1e12=n_big, same_outside_hull=same_nan, flat_simplices=flat)
        rows.append(row)
        t = "  ".join(f"{m} {s:8.3f}" for m, s in times.items())
        print(f"{name:36s} N={len(points):6d}  {t}  linearnd/walk {row['ratio_linearnd_to_walk']:7.1f}x  "
              f"linear {lin_err:.1e}  field {d:.1e} (n>1e-12: {n_big})  "
              f"hull {'same' if same_nan else 'DIFFERS'}  flat simplices {flat[0]}/{flat[1]}", flush=True)
    if args.out:
        atomic_write_json(args.out, {"points": args.points, "repeats": args.repeats,
                                     "blas_threads": args.blas_threads, "cases": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

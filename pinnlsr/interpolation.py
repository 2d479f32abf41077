"""Interpolation of reference data onto requested points (:func:`interpolate`, :func:`make_interpolator`).

Grids go through ``scipy.interpolate.RegularGridInterpolator``; scattered data in 2 or more
dimensions through a hand-written walk on a Delaunay triangulation (:class:`_LinearSimplexInterpolator`)
instead of ``scipy.interpolate.LinearNDInterpolator`` ("LinearND"), which takes 0.7-1.7x the walk's
time in 2-D but 72x on space-time data. Measured with ``python scripts/bench_interpolation.py``
(20,000 query points uniform in the bounding box, build + query, best of 3, 1 torch thread,
SciPy inside ``threadpoolctl.threadpool_limits(1)``; 2 busy CPU cores, SciPy 1.17, NumPy 2.4):

==================================  ======  =======  ===========  ===============  ========================
reference (scattered)               N       walk, s  LinearND, s  LinearND / walk  max abs(walk - LinearND)
==================================  ======  =======  ===========  ===============  ========================
ns_0_obstacle.dat                   12,910  0.214    0.154        0.7x             7.0e-15
poisson1_cg_data.dat                1,246   0.028    0.035        1.3x             8.0e-16
poisson_boltzmann2d.dat             3,236   0.057    0.057        1.0x             1.4e-15
Poisson_Lshape.npz (grid nodes)     19,521  0.274    0.454        1.7x             3.4e-4 (triangulation)
lid_driven_a4.dat (grid nodes)      10,201  0.102    0.170        1.7x             1.7e-3 (triangulation)
poisson_boltzmann2d.dat x 11 times  35,596  2.164    156.6        72x              2.5e-2 (triangulation)
==================================  ======  =======  ===========  ===============  ========================

Where the Delaunay triangulation is unique the two agree to 1e-14. Where nodes are co-circular
(grid nodes; space-time nodes repeated at every time) each picks a different valid triangulation
and the values differ by the interpolation error, while every method reproduces a linear field to
2e-13. On the space-time case (the layout of PINNacle's time-dependent exports) Qhull leaves
34,684 flat simplices of 222,784 and LinearND searches by brute force. Without the thread limit
(``--blas-threads 0``) LinearND took 2.5-46 s instead of 0.45 s on the L-shape in repeated runs:
SciPy makes one small LAPACK call per simplex. On the grid references (Burgers.npz, stokes.npz,
jaxpi allen_cahn.mat: 10,201-102,912 nodes) ``RegularGridInterpolator`` takes 0.006-0.008 s, the
walk 0.12-1.6 s, LinearND and ``griddata`` 0.24-3.2 s.
"""

from __future__ import annotations

import numpy as np

from .reference import ReferenceData, grid_axes

__all__ = ["interpolate", "make_interpolator"]


class _LinearSimplexInterpolator:
    """Piecewise-linear interpolation on a Delaunay triangulation; NaN outside the hull.

    ``points (N, d)``, ``values (N, k)``; calling it with ``q (M, d)`` gives ``(M, k)``. The result
    of ``scipy.interpolate.LinearNDInterpolator(points, values, rescale=True)`` (to 1e-14 where
    the Delaunay triangulation is unique), but the barycentric transforms come from one batched
    ``numpy.linalg.inv`` and the containing simplex from a vectorised visibility walk, then, for
    points whose walk stops at a flat simplex or a hull face, from the simplices around their
    nearest vertices (points still not found get NaN). Measured (module docstring), LinearND takes
    0.7-1.3x the walk's time on the unstructured 2-D references, 1.7x on 2-D grid nodes and 72x
    on space-time nodes (157 s against 2.2 s for 35,596 nodes), where Qhull leaves flat simplices
    and SciPy searches by brute force.
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
    grid = (ref.axes, np.arange(len(ref))) if ref.axes is not None else grid_axes(ref.points)

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
    ``np.interp`` in 1-D, which clamps) with nearest-neighbour values outside the convex hull.
    For repeated calls use :func:`make_interpolator`.
    """
    return make_interpolator(ref)(points)

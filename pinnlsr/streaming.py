"""Streaming least squares for many rows: TSQR over row batches of G·V.

For n rows far above what fits as a dense (n, r) matrix, the reduced problem min_z ||G V z + f0||
is factored batch by batch. Each batch of points gives A_k = (G V)[rows_k] (c_k, r) and
b_k = -f0[rows_k]; the running upper-triangular factor R̂ of the augmented matrix [A | b] is
updated by one Householder QR of the stacked (r+1+c_k, r+1) matrix [R̂; A_k b_k] (tall-skinny QR),
so memory stays O(r² + c_k·(m + r)) whatever n is.

At the end R̂ = [[R, c], [0, ρ]] with A = Q R, c = Qᵀb and ρ = ||b - Q Qᵀ b||: the same triangular
factor a dense QR of [A | b] gives (up to row signs). Solving the small system min ||R z - c|| with
the dense solvers of :mod:`pinnlsr.solvers` returns the same z as the dense path (A and R share
singular values and right singular vectors, and Uᵀb = U_Rᵀc), and ||A z - b||² = ||R z - c||² + ρ².
The factor is nested: its leading r'×r' block is the QR factor of the first r' columns, which the
rank scan of :mod:`pinnlsr.rank` uses.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from . import jacobian as jac
from .linearize import JacobianOperator
from .qr import Reducer, StreamingR, r_factor
from .residual import Rows
from .solvers import LeastSquaresSolution, no_tf32, solve


@dataclass
class TriangularFactor:
    """Upper-triangular factor of the augmented system [A | b], A = G V (n, r), b = -f0 (n,).

    ``R`` (r, r) with A = Q R; ``c`` = Qᵀ b (r,); ``rho`` = ||b - Q Qᵀ b|| (the residual left when
    every column is used); ``b_norm`` = ||b||; ``n_rows`` = n; ``n_batches`` row batches streamed."""

    R: torch.Tensor
    c: torch.Tensor
    rho: float
    b_norm: float
    n_rows: int
    n_batches: int = 1

    @property
    def rank(self) -> int:
        return self.R.shape[0]

    @classmethod
    def from_augmented(cls, r_aug: torch.Tensor, b_norm: float, n_rows: int, n_batches: int) -> "TriangularFactor":
        r = r_aug.shape[1] - 1
        return cls(r_aug[:r, :r].clone(), r_aug[:r, r].clone(), float(r_aug[r, r].abs()), b_norm, n_rows, n_batches)

    def solve(self, solver: str = "svd", rcond: float | None = 1e-14, tikhonov: float = 0.0) -> LeastSquaresSolution:
        """min_z ||A z - b|| (+ λ²||z||²) through the small system R z ≈ c; residual_norm is ||A z - b||."""
        sol = solve(self.R, self.c, solver, rcond if solver == "svd" else None, tikhonov)
        sol.residual_norm = math.sqrt(sol.residual_norm**2 + self.rho**2)
        return sol


def _square(r: torch.Tensor) -> torch.Tensor:
    """An R factor (≤ k, k) padded with zero rows to (k, k)."""
    k = r.shape[1]
    return r if r.shape[0] == k else torch.cat([r, r.new_zeros(k - r.shape[0], k)])


def dense_factor(a: torch.Tensor, b: torch.Tensor) -> TriangularFactor:
    """The factor of a dense system A (n, r), b (n,) from one Householder QR of [A | b]."""
    if a.ndim != 2 or b.shape != (a.shape[0],):
        raise ValueError(f"dense_factor: need A (n, r) and b (n,), got {tuple(a.shape)} and {tuple(b.shape)}")
    with no_tf32():
        r_aug = _square(r_factor(torch.cat([a, b.unsqueeze(1)], 1)))
    return TriangularFactor.from_augmented(r_aug, float(b.norm()), a.shape[0], 1)


def batch_points(rows: Rows, r: int, memory_budget: int | None, dtype: torch.dtype, device, mode: str) -> int:
    """Points per batch so that a batch's Jacobian rows and its (c, r+1) product fit the budget."""
    if mode in ("explicit", "auto"):
        return jac.points_per_chunk(rows, memory_budget, dtype, device, extra_columns=2 * (r + 1))
    budget = jac.default_memory_budget(device) if memory_budget is None else int(memory_budget)
    q_max = max(b.q for b in rows.blocks)
    per_point = q_max * 4 * (r + 1) * torch.empty((), dtype=dtype).element_size()
    n = budget // per_point
    if n < 1:
        raise ValueError(f"memory budget of {budget} bytes cannot hold one point's rows of G·V (r = {r}): raise it")
    return int(n)


def tsqr(rows: Rows, theta: torch.Tensor, V: torch.Tensor, memory_budget: int | None = None,
         mode: str = "auto", points_per_batch: int | None = None, reducer: Reducer | None = None,
         engine=None) -> TriangularFactor:
    """Stream the rows of G·V and -f(theta) in batches and reduce them to a :class:`TriangularFactor`.

    Args:
        rows: the stacked residual (e.g. from :func:`pinnlsr.residual.residual_rows`), n rows.
        theta: parameters (m,) where G and f are evaluated.
        V: subspace basis (m, r).
        memory_budget: bytes for one batch (default: from free memory); sets the batch size, and
            whether [G V | -f] is kept whole until one QR (at most a quarter of the budget) or
            folded into R as it comes (a streaming TSQR).
        mode: the backend of the rows of G (see :mod:`pinnlsr.linearize`).
        points_per_batch: override the batch size (points per batch, per block); folds every batch.
        reducer: combines the factors of several processes (:mod:`pinnlsr.distributed`): the rows
            are then this process's share, and the factor is that of all processes' rows.
        engine: the :class:`pinnlsr.engine.StructuredJacobian` of ``rows`` to reuse (mode "auto").

    NaN or Inf residual values raise a FloatingPointError naming the term, on every process.
    """
    if V.ndim != 2 or V.shape[0] != rows.m:
        raise ValueError(f"tsqr: basis must have shape (m, r) with m = {rows.m} parameters, got {tuple(V.shape)}")
    reducer = reducer or Reducer()
    r = V.shape[1]
    chunk = points_per_batch or batch_points(rows, r, memory_budget, theta.dtype, theta.device, mode)
    if chunk < 1:
        raise ValueError(f"tsqr: points_per_batch must be >= 1, got {chunk}")
    budget = jac.default_memory_budget(theta.device) if memory_budget is None else int(memory_budget)
    row_bytes = (r + 1) * theta.element_size()
    if points_per_batch is not None:
        buffer_rows = 1  # fold every batch
    elif rows.n_rows * row_bytes <= budget // 4:
        buffer_rows = rows.n_rows  # one QR of the whole matrix
    else:
        buffer_rows = max(2 * (r + 1), budget // (4 * row_bytes))
    acc = StreamingR(buffer_rows)
    b_sq = theta.new_zeros(1)  # summed on the device: no host sync per batch
    finite = {block.name: torch.ones((), dtype=torch.bool, device=theta.device) for block in rows.blocks}
    n_batches = 0
    if mode == "auto" and engine is None:
        engine = JacobianOperator(rows, theta, mode, memory_budget).engine
    with no_tf32():
        for block, _, pts, data in rows.chunks(chunk):
            if engine is not None:  # jet rows with their values
                g, vals = engine.block_rows_and_values(block, theta, pts, data, values=True)
                a, b = g @ V, -vals
            else:
                sub = Rows([dataclasses.replace(block, points=pts, data=data)], rows.spec, rows.eval_chunk)
                a = jac.apply(sub, theta, V, mode, memory_budget)  # (c·q, r)
                b = -sub.values(theta, check=False)  # (c·q,)
            finite[block.name] &= torch.isfinite(b).all()
            acc.add(torch.cat([a, b.unsqueeze(1)], 1))
            b_sq += b.dot(b)
            n_batches += 1
        bad = [name for name, ok in finite.items() if not bool(ok)]
        if reducer.any_(bool(bad)):  # every process stops, none waits in the next collective
            if bad:
                raise FloatingPointError(
                    f"residual term {bad[0]!r} has NaN or Inf values at the current parameters: check the "
                    "network's parameters and outputs (a diverged training run?) and the term's residual "
                    "function for divisions by zero or logs of negative numbers")
            raise FloatingPointError("the residual has NaN or Inf values on another process's points: "
                                     "check the network and the residual functions there")
        r_aug = _square(reducer.stack_r(_square(acc.result())))
        reducer.sum_(b_sq)
    return TriangularFactor.from_augmented(r_aug, math.sqrt(float(b_sq)), rows.n_rows, n_batches)


def streaming_lstsq(rows: Rows, theta: torch.Tensor, V: torch.Tensor, memory_budget: int | None = None,
                    *, mode: str = "auto", solver: str = "svd", rcond: float | None = 1e-14,
                    tikhonov: float = 0.0, points_per_batch: int | None = None) -> LeastSquaresSolution:
    """min_z ||G V z + f(theta)|| by TSQR over row batches; same z as
    ``solve(apply(rows, theta, V), -rows.values(theta), solver, rcond, tikhonov)`` without holding
    the (n, r) matrix. Returns a :class:`~pinnlsr.solvers.LeastSquaresSolution` whose
    ``residual_norm`` is the linearized residual ||G V z + f||."""
    factor = tsqr(rows, theta, V, memory_budget, mode, points_per_batch)
    return factor.solve(solver, rcond, tikhonov)


__all__ = ["TriangularFactor", "dense_factor", "batch_points", "tsqr", "streaming_lstsq"]

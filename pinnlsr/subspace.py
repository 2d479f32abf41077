"""Subspaces of parameter space for LSR: the basis V (m, r) of the step δ = V z.

Three methods, recorded in :class:`Basis.method`:

- ``"full"``: V = I (r = m), the whole parameter space; fine for small networks.
- ``"svd"``: the top-r right singular vectors of the output Jacobian J (n_out, m), from an exact
  SVD of the dense J (small m).
- ``"randomized"``: a randomized range finder on Jᵀ (Halko, Martinsson & Tropp 2011): Y = Jᵀ Ω
  with a Gaussian Ω of r + p columns, optional power iterations, Q = orth(Y), then the SVD of the
  small J Q gives the top-r directions.

With ``scale=True`` (default) the directions are divided by their singular values, V = W·diag(1/σ),
so J V has orthonormal columns. This keeps cond(G V) near the conditioning of the PDE operator
instead of that of the network. Directions are kept down to σ > rcond·σ_max with rcond = 0 by
default: even directions whose σ is below float64 resolution (and so are not accurate singular
vectors) are valid search directions, and the reduced solve's own rcond decides what is used. On
poisson2d this takes r = 500 from 5.6e-8 (directions cut at 5e-13·σ_max) to 9.9e-11.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import jacobian as jac
from .linearize import JacobianOperator
from .residual import Rows
from .qr import Reducer, canonical_svd, fast_r_factor, orthonormalize, right_svd
from .solvers import no_tf32


@dataclass
class Basis:
    """A subspace basis and how it was made."""

    V: torch.Tensor  # (m, r)
    method: str  # "full" | "svd" | "randomized"
    rank: int
    singular_values: torch.Tensor | None  # of the output Jacobian (or its sketch), descending
    oversampling: int = 0
    power_iterations: int = 0
    scaled: bool = False


def full_basis(m: int, dtype: torch.dtype, device) -> Basis:
    """V = I (m, m)."""
    return Basis(torch.eye(m, dtype=dtype, device=device), "full", m, None)


def scaled_directions(w: torch.Tensor, s: torch.Tensor, rank: int, scale: bool,
                      rcond: float) -> tuple[torch.Tensor, int | torch.Tensor]:
    """Keep the top ``rank`` directions (columns of w) whose σ exceeds rcond·σ_max; scale by 1/σ.

    Returns (V (m, r), r). For a stack, w (B, m, k) and s (B, k), each system keeps its own
    count: V is (B, m, min(rank, k)) with the directions past a system's count set to zero, and
    r the counts (B,) (a tensor: no host synchronization beyond the check for a zero Jacobian)."""
    if s.ndim > 1:
        s_max = s[..., :1]
        counts = ((s > rcond * s_max) & (s_max > 0)).sum(-1)
        if not bool((counts > 0).all()):
            raise ValueError("the Jacobian is zero: the network does not depend on its parameters here")
        r = min(rank, s.shape[-1])
        used = torch.arange(r, device=s.device) < counts.unsqueeze(-1)  # (B, r)
        v = w[..., :r]
        if scale:
            v = v / torch.where(used, s[..., :r], 1.0).unsqueeze(-2)
        return torch.where(used.unsqueeze(-2), v, 0.0), counts.clamp(max=r)
    keep = int((s > rcond * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    r = min(rank, keep)
    if r == 0:
        raise ValueError("the Jacobian is zero: the network does not depend on its parameters here")
    v = w[:, :r]
    if scale:
        v = v / s[:r]
    return v, r


def svd_basis(rows: Rows, theta: torch.Tensor, rank: int, scale: bool = True,
              rcond: float | None = None, memory_budget: int | None = None) -> Basis:
    """Top-``rank`` right singular vectors of the dense output Jacobian J (n_out, m)."""
    with no_tf32():
        s, vh = right_svd(jac.jacobian(rows, theta, memory_budget))
    v, r = scaled_directions(vh.T, s, rank, scale, 0.0 if rcond is None else rcond)
    return Basis(v, "svd", r, s, scaled=scale)


def sketch_svd(op, rank: int, oversampling: int = 10, power_iterations: int = 0,
               generator: torch.Generator | None = None, omega: torch.Tensor | None = None,
               reducer: Reducer | None = None, left: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Randomized SVD G ≈ U S Wᵀ of a Jacobian operator (Halko, Martinsson & Tropp 2011): Y = Gᵀ Ω
    with a Gaussian Ω of rank + oversampling columns, optional power iterations, Q = orth(Y), then
    the SVD of the small G Q. Returns (W (m, k), S (k,), U (n, k)), k = min(rank + oversampling, m, n);
    U only with ``left`` (else None: W and S come from the R factor of the tall G Q, see
    :func:`pinnlsr.qr.right_svd`).

    ``op``: anything with ``shape`` (n, m), ``theta`` (its dtype and device), ``matmul`` (G·V) and
    ``rmatmul`` (Gᵀ·W): :class:`pinnlsr.linearize.JacobianOperator` or the DeepXDE operator of
    :mod:`pinnlsr.interop.deepxde`. Ω is drawn on the CPU from ``generator`` (or given: ``omega``
    (n, k)) so the same seed gives the same directions on every device.

    A stack of B Jacobians (an ``op`` whose products take and return (B, ·, ·) stacks, e.g.
    :class:`pinnlsr.instance_batch.BatchOperator`) is sketched at once with a given ``omega``
    (B, n, k): batched QR and SVD, results with the leading dimension B.

    With a ``reducer`` (rows shared out over processes, :mod:`pinnlsr.distributed`) Y is summed
    over processes, Q agreed, and the SVD taken of the R factor of G Q over all processes' rows with
    a canonical sign per direction (no power iterations); U is then None."""
    n, m = op.shape
    width = min(rank + oversampling, m, n) if omega is None else omega.shape[-1]
    if omega is None:
        omega = torch.randn(n, width, generator=generator, dtype=op.theta.dtype)
    omega = omega.to(op.theta.device)
    with no_tf32():
        y = op.rmatmul(omega)  # (m, width)
        if reducer is not None:
            reducer.sum_(y)
            q = reducer.agree(orthonormalize(y))
            r_b = reducer.stack_r(fast_r_factor(op.matmul(q)))
            _, s, vh = canonical_svd(r_b)
            return q @ vh.T, s, None
        q, _ = torch.linalg.qr(y)
        for _ in range(power_iterations):
            zq, _ = torch.linalg.qr(op.matmul(q))  # (n, width)
            q, _ = torch.linalg.qr(op.rmatmul(zq))
        if not left:
            s, vh = right_svd(op.matmul(q))  # G Q = U S Zᵀ
            return q @ vh.mT, s, None
        u, s, vh = torch.linalg.svd(op.matmul(q), full_matrices=False)
        return q @ vh.mT, s, u


def randomized_basis(rows: Rows, theta: torch.Tensor, rank: int, oversampling: int = 10,
                     power_iterations: int = 0, generator: torch.Generator | None = None,
                     scale: bool = True, rcond: float | None = None, mode: str = "auto",
                     memory_budget: int | None = None) -> Basis:
    """Randomized range finder on Jᵀ (:func:`sketch_svd`): V spans (approximately) the
    top-``rank`` right singular vectors of the output Jacobian."""
    op = JacobianOperator(rows, theta, mode, memory_budget)
    w, s, _ = sketch_svd(op, rank, oversampling, power_iterations, generator)
    v, r = scaled_directions(w, s, rank, scale, 0.0 if rcond is None else rcond)
    return Basis(v, "randomized", r, s, oversampling, power_iterations, scale)

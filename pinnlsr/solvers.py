"""Dense least-squares solvers for the reduced problem min_z ||A z - b||² + λ²||z||².

All solvers return a :class:`LeastSquaresSolution` with the solution, the residual norm
||A z - b|| (the *linearized residual* when A = G·V and b = -f0) and the condition number of the
part of A that was used. TF32 is switched off while solving so float32 inputs stay float32-accurate.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import torch


@dataclass
class LeastSquaresSolution:
    z: torch.Tensor  # (r,)
    residual_norm: float  # ||A z - b||
    cond: float  # σ_max / σ_min over the singular values used (inf if A is rank deficient for QR)
    rank_used: int  # number of singular values kept (SVD) or columns (QR)
    singular_values: torch.Tensor | None  # (min(n, r),) of A, descending, when computed
    method: str


@contextlib.contextmanager
def no_tf32():
    """Disable TF32 matmuls (CUDA) for the duration of the block."""
    old_matmul = torch.backends.cuda.matmul.allow_tf32
    old_cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_matmul
        torch.backends.cudnn.allow_tf32 = old_cudnn


def _validate(a: torch.Tensor, b: torch.Tensor, tikhonov: float) -> None:
    if a.ndim != 2:
        raise ValueError(f"least squares: A must be a matrix (n, r), got shape {tuple(a.shape)}")
    if b.shape != (a.shape[0],):
        raise ValueError(f"least squares: b must have shape ({a.shape[0]},), got {tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"least squares: A is {a.dtype} on {a.device}, b is {b.dtype} on {b.device}: convert one")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"least squares: empty system of shape {tuple(a.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise FloatingPointError("least squares: A or b contains NaN or Inf (a diverged network or residual?)")
    if tikhonov < 0:
        raise ValueError(f"least squares: tikhonov must be >= 0, got {tikhonov}")


def solve_svd(a: torch.Tensor, b: torch.Tensor, rcond: float | None = None,
              tikhonov: float = 0.0) -> LeastSquaresSolution:
    """Truncated-SVD solution: singular values below ``rcond · σ_max`` are dropped (default
    rcond = max(n, r) · eps); with ``tikhonov`` = λ > 0 the kept ones are filtered σ/(σ² + λ²).

    A tall system (n ≥ 2r) is first reduced to the R factor of [A | b] (Householder QR): the SVD
    acts on the r×r R11 and the residual is sqrt(||R11 z - r12||² + ρ²), the same numbers as the
    SVD of A at a fraction of its cost."""
    _validate(a, b, tikhonov)
    with no_tf32():
        a_full, n, r = a, a.shape[0], a.shape[1]
        rho = 0.0
        if n >= 2 * r:
            rr = torch.linalg.qr(torch.cat([a, b.unsqueeze(1)], 1), mode="r")[1]
            a, b, rho = rr[:r, :r], rr[:r, r], float(rr[r, r].abs())
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        if rcond is None:
            rcond = max(a_full.shape) * torch.finfo(a.dtype).eps
        keep = s > rcond * s[0] if s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
        k = int(keep.sum())
        if k == 0:
            z = torch.zeros(a.shape[1], dtype=a.dtype, device=a.device)
            cond = float("inf")
        else:
            sk = s[:k]
            filt = sk / (sk**2 + tikhonov**2) if tikhonov > 0 else 1.0 / sk
            z = vh[:k].T @ (filt * (u[:, :k].T @ b))
            cond = float(sk[0] / sk[-1])
        res = math.hypot(float(torch.linalg.vector_norm(a @ z - b)), rho)
    return LeastSquaresSolution(z, res, cond, k, s, "svd")


def solve_qr(a: torch.Tensor, b: torch.Tensor, tikhonov: float = 0.0) -> LeastSquaresSolution:
    """Householder QR solution (A must have full column rank; use :func:`solve_svd` otherwise).
    With ``tikhonov`` = λ > 0 solves the stacked system [A; λI] z ≈ [b; 0]."""
    _validate(a, b, tikhonov)
    n, r = a.shape
    if tikhonov == 0 and n < r:
        raise ValueError(
            f"least squares: QR needs at least as many rows as columns, got {n} rows < {r} columns: "
            "use solver='svd', a Tikhonov term, or a lower rank"
        )
    with no_tf32():
        a_s, b_s = a, b
        if tikhonov > 0:
            a_s = torch.cat([a, tikhonov * torch.eye(r, dtype=a.dtype, device=a.device)])
            b_s = torch.cat([b, torch.zeros(r, dtype=a.dtype, device=a.device)])
        q, rr = torch.linalg.qr(a_s, mode="reduced")
        sv = torch.linalg.svdvals(rr)
        cond = float(sv[0] / sv[-1]) if sv[-1] > 0 else float("inf")
        if cond > 1 / torch.finfo(a.dtype).eps:
            warnings.warn(
                f"least squares: cond(A) ≈ {cond:.1e} exceeds 1/eps; the QR solution is unreliable, "
                "use solver='svd' with rcond, a lower rank, or a Tikhonov term",
                RuntimeWarning,
                stacklevel=2,
            )
        z = torch.linalg.solve_triangular(rr, (q.T @ b_s).unsqueeze(1), upper=True).squeeze(1)
        res = float(torch.linalg.vector_norm(a @ z - b))
    return LeastSquaresSolution(z, res, cond, r, sv, "qr")


def solve(a: torch.Tensor, b: torch.Tensor, method: str = "svd", rcond: float | None = None,
          tikhonov: float = 0.0) -> LeastSquaresSolution:
    """Dispatch to :func:`solve_svd` or :func:`solve_qr`."""
    if method == "svd":
        return solve_svd(a, b, rcond, tikhonov)
    if method == "qr":
        return solve_qr(a, b, tikhonov)
    raise ValueError(f"unknown least-squares method {method!r}: use 'svd' or 'qr'")

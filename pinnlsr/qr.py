"""QR factorizations of tall matrices: R factors, shifted Cholesky-QR3 for GPUs, a streaming TSQR
and an SVD with canonical signs. Pure dense linear algebra (no rows, no networks): the Jacobian
backends, the streamed least squares and the process reductions all take their R factors here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def r_factor(a: torch.Tensor) -> torch.Tensor:
    """R of a = Q R (reduced), shape (min(rows, cols), cols)."""
    return torch.linalg.qr(a, mode="r")[1]


def cholesky_qr(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Q (n, l), R (l, l) of a tall a (n, l) by shifted Cholesky-QR3 (Fukaya et al., 2020): three
    passes of Q ← Q·chol(QᵀQ)⁻ᵀ on the column-scaled matrix, the first with a small shift so the
    Cholesky factorization cannot fail. Orthogonal and backward stable to rounding for cond(a) up
    to about 1/eps, using Gram GEMMs and triangular solves instead of a Householder QR (much
    faster on GPUs). None when the shift would be too large (float32 at large sizes), a
    factorization fails or Q is not orthonormal to 1e3·eps·l (the caller then uses Householder QR)."""
    n, l = a.shape
    eps = torch.finfo(a.dtype).eps
    norms = a.norm(dim=0)
    if n < l or not bool((norms > 0).all()):
        return None
    shift = 11 * (n * l + l * (l + 1)) * eps
    if shift > 1e-3:  # float32 at large sizes: the shift would swamp the Gram matrix
        return None
    q = a / norms  # column scaling: the Gram matrix has a unit diagonal
    r = torch.diag(norms)
    for step in range(3):
        gram = q.T @ q
        if step == 0:
            gram.diagonal().add_(shift)
        chol, info = torch.linalg.cholesky_ex(gram)
        if bool(info.any()):
            return None
        q = torch.linalg.solve_triangular(chol.mT, q, upper=True, left=False)  # Q L⁻ᵀ
        r = chol.mT @ r
    gram = q.T @ q
    gram.diagonal().sub_(1)
    if not float(gram.abs().max()) <= 1e3 * eps * l:
        return None
    return q, r


def orthonormalize(y: torch.Tensor, force: bool = False) -> torch.Tensor:
    """An orthonormal basis Q (n, l) of the columns of a tall y (n, l) of full column rank: by
    :func:`cholesky_qr` on GPUs (or with ``force``), else (or when it fails) Householder QR."""
    if y.device.type != "cpu" or force:
        out = cholesky_qr(y)
        if out is not None:
            return out[0]
    return torch.linalg.qr(y)[0]


def fast_r_factor(a: torch.Tensor, force: bool = False) -> torch.Tensor:
    """R (l, l) of a tall a (n ≥ l, l): :func:`cholesky_qr` on GPUs (or with ``force``), else
    Householder QR (:func:`r_factor`)."""
    if (a.device.type != "cpu" or force) and a.shape[0] >= 4 * a.shape[1]:
        out = cholesky_qr(a)
        if out is not None:
            return out[1]
    return r_factor(a)


def stack_r(factors: list[torch.Tensor]) -> torch.Tensor:
    """TSQR combine: R of the stacked R factors (each (·, l)), shape (≤l, l)."""
    return r_factor(torch.cat(factors)) if len(factors) > 1 else factors[0]


class StreamingR:
    """R factor of a tall matrix given in row blocks, with bounded memory: blocks are buffered up
    to ``buffer_rows`` rows and folded into R by QR (a streaming TSQR)."""

    def __init__(self, buffer_rows: int):
        self.buffer_rows = max(1, buffer_rows)
        self.parts: list[torch.Tensor] = []
        self.rows = 0
        self.r: torch.Tensor | None = None

    def add(self, block: torch.Tensor) -> None:
        self.parts.append(block)
        self.rows += block.shape[0]
        if self.rows >= self.buffer_rows:
            self._fold()

    def _fold(self) -> None:
        if not self.parts:
            return
        parts = ([self.r] if self.r is not None else []) + self.parts
        self.r = fast_r_factor(torch.cat(parts))
        self.parts, self.rows = [], 0

    def result(self) -> torch.Tensor:
        self._fold()
        return self.r


def right_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S (k,), Vh (k, l)) of a (n, l), k = min(n, l), without the left singular vectors; (B, ·)
    for a stack. A tall a (n >= 2l) is reduced to its R factor first and R decomposed: LAPACK's
    divide and conquer SVD reduces a tall matrix the same way, so the values and vectors are the
    ones ``torch.linalg.svd(a)`` gives, without forming Q and U (about 4·n·l² fewer flops)."""
    if a.shape[-2] >= 2 * a.shape[-1]:
        a = torch.linalg.qr(a, mode="r")[1]
    _, s, vh = torch.linalg.svd(a, full_matrices=False)
    return s, vh


def canonical_svd(r: torch.Tensor):
    """SVD of a small matrix with the sign of each right singular vector fixed (largest |entry|
    positive), so the result does not depend on the row signs of R. Returns (U, S, Vh)."""
    u, s, vh = torch.linalg.svd(r, full_matrices=False)
    idx = vh.abs().argmax(dim=1, keepdim=True)
    sign = torch.sign(torch.gather(vh, 1, idx))
    sign[sign == 0] = 1
    return u * sign.T, s, vh * sign


@dataclass
class Reducer:
    """How per-process partial results are combined (identity for one process; see
    :mod:`pinnlsr.distributed`): ``sum_`` adds a tensor over processes in place, ``stack_r``
    turns this process's R factor into the R of all processes' rows, ``agree`` makes every
    process hold rank 0's tensor, ``any_`` is True on every process when it is on one (a check
    that must stop every process before the next collective, not one)."""

    sum_: Callable[[torch.Tensor], None] = lambda t: None
    stack_r: Callable[[torch.Tensor], torch.Tensor] = lambda r: r
    agree: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    any_: Callable[[bool], bool] = lambda flag: flag


__all__ = ["Reducer", "r_factor", "cholesky_qr", "orthonormalize", "fast_r_factor", "stack_r", "StreamingR", "canonical_svd"]

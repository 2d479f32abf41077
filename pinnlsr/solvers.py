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


def _validate(a: torch.Tensor, b: torch.Tensor, tikhonov: float, batched: bool = False) -> None:
    if a.ndim != (3 if batched else 2):
        want = "a stack of matrices (B, n, r)" if batched else "a matrix (n, r)"
        raise ValueError(f"least squares: A must be {want}, got shape {tuple(a.shape)}")
    if b.shape != a.shape[:-1]:
        raise ValueError(f"least squares: b must have shape {tuple(a.shape[:-1])}, got {tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"least squares: A is {a.dtype} on {a.device}, b is {b.dtype} on {b.device}: convert one")
    if a.shape[-2] == 0 or a.shape[-1] == 0:
        raise ValueError(f"least squares: empty system of shape {tuple(a.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise FloatingPointError("least squares: A or b contains NaN or Inf (a diverged network or residual?)")
    if tikhonov < 0:
        raise ValueError(f"least squares: tikhonov must be >= 0, got {tikhonov}")


class DampedLeastSquares:
    """min_z ||A z - b||² + μ||z||² for any number of damping values μ >= 0 from one SVD.

    A tall A (n, r), n >= 2r, is first reduced to the R factor of [A | b] (Householder QR),
    [A | b] = Q [[R11, r12], [0, ρ]]: the SVD acts on the r×r R11, and every damped solution and
    its residual sqrt(||R11 z - r12||² + ρ²) follow from it at O(r²) each. Singular values below
    ``rcond · σ_max`` are dropped (default rcond = max(n, r) · eps). Used by the one-shot solve
    (:func:`solve_svd`) and by every Levenberg–Marquardt loop (trial steps for several μ).

    A stack of B systems, A (B, n, r) and b (B, n), is solved at once (one batched QR and SVD):
    each keeps its own singular values (a mask instead of a cut), μ may then be a (B,) tensor,
    and ``rho``, ``rank_used``, :attr:`sigma_max`, :attr:`cond` and :meth:`residual_norm` are
    (B,) tensors instead of numbers (no host synchronization).
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, rcond: float | None = None,
                 rho: float | torch.Tensor = 0.0, n_rows: int | None = None):
        self.batched = a.ndim == 3
        _validate(a, b, 0.0, self.batched)
        n, r = a.shape[-2:]
        self.shape = (n if n_rows is None else n_rows, r)
        self.rho = torch.as_tensor(rho, dtype=a.dtype, device=a.device).expand(a.shape[:-2]) if self.batched else rho
        with no_tf32():
            if n >= 2 * r:  # QR then the SVD of R11 costs less than the SVD of A
                rr = torch.linalg.qr(torch.cat([a, b.unsqueeze(-1)], -1), mode="r")[1]
                a, b = rr[..., :r, :r], rr[..., :r, r]
                self.rho = (torch.hypot(rr[..., r, r], self.rho) if self.batched
                            else math.hypot(float(rr[r, r]), rho))
            u, s, vh = torch.linalg.svd(a, full_matrices=False)
        self._a, self._b = a, b
        self.rcond = max(self.shape) * torch.finfo(a.dtype).eps if rcond is None else rcond
        self.singular_values = s  # (min(n, r),) of A, descending; (B, min(n, r)) for a stack
        if self.batched:
            s_max = s[..., :1]
            self._kept = (s > self.rcond * s_max) & (s_max > 0)  # (B, min(n, r))
            self.rank_used = self._kept.sum(-1)
            g = (u.mT @ b.unsqueeze(-1)).squeeze(-1)
            self._s, self._vh, self._g = s, vh, torch.where(self._kept, g, 0.0)
            return
        k = int((s > self.rcond * s[0]).sum()) if s.numel() and s[0] > 0 else 0
        self.rank_used = k
        self._s, self._vh, self._g = s[:k], vh[:k], u[:, :k].T @ b

    @classmethod
    def from_factor(cls, r_aug: torch.Tensor, n_rows: int, rcond: float | None = None) -> "DampedLeastSquares":
        """From the R factor (r+1, r+1) of [A | b] of n_rows rows (e.g. reduced across processes by
        TSQR): the same steps as from A and b themselves; (B, r+1, r+1) for a stack."""
        r = r_aug.shape[-1] - 1
        rho = r_aug[..., r, r].abs()
        return cls(r_aug[..., :r, :r], r_aug[..., :r, r], rcond, rho if r_aug.ndim == 3 else float(rho), n_rows)

    @property
    def sigma_max(self) -> float | torch.Tensor:
        if self.batched:
            return self.singular_values[..., 0]
        return float(self.singular_values[0]) if self.singular_values.numel() else 0.0

    @property
    def cond(self) -> float | torch.Tensor:
        """σ_max / σ_min over the singular values kept (inf when none is)."""
        if self.batched:
            last = self._s.gather(-1, (self.rank_used - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
            return torch.where(self.rank_used > 0, self._s[..., 0] / last, torch.inf)
        return float(self._s[0] / self._s[-1]) if self.rank_used else float("inf")

    def solve(self, mu: float | torch.Tensor = 0.0) -> torch.Tensor:
        """z (r,) minimizing ||A z - b||² + μ||z||² over the kept singular directions; (B, r) for a
        stack, with μ a number or one per system (B,)."""
        if self.batched:
            mu = torch.as_tensor(mu, dtype=self._s.dtype, device=self._s.device)
            mu = mu.unsqueeze(-1) if mu.ndim else mu
            filt = torch.where(mu > 0, self._s / (self._s**2 + mu), 1.0 / self._s)
            filt = torch.where(self._kept, filt, 0.0)
            return (self._vh.mT @ (filt * self._g).unsqueeze(-1)).squeeze(-1)
        if self.rank_used == 0:
            return self._b.new_zeros(self.shape[1])
        filt = self._s / (self._s**2 + mu) if mu > 0 else 1.0 / self._s
        return self._vh.T @ (filt * self._g)

    def residual_norm(self, z: torch.Tensor) -> float | torch.Tensor:
        """||A z - b|| for any z (r,); (B,) for a stack and z (B, r)."""
        if self.batched:
            res = (self._a @ z.unsqueeze(-1)).squeeze(-1) - self._b
            return torch.hypot(torch.linalg.vector_norm(res, dim=-1), self.rho)
        return math.hypot(float(torch.linalg.vector_norm(self._a @ z - self._b)), self.rho)


class LevenbergMarquardtDamping:
    """Nielsen's damping rule: μ ← μ·max(1/3, 1 - (2ρ - 1)³) after a step accepted with gain ratio
    ρ, μ ← ν·μ and ν ← 2ν after a rejected one (ν restarts at ``growth`` after each acceptance);
    μ never drops below ``floor``.

    For a stack of systems μ, ν and the floor are (B,) tensors and :meth:`rejected` /
    :meth:`accepted` take a mask ``where`` (B,) of the systems they apply to (the others keep
    their μ and ν)."""

    def __init__(self, mu: float | torch.Tensor, growth: float = 2.0, floor: float | torch.Tensor = 0.0):
        self.mu, self.growth, self.floor = mu, growth, floor
        self.nu = torch.full_like(mu, growth) if isinstance(mu, torch.Tensor) else growth

    @classmethod
    def relative(cls, damping: float, sigma_max: float | torch.Tensor, growth: float = 10.0,
                 floor: float = 1e-30) -> "LevenbergMarquardtDamping":
        """μ0 = damping·σ_max² and the floor floor·σ_max², for the largest singular value σ_max of
        the first linearization (1 when it is 0); σ_max (B,) for a stack of systems."""
        if isinstance(sigma_max, torch.Tensor):
            s_max2 = torch.where(sigma_max > 0, sigma_max**2, 1.0)
        else:
            s_max2 = sigma_max**2 if sigma_max > 0 else 1.0
        return cls(damping * s_max2, growth, floor * s_max2)

    def rejected(self, where: torch.Tensor | None = None) -> None:
        if where is None:
            self.mu *= self.nu
            self.nu *= 2.0
            return
        self.mu = torch.where(where, self.mu * self.nu, self.mu)
        self.nu = torch.where(where, self.nu * 2.0, self.nu)

    def accepted(self, gain_ratio: float | torch.Tensor, where: torch.Tensor | None = None) -> None:
        if where is None:
            self.mu = max(self.mu * max(1.0 / 3.0, 1.0 - (2.0 * gain_ratio - 1.0) ** 3), self.floor)
            self.nu = self.growth
            return
        factor = torch.clamp(1.0 - (2.0 * gain_ratio - 1.0) ** 3, min=1.0 / 3.0)
        self.mu = torch.where(where, torch.maximum(self.mu * factor, self.floor), self.mu)
        self.nu = torch.where(where, self.growth, self.nu)


def gain_ratio(f_norm: float | torch.Tensor, new_norm: float | torch.Tensor,
               linearized_norm: float | torch.Tensor) -> float | torch.Tensor:
    """Actual over predicted decrease of ||f||²: (||f||² - ||f_new||²) / (||f||² - ||f + Aδ||²)
    (1 when the model predicts no decrease); elementwise for tensors."""
    predicted = f_norm**2 - linearized_norm**2
    if isinstance(predicted, torch.Tensor):
        return torch.where(predicted > 0, (f_norm**2 - new_norm**2) / predicted, 1.0)
    return (f_norm**2 - new_norm**2) / predicted if predicted > 0 else 1.0


def solve_svd(a: torch.Tensor, b: torch.Tensor, rcond: float | None = None,
              tikhonov: float = 0.0) -> LeastSquaresSolution:
    """Truncated-SVD solution: singular values below ``rcond · σ_max`` are dropped (default
    rcond = max(n, r) · eps); with ``tikhonov`` = λ > 0 the kept ones are filtered σ/(σ² + λ²).
    A tall system is reduced to its R factor first (:class:`DampedLeastSquares`)."""
    _validate(a, b, tikhonov)
    dls = DampedLeastSquares(a, b, rcond)
    with no_tf32():
        z = dls.solve(tikhonov**2)
        res = dls.residual_norm(z)
    return LeastSquaresSolution(z, res, dls.cond, dls.rank_used, dls.singular_values, "svd")


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

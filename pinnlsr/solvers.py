"""Dense least-squares solvers for the reduced problem min_z ||A z - b||² + λ²||z||².

All solvers return a :class:`LeastSquaresSolution` with the solution, the residual norm
||A z - b|| (the *linearized residual* when A = G·V and b = -f0) and the condition number of the
part of A that was used. TF32 is switched off while solving so float32 inputs stay float32-accurate.
"""
from __future__ import annotations

import contextlib
import copy
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
    #: the SVD the solution came from (svd solver without a Tikhonov term): a Levenberg–Marquardt
    #: loop at the same point can take its first step from it instead of factorizing again
    factorization: "DampedLeastSquares | None" = None


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
                 rho: float | torch.Tensor = 0.0, n_rows: int | None = None, reusable: bool = False):
        self.batched = a.ndim == 3
        _validate(a, b, 0.0, self.batched)
        if reusable and (self.batched or n_rows is not None):
            raise ValueError("least squares: only a single system given by its rows can take another "
                             "right-hand side (reusable=True)")
        n, r = a.shape[-2:]
        self.shape = (n if n_rows is None else n_rows, r)
        self.rho = torch.as_tensor(rho, dtype=a.dtype, device=a.device).expand(a.shape[:-2]) if self.batched else rho
        self._householder = None  # (reflectors (n, r+1), tau) of [A | b], kept when reusable
        self._u = None  # the kept left singular vectors, when reusable
        with no_tf32():
            if n >= 2 * r:  # QR then the SVD of R11 costs less than the SVD of A
                if reusable:
                    self._householder = torch.geqrf(torch.cat([a, b.unsqueeze(-1)], -1))
                    rr = self._householder[0][: r + 1].triu()
                else:
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
        if reusable:
            self._u = u[:, :k]

    @property
    def reusable(self) -> bool:
        """Whether :meth:`with_rhs` can take another right-hand side."""
        return self._u is not None

    def with_rhs(self, b: torch.Tensor) -> "DampedLeastSquares":
        """The same A with another right-hand side b (n,), without factorizing again: Qᵀb through
        the kept Householder reflectors (O(n r)), then O(r k). Needs ``reusable=True``. Used for
        chord steps: further Levenberg–Marquardt steps from one Jacobian with the updated residual."""
        if self._u is None:
            raise ValueError("least squares: this factorization was not kept for another right-hand side "
                             "(construct it with reusable=True)")
        if b.shape != (self.shape[0],) or b.dtype != self._u.dtype or b.device != self._u.device:
            raise ValueError(f"least squares: b must be a {self._u.dtype} vector of shape ({self.shape[0]},) on "
                             f"{self._u.device}, got {b.dtype} {tuple(b.shape)} on {b.device}")
        new = copy.copy(self)
        with no_tf32():
            if self._householder is None:  # A itself was decomposed
                new._b, new.rho = b, 0.0
            else:
                r = self.shape[1]
                y = torch.ormqr(*self._householder, b.unsqueeze(-1), left=True, transpose=True).squeeze(-1)
                new._b, new.rho = y[:r], float(torch.linalg.vector_norm(y[r:]))
            new._g = self._u.T @ new._b
        return new

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


@dataclass
class Trial:
    """A damped step that was tried: ``delta`` (r,) for damping ``mu``, the training residual
    ``norm`` it gives, its ``score`` (validation residual, or ``norm`` without validation),
    the linearized residual ||A δ - b|| and whatever the evaluation returned (``payload``)."""

    delta: torch.Tensor
    mu: float
    norm: float
    score: float
    linearized: float
    payload: object = None


class DampingSearch:
    """The damping of each Levenberg–Marquardt step, chosen by trying it.

    From one SVD (:class:`DampedLeastSquares`) every damped step costs O(r²) and one residual
    evaluation, so instead of adapting μ by one factor per linearization (Nielsen's rule, which
    walks down the regularization path by at most 3× per Jacobian) each linearization tries
    μ_c·10^k for k = ``above``, ..., -``decades`` and then μ = 0 (the truncated-SVD step), from the
    most damped down, and keeps the step with the lowest score (validation residual) among those
    that lower the training residual; trying stops once the score has not improved ``patience``
    times in a row. The next linearization centres on the damping kept. When no trial lowers the
    residual (an overflowing or too long step), μ grows from μ_c·10^above by 10 per trial until one
    does, at most ``max_tries`` more trials. μ_c starts at ``damping``·σ_max² of the first
    linearization.
    """

    def __init__(self, damping: float, decades: int = 12, above: int = 2, patience: int = 2, max_tries: int = 30):
        if damping < 0 or decades < 0 or above < 0 or patience < 1 or max_tries < 1:
            raise ValueError("damping, decades and above must be >= 0, patience and max_tries >= 1")
        self.damping, self.decades, self.above, self.patience, self.max_tries = damping, decades, above, patience, max_tries
        self.mu: float | None = None  # the damping μ_c the next search centres on

    def choose(self, step: DampedLeastSquares, f_norm: float, evaluate, validate=None
               ) -> tuple[Trial | None, int, int]:
        """The step to take from ``step`` (the damped problem of the current linearization) at
        training residual ``f_norm``, the number of trials evaluated and the number refused.

        ``evaluate(delta)`` returns (training residual norm, payload) (inf when not finite);
        ``validate(delta, payload)`` the score of a step that lowered it (inf refuses the step;
        None: the training residual is the score). The step is None when no trial lowered the
        training residual."""
        if self.mu is None:
            s_max2 = step.sigma_max**2 if step.sigma_max > 0 else 1.0
            self.mu = self.damping * s_max2 if self.damping > 0 else 1e-30 * s_max2
        best, tries, refused, stall = None, 0, 0, 0
        for mu in [self.mu * 10.0**k for k in range(self.above, -self.decades - 1, -1)] + [0.0]:
            trial = self._try(step, mu, f_norm, evaluate, validate)
            tries, refused = tries + 1, refused + (trial is None)
            if trial is not None and (best is None or trial.score < best.score):
                best, stall = trial, 0
            elif best is not None:
                stall += 1
                if stall >= self.patience:
                    break
        mu = self.mu * 10.0**self.above
        for _ in range(self.max_tries if best is None else 0):
            mu *= 10.0
            best = self._try(step, mu, f_norm, evaluate, validate)
            tries, refused = tries + 1, refused + (best is None)
            if best is not None:
                break
        if best is not None:
            self.mu = best.mu if best.mu > 0 else self.mu * 10.0**-self.decades
        return best, tries, refused

    def choose_stack(self, step: DampedLeastSquares, f_norm: torch.Tensor, active: torch.Tensor, evaluate,
                     validate) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """:meth:`choose` for a stack of B systems (``step`` batched, ``f_norm`` (B,)): every system
        has its own μ_c and runs the same trials as alone, under masks (``active`` (B,): the systems
        that take a step). ``evaluate(delta (B, r))`` returns (norms (B,), payload (B, ...) tensor),
        ``validate(delta, payload)`` the scores (B,). Returns the kept trial of each system as
        tensors {"delta", "mu", "norm", "score", "linearized", "payload"} and the mask of the
        systems that found one (the others hold zeros and NaN)."""
        if self.mu is None:
            s_max = step.sigma_max
            s_max2 = torch.where(s_max > 0, s_max**2, torch.ones_like(s_max))
            self.mu = s_max2 * (self.damping if self.damping > 0 else 1e-30)
        best: dict[str, torch.Tensor] | None = None
        found = torch.zeros_like(active)
        stall = torch.zeros(active.shape, dtype=torch.int64, device=active.device)
        searching = active.clone()

        def trial(mu, where):
            nonlocal best
            delta = step.solve(mu)
            norm, payload = evaluate(delta)
            ok = where & torch.isfinite(norm) & (norm < f_norm)
            score = validate(delta, payload)
            ok = ok & torch.isfinite(score)
            better = ok & (~found | (score < (best["score"] if best is not None else score)))
            cand = {"delta": delta, "mu": mu.expand_as(norm), "norm": norm, "score": score,
                    "linearized": step.residual_norm(delta), "payload": payload}
            if best is None:
                nan = lambda t: torch.full_like(t, math.nan) if t.is_floating_point() else torch.zeros_like(t)
                best = {k: nan(v) for k, v in cand.items()}
                best["delta"] = torch.zeros_like(delta)
            for k, v in cand.items():
                mask = better.view(-1, *([1] * (v.ndim - 1)))
                best[k] = torch.where(mask, v, best[k])
            return ok, better

        for k in list(range(self.above, -self.decades - 1, -1)) + [None]:
            if not bool(searching.any()):
                break
            mu = self.mu * 10.0**k if k is not None else torch.zeros_like(self.mu)
            ok, better = trial(mu, searching)
            stall = torch.where(better, 0, torch.where(searching & found & ~better, stall + 1, stall))
            found = found | ok
            searching = searching & ~(found & (stall >= self.patience))
        grow, mu = active & ~found, self.mu * 10.0**self.above
        for _ in range(self.max_tries):
            if not bool(grow.any()):
                break
            mu = mu * 10.0
            ok, _ = trial(mu, grow)
            found, grow = found | ok, grow & ~ok
        kept_mu = torch.where(best["mu"] > 0, best["mu"], self.mu * 10.0**-self.decades)
        self.mu = torch.where(found, kept_mu, self.mu)
        return best, found

    @staticmethod
    def _try(step, mu, f_norm, evaluate, validate) -> Trial | None:
        delta = step.solve(mu)
        norm, payload = evaluate(delta)
        if not norm < f_norm:
            return None
        score = norm if validate is None else validate(delta, payload)
        if not math.isfinite(score):
            return None
        return Trial(delta, mu, norm, score, step.residual_norm(delta), payload)


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
    return LeastSquaresSolution(z, res, dls.cond, dls.rank_used, dls.singular_values, "svd",
                                dls if tikhonov == 0 else None)


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

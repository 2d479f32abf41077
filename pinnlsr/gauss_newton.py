"""Tangent-space Gauss–Newton (Levenberg–Marquardt) on the refined linear predictor.

θ0 and the basis V (m, r) stay fixed; the unknowns are the r coefficients z of the predictor
u_lin(x; z) = u(θ0, x) + J(x) V z. For a nonlinear PDE the residual f(z) of u_lin is nonlinear in z,
so each step re-linearizes it in z: A = df/dz (n, r), and solves the damped problem

    min_δ ||f + A δ||² + μ ||δ||²

through one SVD of A (several damping values per SVD cost one residual evaluation each). Each
linearization tries μ over decades (:class:`pinnlsr.solvers.DampingSearch`) and keeps the step with
the lowest residual on fresh *validation* points among those that lower ||f|| on the collocation
points, so the training residual never rises and the damping follows the problem at once (a rule
that changes μ by a fixed factor per Jacobian takes one Jacobian per factor 3 or so of accuracy).
The predictor can overfit the collocation points, so the result is the z with the lowest validation
residual, and a run stops after ``patience`` accepted steps without a validation improvement.

Starting from z = 0 with μ → 0 the first step is exactly one-shot LSR.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from . import jacobian as jac
from .jet_plans import JetLoss
from .linearize import JacobianOperator
from .lsr import _resolve_device, choose_basis, prepare_model
from .metrics import model_errors
from .models import LinearizedModel, ParamSpec, ShiftedNetwork
from .problem import PDEProblem
from .records import Evaluation, HistoryEntry, compared
from .residual import Rows, output_rows, residual_rows
from .solvers import DampedLeastSquares, DampingSearch, gain_ratio, no_tf32
from .streaming import tsqr
from .subspace import Basis


@dataclass
class GaussNewtonResult:
    """What :func:`tangent_gauss_newton` returns.

    ``model`` is the predictor at the best z by validation residual (``best_iteration``);
    ``history`` holds one :class:`~pinnlsr.records.HistoryEntry` per iteration (iteration 0 is
    the starting z): residual (on the collocation points), seconds (since the start), with
    ``compute_errors`` the errors against the reference, and the extras validation_residual,
    linearized_residual (the model's prediction ||f + A δ|| of the accepted step), damping μ,
    relative_damping (μ / σ_max(A)²), step_norm, gain_ratio, tries (trial steps evaluated), rejected (trial steps refused)
    and chord_steps (the further steps taken from the same factorization, see ``chord_steps``).
    ``diagnostics["before"]`` / ``["after"]`` evaluate the starting and the returned z."""

    model: LinearizedModel
    z: torch.Tensor
    basis: Basis
    history: list[HistoryEntry]
    best_iteration: int
    stop_reason: str
    points: dict[str, torch.Tensor]
    validation_points: dict[str, torch.Tensor]
    diagnostics: dict = field(default_factory=dict)


def _norm(v: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(v))


def _safe_values(values: JetLoss, z: torch.Tensor) -> torch.Tensor | None:
    """f(z), or None when it is not finite (a diverging trial step)."""
    f = values.values(z)
    return f if bool(torch.isfinite(f).all()) else None


def z_jacobian(rows: Rows, z: torch.Tensor, n_base_params: int, memory_budget: int | None) -> torch.Tensor:
    """A = df/dz (n, r) of the predictor's residual rows. The per-point backward pass runs through
    the base network's m parameters as well as the r coefficients, so the chunk budget is shared
    out over r + 4m numbers per row instead of r."""
    budget = jac.default_memory_budget(z.device) if memory_budget is None else int(memory_budget)
    r = z.numel()
    return jac.jacobian(rows, z, max(1, budget * r // (r + 4 * n_base_params)))


def shifted_r_factor(problem: PDEProblem, predictor: LinearizedModel, points: dict[str, torch.Tensor],
                     memory_budget: int | None = None, mode: str = "auto", backends: dict | None = None
                     ) -> torch.Tensor:
    """The R factor (r+1, r+1) of [A | -f] for :func:`shifted_jacobian`'s A (n, r) and the
    predictor's residual f, without forming A: rows streamed in batches under ``memory_budget`` and
    folded into R (:func:`pinnlsr.streaming.tsqr`), for n·r too large to hold."""
    shifted = ShiftedNetwork(predictor)
    rows = residual_rows(problem, shifted, points)
    if backends is not None:
        backends.update(JacobianOperator(rows, predictor.theta0, mode, memory_budget).backends)
    factor = tsqr(rows, predictor.theta0, predictor.basis, memory_budget, mode)
    r = factor.rank
    r_aug = factor.R.new_zeros(r + 1, r + 1)
    r_aug[:r, :r], r_aug[:r, r], r_aug[r, r] = factor.R, factor.c, factor.rho
    return r_aug


def fits_dense(n_rows: int, columns: int, itemsize: int, memory_budget: int | None, device) -> bool:
    """Whether an (n_rows, columns) matrix takes at most a quarter of the memory budget."""
    budget = jac.default_memory_budget(device) if memory_budget is None else int(memory_budget)
    return n_rows * columns * itemsize <= budget // 4


def shifted_jacobian(problem: PDEProblem, predictor: LinearizedModel, points: dict[str, torch.Tensor],
                     memory_budget: int | None = None, mode: str = "auto", backends: dict | None = None,
                     identity_basis: bool = False) -> torch.Tensor:
    """A = df/dz (n, r) of the residual rows of ``predictor`` at its current z, computed as
    G_shift(θ0)·V with :class:`ShiftedNetwork` (equal to differentiating in z directly); with
    ``mode="auto"`` from the jet rows of the shifted network. ``backends`` (a dict) receives the
    path each term took; ``identity_basis`` (V = I, the whole space) returns G itself instead of
    multiplying it by I."""
    shifted = ShiftedNetwork(predictor)
    rows = residual_rows(problem, shifted, points)
    op = JacobianOperator(rows, predictor.theta0, mode, memory_budget)
    if backends is not None:
        backends.update(op.backends)
    return op.dense() if identity_basis and mode != "matrix_free" else op.matmul(predictor.basis)


class ValidationStop:
    """The best coefficients by validation residual and when to stop a Levenberg–Marquardt run:
    "converged" when an accepted step lowers ||f|| by less than tol·||f||, "validation" after
    ``patience`` accepted steps without a validation improvement.

    For a stack of runs (z (B, r), validation residuals (B,)) :meth:`update_masked` keeps one
    record per run: ``z``, ``validation_residual``, ``iteration`` and ``stall`` are then tensors."""

    def __init__(self, z: torch.Tensor, validation_residual: float | torch.Tensor, patience: int, tol: float):
        self.z, self.validation_residual, self.iteration = z.clone(), validation_residual, 0
        self.patience, self.tol, self.stall = patience, tol, 0
        if isinstance(validation_residual, torch.Tensor):
            self.iteration = torch.zeros(validation_residual.shape, dtype=torch.long, device=z.device)
            self.stall = torch.zeros_like(self.iteration)

    def update(self, iteration: int, z: torch.Tensor, validation_residual: float, f_norm: float,
               decrease: float) -> str | None:
        """Record an accepted step; the stop reason, or None to go on."""
        if validation_residual < self.validation_residual:
            self.z, self.validation_residual, self.iteration, self.stall = z.clone(), validation_residual, iteration, 0
        else:
            self.stall += 1
        if decrease < self.tol * (f_norm + decrease):
            return "converged"
        return "validation" if self.stall >= self.patience else None

    def update_masked(self, iteration: int, z: torch.Tensor, validation_residual: torch.Tensor,
                      f_norm: torch.Tensor, decrease: torch.Tensor, where: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`update` for a stack of runs, applied to those where ``where`` (B,) is True (an
        accepted step): z (B, r), the others (B,). Returns the masks (B,) of the runs that stop
        now, (converged, validation)."""
        improved = where & (validation_residual < self.validation_residual)
        self.z = torch.where(improved.unsqueeze(-1), z, self.z)
        self.validation_residual = torch.where(improved, validation_residual, self.validation_residual)
        self.iteration = torch.where(improved, iteration, self.iteration)
        self.stall = torch.where(improved, 0, torch.where(where, self.stall + 1, self.stall))
        converged = where & (decrease < self.tol * (f_norm + decrease))
        return converged, where & ~converged & (self.stall >= self.patience)


def _check_first_step(step: DampedLeastSquares, n_rows: int, r: int, rcond: float | None) -> None:
    """Refuse a first-step factorization made for other rows, another rank or another rcond."""
    if step.batched or step.shape != (n_rows, r):
        raise ValueError(f"first_step factorizes a system of shape {step.shape}, this run's is ({n_rows}, {r}): "
                         "pass the factorization of an LSR on the same points and basis, or None")
    if rcond is not None and step.rcond != rcond:
        raise ValueError(f"first_step was made with rcond={step.rcond:g}, this run uses rcond={rcond:g}: "
                         "use the same rcond, or first_step=None")


def draw_validation_points(problem: PDEProblem, seed: int, dtype, device,
                           counts: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Fresh points from the problem's samplers with a generator independent of the training
    points (seed offset by a large prime), for judging a refinement off its collocation points."""
    gen = torch.Generator().manual_seed(int(seed) + 1_000_003)
    return problem.sample_points(gen, dtype, device, counts)


def tangent_gauss_newton(
    problem: PDEProblem,
    model: nn.Module,
    *,
    points: dict[str, torch.Tensor] | None = None,
    validation_points: dict[str, torch.Tensor] | None = None,
    validation: PDEProblem | None = None,
    basis: Basis | None = None,
    rank: int | None = None,
    subspace: str = "auto",
    oversampling: int = 10,
    power_iterations: int = 0,
    scale_basis: bool = True,
    z0: torch.Tensor | None = None,
    max_iters: int = 20,
    damping: float = 1e-20,
    max_tries: int = 30,
    patience: int = 3,
    tol: float = 1e-12,
    rcond: float | None = 1e-14,
    seed: int = 0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
    memory_budget: int | None = None,
    compute_errors: bool = True,
    callback: Callable[[HistoryEntry], None] | None = None,
    jacobian: str = "shifted",
    jacobian_mode: str = "auto",
    first_step: DampedLeastSquares | None = None,
    chord_steps: int = 0,
) -> GaussNewtonResult:
    """Levenberg–Marquardt in the coefficients z of the refined predictor around ``model``.

    Args:
        points: collocation points {term: (n_t, d)}; drawn from the problem with ``seed`` if None.
        validation_points: fresh points for the stopping rule and the choice of the returned z;
            drawn independently of ``points`` if None (see :func:`draw_validation_points`).
        validation: instead of ``validation_points``, a problem whose own terms (points and
            targets, e.g. the same PDE instance on other fixed points) give the validation rows;
            needed when the problem's terms are fixed point sets with targets, which a fresh draw
            would only repeat.
        basis: the subspace (e.g. from an earlier LSR); else built as in :func:`pinnlsr.lsr.lsr`
            from ``rank``, ``subspace``, ``oversampling``, ``power_iterations``, ``scale_basis``.
        z0: starting coefficients (default 0: the first step is one-shot LSR).
        max_iters: Jacobian evaluations (outer LM iterations) at most.
        damping: the μ the first damping search centres on, relative to σ_max(A)² (searched from
            100 times it down to 1e-12 times it, then μ = 0; see :class:`pinnlsr.solvers.DampingSearch`).
        max_tries: trial steps with growing damping, after the search found no decrease, before the
            run stops ("no_decrease").
        patience: accepted steps without a validation improvement before stopping ("validation").
        tol: stop ("converged") when an accepted step lowers ||f|| by less than tol·||f||.
        rcond: singular values of A below rcond·σ_max are dropped from the step.
        generator: randomness of the basis sketch (default: seeded with ``seed``).
        callback: called with each iteration's history record.
        jacobian: how A = df/dz is formed each iteration: "shifted" (rows of
            :class:`ShiftedNetwork` in θ times V, the cost of one LSR product) or "direct"
            (``vmap(jacrev)`` in z through the predictor's JVP; slower, kept as the oracle).
        jacobian_mode: backend of the shifted network's rows and of the basis sketch ("auto":
            jets where they apply; see :mod:`pinnlsr.linearize`); ``diagnostics`` records them.
        first_step: the factorization of [A | -f] at the starting z on these ``points`` and this
            ``basis`` with this ``rcond`` (``lsr(...).solution.factorization`` of a one-shot LSR
            from the same network): the first iteration takes its steps from it instead of forming
            and factorizing A again (``jacobian_backends`` then names the later iterations' paths).
        chord_steps: after each accepted step, up to this many more steps from the same
            factorization with the updated residual f(z + δ) (chord steps: Qᵀf through the kept
            Householder reflectors, O(n r) and one residual evaluation each instead of a new
            Jacobian, QR and SVD), each kept only while it lowers the validation residual. Where
            the solve, not the nonlinearity, limits a step (a gain ratio near 1 and a huge ‖δ‖:
            the last digits along tiny singular values), they converge like a new Jacobian's
            step would, at a fraction of its cost. Only on the dense path (A formed, n >= 2r or
            not); the history records ``chord_steps`` per iteration.

    Each step reduces [A | f] to its R factor (Householder QR) and takes the SVD of the r×r R11,
    so damped trial steps and their linearized residuals cost O(r²) each.
    """
    t_start = time.perf_counter()
    if max_iters < 0 or max_tries < 1 or patience < 1 or chord_steps < 0:
        raise ValueError("max_iters and chord_steps must be >= 0, max_tries and patience >= 1")
    if jacobian not in ("shifted", "direct"):
        raise ValueError(f"jacobian must be 'shifted' or 'direct', got {jacobian!r}")
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else "cpu"
    device = _resolve_device(device)
    net = prepare_model(model, dtype, device)
    spec = ParamSpec.of(net)
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    if points is None:
        points = problem.sample_points(generator, dtype, device)
    else:
        points = {k: torch.as_tensor(v).to(dtype=dtype, device=device) for k, v in points.items()}
    if validation is not None:
        if validation_points is not None:
            raise ValueError("give validation_points or a validation problem, not both")
        validation_points = validation.sample_points(torch.Generator().manual_seed(int(seed) + 1_000_003), dtype, device)
    elif validation_points is None:
        validation_points = draw_validation_points(
            problem, seed, dtype, device, {k: int(v.shape[0]) for k, v in points.items()})
    else:
        validation_points = {k: torch.as_tensor(v).to(dtype=dtype, device=device)
                             for k, v in validation_points.items()}
    if basis is None:
        theta0 = spec.flatten(net)
        out_rows = output_rows(net, torch.cat(list(points.values())), spec)
        basis = choose_basis(out_rows, theta0, rank, subspace, oversampling, power_iterations, generator,
                             scale_basis, jacobian_mode, memory_budget)
    r = basis.V.shape[1]
    z = torch.zeros(r, dtype=dtype, device=device) if z0 is None else z0.detach().to(dtype=dtype, device=device).clone()
    if z.shape != (r,):
        raise ValueError(f"z0 must have shape ({r},) for a basis of rank {r}, got {tuple(z.shape)}")
    lin = LinearizedModel(net, basis.V, z)
    rows = residual_rows(problem, lin, points)
    val_rows = residual_rows(validation or problem, lin, validation_points)
    if first_step is not None:
        _check_first_step(first_step, rows.n_rows, r, rcond)
    # residual values of the predictor by jets where they apply (one jet pass and one jvp)
    train_values, val_values = JetLoss(rows, lin, z), JetLoss(val_rows, lin, z)
    backends: dict[str, str] = {}

    def record(it: int, f_norm: float, val: float | None = None, **extra) -> HistoryEntry:
        if val is None:  # not measured by the damping search
            with torch.no_grad():
                val = _norm(val_values.values(z))
        errors = {}
        if compute_errors:
            lin.z.data.copy_(z)
            errors = model_errors(problem, lin, dtype, device)
        return HistoryEntry(it, time.perf_counter() - t_start, residual=f_norm, errors=errors,
                            extras={"validation_residual": val, **extra})

    f = train_values.values(z)
    if not bool(torch.isfinite(f).all()):
        rows.values(z)  # raises the error that names the term
    f_norm = _norm(f)
    history = [record(0, f_norm, linearized_residual=None, damping=None, step_norm=0.0, gain_ratio=None,
                      tries=0, rejected=0, chord_steps=0)]
    if callback:
        callback(history[-1])
    best = ValidationStop(z, history[0]["validation_residual"], patience, tol)
    search = DampingSearch(damping, max_tries=max_tries)
    stop = "max_iters"
    for it in range(1, max_iters + 1):
        with no_tf32():
            lin.z.data.copy_(z)
            if it == 1 and first_step is not None:
                step = first_step
            elif jacobian == "shifted" and not fits_dense(f.numel(), r + 1, f.element_size(), memory_budget, device):
                r_aug = shifted_r_factor(problem, lin, points, memory_budget, jacobian_mode, backends)
                step = DampedLeastSquares.from_factor(r_aug, f.numel(), rcond)  # A never formed
            else:
                a = (shifted_jacobian(problem, lin, points, memory_budget, jacobian_mode, backends,
                                      identity_basis=basis.method == "full")
                     if jacobian == "shifted" else z_jacobian(rows, z, spec.numel, memory_budget))
                # through R when tall: SVD of the r×r R11; kept for chord steps when asked
                step = DampedLeastSquares(a, -f, rcond, reusable=chord_steps > 0)

        def evaluate(delta):
            f_try = _safe_values(train_values, z + delta)
            return (math.inf, None) if f_try is None else (_norm(f_try), f_try)

        def validate(delta, f_try):
            with torch.no_grad():
                return _norm(val_values.values(z + delta))

        trial, tries, refused = search.choose(step, f_norm, evaluate, validate)
        if trial is None:
            history.append(record(it, f_norm, linearized_residual=None, damping=search.mu, step_norm=0.0,
                                  gain_ratio=None, tries=tries, rejected=refused, chord_steps=0))
            if callback:
                callback(history[-1])
            stop = "no_decrease"
            break
        rho = gain_ratio(f_norm, trial.norm, trial.linearized)
        z, f, f_before, f_norm, score = z + trial.delta, trial.payload, f_norm, trial.norm, trial.score
        chords = 0
        if chord_steps and step.reusable:
            chord_search = DampingSearch(damping, max_tries=1)
            chord_search.mu = search.mu
            for _ in range(chord_steps):
                chord, more_tries, more_refused = chord_search.choose(step.with_rhs(-f), f_norm, evaluate, validate)
                tries, refused = tries + more_tries, refused + more_refused
                if chord is None or not chord.score < score:
                    break
                z, f, f_norm, score, chords = z + chord.delta, chord.payload, chord.norm, chord.score, chords + 1
        decrease = f_before - f_norm
        rec = record(it, f_norm, score, linearized_residual=trial.linearized, damping=trial.mu,
                     relative_damping=trial.mu / step.sigma_max**2 if step.sigma_max > 0 else None,
                     step_norm=_norm(trial.delta), gain_ratio=rho, tries=tries, rejected=refused,
                     chord_steps=chords)
        history.append(rec)
        if callback:
            callback(rec)
        reason = best.update(it, z, rec["validation_residual"], f_norm, decrease)
        if reason:
            stop = reason
            break
    best_z, best_val, best_it = best.z, best.validation_residual, best.iteration
    lin.z.data.copy_(best_z)
    diag = {
        "n_params": spec.numel,
        "rank": r,
        "subspace": basis.method,
        "iterations": len(history) - 1,
        "best_iteration": best_it,
        "stop_reason": stop,
        "seconds": time.perf_counter() - t_start,
        # empty when the given first_step was the only factorization: its maker names the paths
        "jacobian_backends": backends or ({} if first_step is not None and jacobian == "shifted"
                                          else {"all": "direct: vmap(jacrev) in z"}),
        "value_backends": train_values.backends,
    }
    start, best_rec = history[0], history[best_it]
    diag.update(compared("validation_residual",
                         before=Evaluation(start.errors, start.residual, start["validation_residual"]),
                         after=Evaluation(best_rec.errors, best_rec.residual, best_val)))
    return GaussNewtonResult(lin, best_z, basis, history, best_it, stop, points, validation_points, diag)

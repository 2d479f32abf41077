"""One-shot Linearized Subspace Refinement (Cao & Zhang, arXiv 2601.13989).

Linearize the stacked residual f(θ) around the trained θ0, f(θ0 + V z) ≈ f0 + G V z; choose the
subspace basis V (m, r) from the output Jacobian; solve min_z ||f0 + G V z|| directly; return the
refined linear predictor u(θ0, x) + J(x) V z as a :class:`~pinnlsr.models.LinearizedModel`.
"""
from __future__ import annotations

import copy
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from . import jacobian as jac
from .engine import StructuredJacobian
from .jet_plans import JetLoss
from .linearize import JacobianOperator, check_mode
from .metrics import model_errors
from .records import Evaluation, compared
from .models import LinearizedModel, ParamSpec
from .problem import PDEProblem
from .qr import Reducer
from .residual import Rows, output_rows, residual_rows
from .solvers import DampedLeastSquares, LeastSquaresSolution, no_tf32, solve
from .streaming import tsqr
from .subspace import Basis, full_basis, randomized_basis, scaled_directions, sketch_svd, svd_basis

# Up to this many parameters, "auto" with no rank uses the whole parameter space (V = I).
FULL_SPACE_MAX_PARAMS = 6000


@dataclass
class LSRResult:
    """What :func:`lsr` returns.

    ``model`` is the refined predictor; ``diagnostics`` holds ``before`` and ``after``
    (:class:`~pinnlsr.records.Evaluation`: the errors against the reference where one exists,
    ||f0|| and ||f|| of the predictor evaluated through the PDE operators on it, per-term
    residuals; also flat as ``rel_l2_before``, ``residual_after``, ... for printing),
    linearized_residual (||f0 + G V z||), cond (of the part of G V used), rank, the subspace
    method, seconds per phase and peak memory.
    """

    model: LinearizedModel
    z: torch.Tensor
    V: torch.Tensor
    basis: Basis
    solution: LeastSquaresSolution
    points: dict[str, torch.Tensor]
    diagnostics: dict = field(default_factory=dict)


def prepare_model(model: nn.Module, dtype: torch.dtype, device) -> nn.Module:
    """A copy of ``model`` in ``dtype`` on ``device`` (the caller's model is never modified)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise FloatingPointError(
                f"model parameter {name!r} contains NaN or Inf: the network is corrupted (diverged "
                "training or a bad checkpoint); reload a good state"
            )
    out = copy.deepcopy(model).to(dtype=dtype, device=device)
    return out


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # Process-wide peak resident set size (KiB on Linux, bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def _clock(device: torch.device) -> float:
    """time.perf_counter() after the work queued on ``device`` has finished (CUDA runs
    asynchronously: without this a phase's time would be booked to the next one)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _resolve_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available: use device='cpu'")
    return device


def prepare_refinement(problem: PDEProblem, model: nn.Module, points, seed: int, dtype: torch.dtype,
                       device) -> tuple[nn.Module, ParamSpec, torch.Generator, dict, torch.Tensor, torch.device]:
    """Common setup of the refinement entry points: resolve the device (default: the model's),
    copy the model to dtype/device, draw or convert the points, flatten θ0.

    Returns (network copy, its ParamSpec, the seeded generator (already used for the points),
    points {term: (n, d)}, θ0 (m,), device)."""
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else "cpu"
    device = _resolve_device(device)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    net = prepare_model(model, dtype, device)
    spec = ParamSpec.of(net)
    generator = torch.Generator().manual_seed(seed)
    if points is None:
        points = problem.sample_points(generator, dtype, device)
    else:
        points = {k: torch.as_tensor(v).to(dtype=dtype, device=device) for k, v in points.items()}
    return net, spec, generator, points, spec.flatten(net), device


def resolve_subspace(n_params: int, rank: int | None, subspace: str) -> str:
    """The subspace kind ("full", "svd" or "randomized") that ``subspace`` means for a network of
    ``n_params`` parameters; raises ValueError when it needs a rank and ``rank`` is None ("auto"
    takes the whole space only up to FULL_SPACE_MAX_PARAMS parameters)."""
    if subspace == "auto":
        whole = (rank is None or rank >= n_params) and n_params <= FULL_SPACE_MAX_PARAMS
        subspace = "full" if whole else "randomized"
    if subspace != "full" and rank is None:
        raise ValueError(f"subspace {subspace!r} needs a rank for this network of {n_params} parameters "
                         f"(more than {FULL_SPACE_MAX_PARAMS} for the whole space): pass rank=r "
                         f"(1 <= r <= {n_params}), or subspace='full'")
    return subspace


def choose_basis(
    out_rows, theta: torch.Tensor, rank: int | None, subspace: str, oversampling: int,
    power_iterations: int, generator: torch.Generator, scale_basis: bool, jacobian_mode: str,
    memory_budget: int | None,
) -> Basis:
    """The subspace basis for :func:`lsr` (see its arguments)."""
    m = out_rows.m
    subspace = resolve_subspace(m, rank, subspace)
    if subspace == "full":
        return full_basis(m, theta.dtype, theta.device)
    if subspace == "svd":
        return svd_basis(out_rows, theta, rank, scale_basis, memory_budget=memory_budget)
    if subspace == "randomized":
        return randomized_basis(out_rows, theta, rank, oversampling, power_iterations, generator,
                                scale_basis, mode=jacobian_mode, memory_budget=memory_budget)
    raise ValueError(f"unknown subspace {subspace!r}: use 'auto', 'full', 'svd' or 'randomized'")


def lsr(
    problem: PDEProblem,
    model: nn.Module,
    *,
    points: dict[str, torch.Tensor] | None = None,
    rank: int | None = None,
    subspace: str = "auto",
    oversampling: int = 10,
    power_iterations: int = 0,
    scale_basis: bool = True,
    solver: str = "svd",
    rcond: float | None = 1e-14,
    tikhonov: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
    jacobian_mode: str = "auto",
    memory_budget: int | None = None,
    compute_errors: bool = True,
    least_squares: str = "dense",
) -> LSRResult:
    """One-shot LSR of ``model`` (any ``nn.Module`` mapping (N, d) to (N, k)) on ``problem``.

    Args:
        points: {term name: (n_t, d)} collocation points; drawn from the problem's samplers with
            ``seed`` when None.
        rank: subspace dimension r. None with ``subspace="auto"`` uses the whole parameter space
            when m <= 6000. A rank above m is clipped to m with a warning.
        subspace: "auto", "full" (V = I), "svd" (exact SVD of the output Jacobian) or
            "randomized" (range finder with ``oversampling`` and ``power_iterations``).
        scale_basis: divide the basis by the output Jacobian's singular values (J V orthonormal).
        solver, rcond, tikhonov: the reduced least-squares solve (see :mod:`pinnlsr.solvers`);
            rcond drops singular values of G V below rcond·σ_max (svd solver only).
        dtype, device: where the refinement runs (float64 by default; the model is copied there,
            the caller's model is untouched). device defaults to the model's.
        jacobian_mode: "auto" (jet rows where they apply, ``vmap(jacrev)`` rows elsewhere),
            "explicit" (``vmap(jacrev)`` rows) or "matrix_free" (jvp/vjp); see
            :mod:`pinnlsr.linearize`. ``diagnostics["jacobian_backends"]`` names each term's path.
        memory_budget: bytes for Jacobian chunks (default: from free memory).
        least_squares: "dense" (form G V, then solve) or "streaming" (TSQR over row batches of
            G V sized by ``memory_budget``, :mod:`pinnlsr.streaming`; same z, for large n).
    """
    timings: dict[str, float] = {}
    check_mode(jacobian_mode)
    t0 = time.perf_counter()
    net, spec, generator, points, theta0, device = prepare_refinement(problem, model, points, seed, dtype, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    m = spec.numel
    if rank is not None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if rank > m:
            warnings.warn(f"rank {rank} exceeds the number of trainable parameters m = {m}; clipped to {m}",
                          UserWarning, stacklevel=2)
            rank = m
    rows = residual_rows(problem, net, points, spec)
    op = JacobianOperator(rows, theta0, jacobian_mode, memory_budget)
    f0 = rows.values(theta0)
    terms_before = rows.norms(theta0)
    timings["residual"] = _clock(device) - t0

    t = _clock(device)
    all_points = torch.cat(list(points.values()))
    out_rows = output_rows(net, all_points, spec)
    basis = choose_basis(out_rows, theta0, rank, subspace, oversampling, power_iterations, generator,
                         scale_basis, jacobian_mode, memory_budget)
    timings["basis"] = _clock(device) - t

    t = _clock(device)
    if least_squares == "streaming":
        from .streaming import tsqr

        factor = tsqr(rows, theta0, basis.V, memory_budget, jacobian_mode)  # streams G V in row batches
        timings["jacobian"] = _clock(device) - t
        t = _clock(device)
        sol = factor.solve(solver, rcond, tikhonov)
    elif least_squares == "dense":
        a = op.dense() if basis.method == "full" and jacobian_mode != "matrix_free" else op.matmul(basis.V)  # G V, (n, r)
        timings["jacobian"] = _clock(device) - t
        t = _clock(device)
        sol = solve(a, -f0, solver, rcond if solver == "svd" else None, tikhonov)
    else:
        raise ValueError(f"unknown least_squares {least_squares!r}: use 'dense' or 'streaming'")
    timings["solve"] = _clock(device) - t

    t = _clock(device)
    refined = LinearizedModel(net, basis.V, sol.z)
    rows_after = residual_rows(problem, refined, points)
    z_theta = ParamSpec.of(refined).flatten(refined)
    residual_after = float(JetLoss(rows_after, refined, z_theta).values(z_theta).norm())
    diag = {
        "n_params": m,
        "n_rows": rows.n_rows,
        "n_points": {k: int(v.shape[0]) for k, v in points.items()},
        "rank": basis.rank,
        "rank_used": sol.rank_used,
        "subspace": basis.method,
        "solver": sol.method,
        "cond": sol.cond,
        "linearized_residual": sol.residual_norm,
        "step_norm": float(refined.delta.detach().norm()),
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(device),
        "jacobian_backends": op.backends,
    }
    before = Evaluation(model_errors(problem, net, dtype, device) if compute_errors else {}, float(f0.norm()),
                        terms=terms_before)
    after = Evaluation(model_errors(problem, refined, dtype, device) if compute_errors else {}, residual_after,
                       terms=rows_after.norms(z_theta))
    diag.update(compared(before=before, after=after))
    if not residual_after <= before.residual:
        warnings.warn(
            f"LSR raised the residual of the predictor from {before.residual:.3e} to "
            f"{residual_after:.3e} (linearized: {sol.residual_norm:.3e}): the problem is nonlinear and the "
            "step left the region where the linearization holds. Use a lower rank, a larger rcond or a "
            "Tikhonov term, or iterate (pinnlsr.gauss_newton, pinnlsr.ilsr).",
            RuntimeWarning, stacklevel=2)
    timings["diagnostics"] = _clock(device) - t
    timings["total"] = _clock(device) - t0
    timings["refine"] = timings["total"] - timings["diagnostics"]
    diag["seconds"] = timings
    diag["peak_memory_gb"] = _peak_memory_gb(device)
    return LSRResult(refined, sol.z, basis.V, basis, sol, points, diag)


# ----------------------------------------------------------------------------------------------
# The streamed (and sharded) LSR step
# ----------------------------------------------------------------------------------------------
@dataclass
class StepResult:
    """What :func:`lsr_step` returns. ``V`` (m, r) is the scaled basis, ``z`` (r,) the
    coefficients, ``linearized_residual`` ||f0 + G V z||; ``engines`` the (residual, output)
    :class:`~pinnlsr.engine.StructuredJacobian` to reuse at another θ on the same rows."""

    z: torch.Tensor
    V: torch.Tensor
    singular_values: torch.Tensor  # of the sketch J·Q, descending
    rank: int
    residual_before: float
    linearized_residual: float
    cond: float
    seconds: dict = field(default_factory=dict)
    plans: dict = field(default_factory=dict)
    engines: tuple | None = field(default=None, repr=False)


def lsr_step(rows: Rows, out_rows: Rows, theta: torch.Tensor, rank: int, oversampling: int = 10,
             generator: torch.Generator | None = None, omega: torch.Tensor | None = None,
             memory_budget: int | None = None, rcond: float | None = 1e-14, scale: bool = True,
             reducer: Reducer | None = None, engines: tuple | None = None) -> StepResult:
    """One randomized-basis LSR step on the residual ``rows`` with the output Jacobian of
    ``out_rows``, on jet rows streamed under ``memory_budget``: the sketch of :func:`sketch_svd`
    (Y = Jᵀ Ω, Q = orth(Y), SVD of the R of J Q → V scaled by 1/σ so J V is orthonormal), the R
    factor of [G V | -f0] by :func:`pinnlsr.streaming.tsqr` and the truncated SVD of its R11
    (:class:`pinnlsr.solvers.DampedLeastSquares`) → z. The same sketch, TSQR and solve as
    :func:`lsr` without its diagnostics; with a ``reducer`` the rows are one process's share and
    every process gets the z of all rows (:func:`pinnlsr.distributed.lsr_step`).

    ``omega`` (n_out, r + p) is the sketch (drawn from ``generator`` on the CPU when None, like
    :func:`pinnlsr.subspace.randomized_basis`); ``engines`` = (residual, output) engines of an
    earlier step on the same rows (``StepResult.engines``) skip the per-term checks ("setup")."""
    reducer = reducer or Reducer()
    device = theta.device
    budget = jac.default_memory_budget(device) if memory_budget is None else int(memory_budget)
    t = {}
    t0 = _clock(device)
    with no_tf32(), torch.no_grad():
        if engines is not None:
            eng_res, eng_out = engines
            if eng_res.rows is not rows or eng_out.rows is not out_rows:
                raise ValueError("engines were made for other Rows: pass the rows they were built on, or engines=None")
        else:
            eng_res, eng_out = StructuredJacobian(rows, theta), StructuredJacobian(out_rows, theta)
        op_out = JacobianOperator(out_rows, theta, "auto", budget, engine=eng_out)
        t["setup"] = _clock(device) - t0
        tt = _clock(device)
        w, s, _ = sketch_svd(op_out, rank, oversampling, generator=generator, omega=omega, reducer=reducer)
        rc = max(out_rows.n_rows, out_rows.m) * torch.finfo(theta.dtype).eps
        v, r = scaled_directions(w, s, rank, scale, rc)
        t["basis"] = _clock(device) - tt
        tt = _clock(device)
        factor = tsqr(rows, theta, v, budget, "auto", reducer=reducer, engine=eng_res)
        t["jacobian"] = _clock(device) - tt
        tt = _clock(device)
        r_aug = factor.R.new_zeros(r + 1, r + 1)
        r_aug[:r, :r], r_aug[:r, r], r_aug[r, r] = factor.R, factor.c, factor.rho
        step = DampedLeastSquares.from_factor(r_aug, factor.n_rows, rcond)
        z = reducer.agree(step.solve(0.0))
        linres = step.residual_norm(z)
        t["solve"] = _clock(device) - tt
    t["total"] = _clock(device) - t0
    plans = {**{f"outputs/{k}": p.describe() for k, p in eng_out.plans.items()},
             **{k: p.describe() for k, p in eng_res.plans.items()}}
    return StepResult(z, v, s, r, factor.b_norm, linres, step.cond, t, plans, (eng_res, eng_out))

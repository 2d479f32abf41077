"""Rank selection for LSR: one sketch, one QR, every rank.

The subspace bases of LSR are nested: the rank-r basis is the first r columns of the rank-r_max
basis V (top singular directions of the output Jacobian first). With the QR factor of
[G V | -f0] (:class:`~pinnlsr.streaming.TriangularFactor`, dense or streamed), the QR factor of the
first r columns is the leading r×r block, so the rank-r solution is one triangular solve
R[:r, :r] z_r = c[:r] and its linearized residual is sqrt(ρ² + Σ_{i≥r} c_i²) with no extra work.

Ranks are chosen by the linearized training residual, or (with noisy data) by the error on a
held-out validation set: for data terms the refined predictor is linear in z, so the validation
residual of rank r is exactly ||A_val z_r + f_val|| with A_val = G_val V. Rank 0 means "keep the
trained model", so a validated refinement never gets worse on the validation set.

    scan = lsr_rank_scan(problem, model, validation=val_problem)   # all ranks, chosen by validation
    scan.model                                                      # the refined predictor at scan.rank
    pinnlsr.plotting.plot_rank_scan(scan.scan, "rank.png")       # the figure (an app-layer module)
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import linearize
from .lsr import FULL_SPACE_MAX_PARAMS, _peak_memory_gb, choose_basis, prepare_refinement
from .metrics import model_errors, predict, reference_on
from .records import Evaluation, StageRecord, compared
from .models import LinearizedModel, ParamSpec
from .problem import PDEProblem
from .residual import output_rows, residual_rows
from .solvers import no_tf32
from .streaming import TriangularFactor, dense_factor, tsqr
from .subspace import Basis


@dataclass
class RankScan:
    """Solutions and scores of every scanned rank.

    ``ranks`` (R,) ascending, 0 first (the trained model); ``Z`` (r_max, R): column j is the
    solution of rank ranks[j], zero-padded; ``linearized_residual`` (R,) ||G V_r z_r + f0||;
    ``validation_error`` (R,) ||G_val V_r z_r + f_val|| or None; ``test_errors`` {label: (R,)}
    of the refined predictor against the reference (when computed); ``rank`` the chosen rank
    by ``criterion``; ``dropped`` ranks left out because R[:r, :r] was numerically singular."""

    ranks: list[int]
    Z: torch.Tensor
    linearized_residual: list[float]
    validation_error: list[float] | None = None
    test_errors: dict[str, list[float]] = field(default_factory=dict)
    rank: int | None = None
    criterion: str | None = None
    dropped: list[int] = field(default_factory=list)

    def z(self, rank: int) -> torch.Tensor:
        """Solution (rank,) of a scanned rank."""
        if rank not in self.ranks:
            raise ValueError(f"rank {rank} was not scanned; scanned ranks are {self.ranks}")
        return self.Z[:rank, self.ranks.index(rank)].clone()

    def as_dict(self) -> dict:
        """Plain lists for JSON."""
        out = {"ranks": list(self.ranks), "linearized_residual": list(self.linearized_residual),
               "chosen_rank": self.rank, "criterion": self.criterion, "dropped_ranks": list(self.dropped)}
        if self.validation_error is not None:
            out["validation_error"] = list(self.validation_error)
        for label, vals in self.test_errors.items():
            out[f"test_{label}"] = list(vals)
        return out


def default_ranks(max_rank: int, n: int = 40) -> list[int]:
    """About ``n`` ranks from 1 to ``max_rank``: geometric at low ranks, always including max_rank."""
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    geo = np.geomspace(1, max_rank, num=max(2, n // 2))
    lin = np.linspace(1, max_rank, num=max(2, n - n // 2))
    return sorted({int(round(v)) for v in np.concatenate([geo, lin])} | {max_rank})


def _usable_rank(R: torch.Tensor, n_rows: int, rcond: float | None) -> int:
    """Largest r whose leading block R[:r, :r] has no pivot below rcond · max |R_ii|."""
    d = R.diagonal().abs()
    if d.numel() == 0 or float(d.max()) == 0.0:
        return 0
    rcond = max(n_rows, R.shape[0]) * torch.finfo(R.dtype).eps if rcond is None else rcond
    small = (d <= rcond * d.max()).nonzero()
    return int(small[0]) if small.numel() else R.shape[0]


def scan_factor(factor: TriangularFactor, ranks: list[int] | None = None,
                validation: tuple[torch.Tensor, torch.Tensor] | None = None,
                rcond: float | None = None) -> RankScan:
    """Solve every rank in ``ranks`` from one factor: z_r = R[:r, :r]⁻¹ c[:r].

    Args:
        factor: from :func:`~pinnlsr.streaming.dense_factor` or :func:`~pinnlsr.streaming.tsqr`.
        ranks: ranks to scan (default :func:`default_ranks`); 0 (the trained model) is always added.
        validation: (A_val (n_val, r_max), f_val (n_val,)) to score ||A_val z_r + f_val|| per rank.
        rcond: ranks whose leading block has a pivot |R_ii| <= rcond · max |R_jj| are dropped
            (default max(n, r_max) · eps).
    """
    R, c = factor.R, factor.c
    r_max = factor.rank
    ranks = default_ranks(r_max) if ranks is None else sorted({int(r) for r in ranks})
    bad = [r for r in ranks if r < 0 or r > r_max]
    if bad:
        raise ValueError(f"ranks {bad} are outside [0, {r_max}] (the basis has {r_max} columns)")
    usable = _usable_rank(R, factor.n_rows, rcond)
    dropped = [r for r in ranks if r > usable]
    if dropped:
        warnings.warn(f"rank scan: G·V is numerically rank deficient beyond rank {usable}; ranks "
                      f"{dropped[0]}..{dropped[-1]} dropped ({len(dropped)} ranks)", RuntimeWarning, stacklevel=2)
    ranks = [0] + [r for r in ranks if 0 < r <= usable]
    Z = R.new_zeros(r_max, len(ranks))
    tail = torch.flip(torch.cumsum(torch.flip(c.square(), [0]), 0), [0])  # tail[i] = Σ_{j>=i} c_j²
    tail = torch.cat([tail, tail.new_zeros(1)])
    residuals = []
    with no_tf32():
        for j, r in enumerate(ranks):
            if r > 0:
                Z[:r, j] = torch.linalg.solve_triangular(R[:r, :r], c[:r].unsqueeze(1), upper=True).squeeze(1)
            residuals.append(math.sqrt(factor.rho**2 + float(tail[r])))
        val = None
        if validation is not None:
            a_val, f_val = validation
            if a_val.shape != (f_val.shape[0], r_max):
                raise ValueError(f"validation: A_val must have shape ({f_val.shape[0]}, {r_max}), got {tuple(a_val.shape)}")
            val = (a_val @ Z + f_val.unsqueeze(1)).norm(dim=0).tolist()
    return RankScan(ranks, Z, residuals, val, dropped=dropped)


def select_rank(scan: RankScan, criterion: str = "auto", rtol: float = 0.0) -> int:
    """The chosen rank: the smallest whose score is within (1 + rtol) of the best.

    ``criterion``: "validation" (validation error; rank 0 = keep the trained model is a
    candidate), "residual" (linearized training residual) or "auto" (validation when scored)."""
    if criterion == "auto":
        criterion = "validation" if scan.validation_error is not None else "residual"
    if criterion == "validation":
        if scan.validation_error is None:
            raise ValueError("criterion 'validation' needs a validation set: pass validation=... to the scan")
        scores = scan.validation_error
    elif criterion == "residual":
        scores = scan.linearized_residual
    else:
        raise ValueError(f"unknown rank criterion {criterion!r}: use 'auto', 'validation' or 'residual'")
    best = min(scores)
    rank = next(r for r, s in zip(scan.ranks, scores) if s <= best * (1 + rtol))
    scan.rank, scan.criterion = rank, criterion
    return rank


@dataclass
class RankScanResult:
    """What :func:`lsr_rank_scan` returns: the predictor at the chosen rank, the scan, the basis
    (all r_max columns), the points and diagnostics (as in :class:`~pinnlsr.lsr.LSRResult`)."""

    model: LinearizedModel
    scan: RankScan
    rank: int
    V: torch.Tensor
    basis: Basis
    points: dict[str, torch.Tensor]
    diagnostics: dict = field(default_factory=dict)


def _rank_errors(problem: PDEProblem, net: nn.Module, spec: ParamSpec, theta0: torch.Tensor, V: torch.Tensor,
                 Z: torch.Tensor, memory_budget: int | None, mode: str) -> dict[str, list[float]]:
    """Relative L2 errors (all outputs, and each output when k > 1) of every scanned solution."""
    ref = reference_on(problem, theta0.dtype, theta0.device)
    if ref is None:
        return {}
    x, u = ref
    u0 = predict(net, x)  # (N, k)
    a = linearize.apply(output_rows(net, x, spec), theta0, V, mode, memory_budget)  # (N·k, r)
    pred = u0.unsqueeze(2) + (a @ Z).reshape(u.shape[0], u.shape[1], -1)  # (N, k, R)
    diff = pred - u.unsqueeze(2)
    out = {"rel_l2": (diff.flatten(0, 1).norm(dim=0) / u.norm()).tolist()}
    if u.shape[1] > 1:
        for i, name in enumerate(problem.output_names):
            out[f"rel_l2_{name}"] = (diff[:, i].norm(dim=0) / u[:, i].norm()).tolist()
    return out


def lsr_rank_scan(
    problem: PDEProblem,
    model: nn.Module,
    *,
    points: dict[str, torch.Tensor] | None = None,
    validation: PDEProblem | None = None,
    ranks: list[int] | None = None,
    max_rank: int | None = None,
    criterion: str = "auto",
    rtol: float = 0.0,
    subspace: str = "auto",
    oversampling: int = 10,
    power_iterations: int = 0,
    scale_basis: bool = True,
    rcond: float | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
    jacobian_mode: str = "auto",
    memory_budget: int | None = None,
    least_squares: str = "dense",
    rank_errors: bool = True,
    compute_errors: bool = True,
) -> RankScanResult:
    """LSR at every rank of one nested basis, with the rank chosen by residual or validation.

    Args:
        problem, model, points, seed, dtype, device, jacobian_mode, memory_budget: as in
            :func:`pinnlsr.lsr.lsr` (the caller's model is not modified).
        validation: a problem whose terms (fixed points with targets, e.g. a held-out split of
            the data) score each rank: ||f_val|| of the refined predictor, rank 0 included.
        ranks: ranks to scan (default: about 40 from 1 to max_rank); max_rank: columns of the
            basis (default min(m, rows)).
        criterion, rtol: see :func:`select_rank`.
        subspace: "auto" ("svd" when m <= 6000, else "randomized"), "svd" or "randomized"; the
            basis must be ordered, so "full" is refused.
        least_squares: "dense" (one QR of G V) or "streaming" (TSQR over row batches).
        rank_errors: also compute every rank's error against the problem's reference.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    net, spec, generator, points, theta0, device = prepare_refinement(problem, model, points, seed, dtype, device)
    m = spec.numel
    rows = residual_rows(problem, net, points, spec)
    max_rank = min(m, rows.n_rows) if max_rank is None else int(max_rank)
    if not 1 <= max_rank <= m:
        raise ValueError(f"max_rank must be in [1, m = {m}], got {max_rank}")
    if subspace == "auto":
        subspace = "svd" if m <= FULL_SPACE_MAX_PARAMS else "randomized"
    if subspace == "full":
        raise ValueError("a rank scan needs an ordered basis: use subspace='svd' or 'randomized', not 'full'")
    out_rows = output_rows(net, torch.cat(list(points.values())), spec)
    basis = choose_basis(out_rows, theta0, max_rank, subspace, oversampling, power_iterations, generator,
                         scale_basis, jacobian_mode, memory_budget)
    V = basis.V
    timings["basis"] = time.perf_counter() - t0

    t = time.perf_counter()
    if least_squares == "dense":
        factor = dense_factor(linearize.apply(rows, theta0, V, jacobian_mode, memory_budget), -rows.values(theta0))
    elif least_squares == "streaming":
        factor = tsqr(rows, theta0, V, memory_budget, jacobian_mode)
    else:
        raise ValueError(f"unknown least_squares {least_squares!r}: use 'dense' or 'streaming'")
    timings["factor"] = time.perf_counter() - t

    t = time.perf_counter()
    val = None
    if validation is not None:
        val_points = validation.sample_points(generator, dtype, device)
        val_rows = residual_rows(validation, net, val_points, spec)
        val = (linearize.apply(val_rows, theta0, V, jacobian_mode, memory_budget), val_rows.values(theta0))
    if ranks is None:
        ranks = default_ranks(basis.rank)
    elif max(ranks) > basis.rank:
        warnings.warn(f"rank scan: the basis has {basis.rank} columns (fewer rows or nonzero singular values "
                      f"than asked); ranks above it are clipped", UserWarning, stacklevel=2)
        ranks = sorted({min(int(r), basis.rank) for r in ranks})
    scan = scan_factor(factor, ranks, val, rcond)
    rank = select_rank(scan, criterion, rtol)
    timings["scan"] = time.perf_counter() - t

    t = time.perf_counter()
    if rank_errors:
        scan.test_errors = _rank_errors(problem, net, spec, theta0, V, scan.Z, memory_budget, jacobian_mode)
    timings["rank_errors"] = time.perf_counter() - t

    t = time.perf_counter()
    z = scan.z(rank)
    refined = LinearizedModel(net, V[:, :rank], z)
    z_theta = ParamSpec.of(refined).flatten(refined)
    rows_after = residual_rows(problem, refined, points)
    j = scan.ranks.index(rank)
    diag = {
        "n_params": m, "n_rows": rows.n_rows, "n_points": {k: int(v.shape[0]) for k, v in points.items()},
        "rank": rank, "max_rank": basis.rank, "subspace": basis.method, "criterion": scan.criterion,
        "least_squares": least_squares, "n_batches": factor.n_batches,
        "linearized_residual": scan.linearized_residual[j],
        "step_norm": float((V[:, :rank] @ z).norm()),
        "dtype": str(dtype).replace("torch.", ""), "device": str(device),
    }
    residual_after, terms_after = float(rows_after.values(z_theta).norm()), rows_after.norms(z_theta)
    held_out = scan.validation_error  # the error on the validation problem per scanned rank, or None
    before = Evaluation(model_errors(problem, net, dtype, device) if compute_errors else {}, factor.b_norm,
                        held_out[0] if held_out is not None else None)
    after = Evaluation(model_errors(problem, refined, dtype, device) if compute_errors else {}, residual_after,
                       held_out[j] if held_out is not None else None, terms_after)
    diag.update(compared(before=before, after=after))
    timings["diagnostics"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    diag["seconds"] = timings
    diag["peak_memory_gb"] = _peak_memory_gb(device)
    return RankScanResult(refined, scan, rank, V, basis, points, diag)


class TermsProblem(PDEProblem):
    """A problem made of given terms, e.g. a held-out validation split of a data term:
    ``TermsProblem([Term("data", lambda u, x, y: u(x) - y, X_val, targets=Y_val)], ("x", "y"))``."""

    def __init__(self, terms, input_names, output_names=("u",), name: str = "validation"):
        self._terms = list(terms)
        self.input_names, self.output_names, self.name = tuple(input_names), tuple(output_names), name

    def terms(self):
        return list(self._terms)


def scan_stage(result: RankScanResult, name: str = "lsr") -> StageRecord:
    """The stage of a rank scan (a metrics.json row of the run output contract, docs/run_output.md,
    through :meth:`~pinnlsr.records.StageRecord.to_json`) with the scan."""
    d = result.diagnostics
    before, after = d["before"], d["after"]
    extras = {"rank": d["rank"], "criterion": d["criterion"], "max_rank": d["max_rank"], "subspace": d["subspace"],
              "linearized_residual": d["linearized_residual"], "seconds_by_phase": d["seconds"],
              "peak_memory_gb": d["peak_memory_gb"], "scan": result.scan.as_dict()}
    if after.validation is not None:
        extras.update(validation_before=before.validation, validation_after=after.validation)
    return StageRecord(name, d["seconds"]["total"], Evaluation(after.errors, after.residual), extras)


__all__ = ["RankScan", "RankScanResult", "TermsProblem", "default_ranks", "scan_factor", "select_rank", "lsr_rank_scan",
           "scan_stage"]

"""Iterative LSR (Cao & Zhang): refine, align the network to the refined predictor, repeat.

One outer iteration k:

1. resample the collocation points (uniform, or residual-based adaptive: a fraction drawn in
   proportion to the current residual magnitude from a larger uniform pool);
2. refine around the current network: tangent-space Gauss–Newton (:mod:`pinnlsr.gauss_newton`),
   whose first step is one-shot LSR, stopped by the residual on validation points;
3. align the network to the refined predictor u_lin by L-BFGS on
   ``Σ_t w_t mean|r_t(u)|² + (1/Δτ) mean|u - u_lin|²`` (the problem's own terms stay as weak terms;
   ``dtau=None`` fits u_lin alone);
4. keep the best state (network or predictor) by validation residual. The aligned network
   replaces the current one when its validation residual is finite and either not worse than
   ``reject_factor`` × the current network's or, with ``accept="closer"`` (the default), the
   predictor validates better than the current network and the aligned network is closer to it
   on the validation points than the current network is. The network is the next linearization
   point: a fit to a much better predictor brings it nearer the solution even where its own
   residual (a value fit leaves derivative noise) is not lower yet. A rejected alignment keeps
   the current network.

With ``final_gn_iterations`` > 0 a final refinement follows the outer iterations: one tangent
Gauss–Newton from the current network in a larger subspace (``final_rank``; by default the whole
parameter space of a small network) on more points (``final_counts``), with no alignment after it.
The aligned network cannot follow a predictor much below its own accuracy (its parameters would
have to move far along directions of small singular values); the predictor in a larger tangent
space can, provided there are enough points to pin it down: the final step spends the cost there.

Validation points are drawn once, independently of the collocation points, so residuals of all
iterations are comparable. Every outer iteration is recorded in ``history`` (residual, linearized
residual, validation residual, error against the reference, rank, seconds) and, with
``checkpoint``, saved atomically with the generator state, so an interrupted run resumes where it
stopped and continues with the same history as an uninterrupted one (same seed).
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .checkpoint import save_state_dict
from .gauss_newton import draw_validation_points, tangent_gauss_newton
from .lsr import FULL_SPACE_MAX_PARAMS, prepare_model, _resolve_device
from .metrics import model_errors
from .models import LinearizedModel, ParamSpec
from .problem import PDEProblem, Term
from .records import HistoryEntry
from .jet_plans import residual_norm
from .residual import residual_rows
from .train import train_lbfgs

CHECKPOINT_VERSION = 2  # 2: with the settings that determine the history


@dataclass
class ILSRResult:
    """What :func:`iterative_lsr` returns: the best predictor (by validation residual), the
    network it linearizes, the per-iteration history and the index of the best record."""

    model: LinearizedModel
    network: nn.Module
    history: list[HistoryEntry]
    best_iteration: int
    diagnostics: dict = field(default_factory=dict)


class AlignmentProblem(PDEProblem):
    """The problem's terms plus a supervised term pulling the network to the predictor's values
    ``targets`` at ``points``: weight 1/Δτ (or the term alone when ``dtau`` is None)."""

    def __init__(self, problem: PDEProblem, points: torch.Tensor, targets: torch.Tensor, dtau: float | None):
        self.base = problem
        self.name = f"{problem.name}_align"
        self.input_names, self.output_names = problem.input_names, problem.output_names
        self.align_points, self.targets, self.dtau = points, targets, dtau

    def terms(self) -> list[Term]:
        own = list(self.base.terms()) if self.dtau is not None else []
        weight = 1.0 if self.dtau is None else 1.0 / self.dtau
        return own + [Term("align", _difference, self.align_points, weight=weight, targets=self.targets)]


def _difference(u, x, y):
    return u(x) - y


def adaptive_points(problem: PDEProblem, model: nn.Module, generator: torch.Generator, dtype, device,
                    counts: dict[str, int] | None = None, fraction: float = 0.5, pool_factor: int = 4,
                    power: float = 2.0) -> dict[str, torch.Tensor]:
    """Residual-based adaptive resampling (RAD): for each sampled term, ``fraction`` of its points
    are drawn without replacement from a uniform pool ``pool_factor`` times larger with
    probability ∝ |r(x)|^power (r: the term's residual under ``model``), the rest uniformly."""
    uniform = problem.sample_points(generator, dtype, device, counts)
    if fraction <= 0:
        return uniform
    terms = {t.name: t for t in problem.terms()}
    sampled = [n for n, t in terms.items() if not isinstance(t.points, torch.Tensor)]
    n_adapt = {n: int(round(fraction * uniform[n].shape[0])) for n in sampled}
    pool = problem.sample_points(generator, dtype, device,
                                 {n: max(1, pool_factor * n_adapt[n]) for n in sampled if n_adapt[n] > 0})
    rows = residual_rows(problem, model, pool)
    theta = ParamSpec.of(model).flatten(model)
    with torch.no_grad():
        values = rows.block_values(theta)
    out = {}
    for name, pts in uniform.items():
        k = n_adapt.get(name, 0)
        if k == 0:
            out[name] = pts
            continue
        weight = values[name].abs().pow(power).sum(1)
        weight = weight / weight.mean() + 1e-3 if bool(torch.isfinite(weight).all()) and weight.sum() > 0 \
            else torch.ones_like(weight)
        idx = torch.multinomial(weight.cpu(), k, replacement=False, generator=generator)
        out[name] = torch.cat([pts[: pts.shape[0] - k], pool[name][idx.to(pool[name].device)]])
    return out


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The contents of an Iterative LSR checkpoint (tensors and plain values only, read with
    ``weights_only=True``); a ValueError says what is wrong with a corrupt, foreign or old file."""
    path = Path(path)
    fix = "remove it or start over (resume=False; on the command line --overwrite)"
    try:
        with warnings.catch_warnings():  # torch's notes on a foreign pickle protocol: the error below says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or pickled objects: never unpickled
        raise ValueError(f"{str(path)!r} is not a readable Iterative LSR checkpoint ({type(exc).__name__}): "
                         f"{fix}") from None
    if not isinstance(obj, dict) or "version" not in obj or "model" not in obj:
        raise ValueError(f"{str(path)!r} is not an Iterative LSR checkpoint: {fix}")
    if obj["version"] != CHECKPOINT_VERSION:
        raise ValueError(f"{str(path)!r} is an Iterative LSR checkpoint of version {obj['version']}, this pinnlsr "
                         f"writes version {CHECKPOINT_VERSION} (with the settings it was run with): {fix}")
    return obj


def digest(tensors) -> str:
    """A short SHA-256 digest of the values of ``tensors`` (as float64 on the CPU)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def history_settings(problem: PDEProblem, net: nn.Module, points: dict[str, torch.Tensor],
                     validation_points: dict[str, torch.Tensor], seed: int, dtype: torch.dtype,
                     **schedule) -> dict:
    """What determines the history of an Iterative LSR run (stored in its checkpoint): problem,
    seed, architecture, parameter count, points, the schedule, the library version and digests of
    the starting network and the points. ``outer_iterations`` is not part of it: a resumed run
    may go on for more iterations."""
    from . import __version__

    spec = ParamSpec.of(net)
    names = sorted(points)
    return {"problem": problem.name, "seed": int(seed), "dtype": str(dtype).replace("torch.", ""),
            "architecture": type(net).__name__, "n_params": spec.numel,
            "parameter_shapes": digest([torch.tensor(list(p.shape) or [0]) for p in net.parameters()]),
            "points": {k: int(points[k].shape[0]) for k in names}, **schedule, "pinnlsr": __version__,
            "start_network": digest([spec.flatten(net)]),
            "start_points": digest([points[k] for k in names]
                                   + [validation_points[k] for k in sorted(validation_points)])}


def check_settings(path: Path, stored: dict, current: dict) -> None:
    """Refuse to resume a checkpoint written with other settings, naming the differences."""
    diff = [f"{k}: checkpoint {stored.get(k)!r}, now {current.get(k)!r}"
            for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]
    if diff:
        only_start = all(d.startswith("start_") for d in diff)
        why = " (the same options gave another starting network: thread count or torch version?)" if only_start else ""
        raise ValueError(f"{str(path)!r} was written by a run with other settings ({'; '.join(diff[:6])}){why}: "
                         "resume with the same settings, or start over (resume=False; on the command line --overwrite)")


def iterative_lsr(
    problem: PDEProblem,
    model: nn.Module,
    *,
    outer_iterations: int = 5,
    points: dict[str, torch.Tensor] | None = None,
    counts: dict[str, int] | None = None,
    resample: str = "adaptive",
    adaptive_fraction: float = 0.5,
    validation_points: dict[str, torch.Tensor] | None = None,
    rank: int | None = None,
    subspace: str = "auto",
    oversampling: int = 10,
    power_iterations: int = 0,
    gn_iterations: int = 10,
    gn_patience: int = 2,
    damping: float = 1e-20,
    rcond: float | None = 1e-14,
    chord_steps: int = 0,
    align_iterations: int = 200,
    dtau: float | None = 1e-3,
    warm_start: bool = False,
    reject_factor: float = 1.0,
    accept: str = "closer",
    patience: int | None = None,
    final_gn_iterations: int = 0,
    final_rank: int | None = None,
    final_counts: dict[str, int] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
    memory_budget: int | None = None,
    compute_errors: bool = True,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    callback: Callable[[HistoryEntry], None] | None = None,
) -> ILSRResult:
    """Iterative LSR of ``model`` on ``problem`` (see the module docstring).

    Args:
        outer_iterations: outer iterations in total (a resumed run continues up to this number).
        points: collocation points of the first iteration (later ones are resampled); drawn
            with ``seed`` when None. ``counts`` overrides the points per sampled term.
        resample: "adaptive" (RAD with ``adaptive_fraction``), "uniform" or "none" (keep points).
        validation_points: fixed points for every accept/reject and stopping decision (drawn
            independently of the collocation points when None).
        rank, subspace, oversampling, power_iterations, rcond: the LSR subspace and solve, as in
            :func:`pinnlsr.lsr.lsr`.
        gn_iterations, gn_patience, damping, chord_steps: the tangent Gauss–Newton of each outer
            iteration and of the final refinement (gn_iterations=1 with damping≈0 is plain
            one-shot LSR; chord_steps: see :func:`pinnlsr.gauss_newton.tangent_gauss_newton`).
        align_iterations, dtau: L-BFGS iterations and pseudo-time step Δτ of the alignment.
        warm_start: start the alignment from θ0 + s·V z, s in (1, 1/2, 1/4, 0) with the lowest
            alignment loss (the network the step points to agrees with the predictor to second
            order in V z), instead of from θ0 (s = 0, the default).
        reject_factor, accept: the aligned network replaces the current one when its validation
            residual is finite and at most reject_factor × the current network's; with accept
            "closer" also when the predictor validates better than the current network and the
            aligned network is closer to it on the validation points ("residual": the first
            rule only). A rejected alignment keeps the current network.
        patience: stop after this many outer iterations without a new best (None: never early).
        final_gn_iterations: Jacobians of the final refinement (0: none; see the module
            docstring), with rank ``final_rank`` (the parameter count: the whole space; None: the
            whole space up to :data:`pinnlsr.lsr.FULL_SPACE_MAX_PARAMS` parameters, else ``rank``) on
            ``final_counts`` points per term (None: as many as the outer iterations), drawn from
            the current network by RAD when ``resample`` is "adaptive", else uniformly. It is
            recorded as one more history entry with ``final`` True; a run that finished with it
            does not resume further.
        checkpoint: file written atomically after every outer iteration; with ``resume`` and an
            existing file the run starts from it, if it was written with the same settings (see
            :func:`history_settings`; a ValueError names the differences otherwise). Without
            ``resume`` an existing file is replaced.
        callback: called with each outer iteration's history record (after it is checkpointed).
    """
    t_start = time.perf_counter()
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else "cpu"
    device = _resolve_device(device)
    if resample not in ("adaptive", "uniform", "none"):
        raise ValueError(f"resample must be 'adaptive', 'uniform' or 'none', got {resample!r}")
    if accept not in ("closer", "residual"):
        raise ValueError(f"accept must be 'closer' or 'residual', got {accept!r}")
    net = prepare_model(model, dtype, device)
    spec = ParamSpec.of(net)
    generator = torch.Generator().manual_seed(seed)
    if points is None:
        points = problem.sample_points(generator, dtype, device, counts)
    else:
        points = {k: torch.as_tensor(v).to(dtype=dtype, device=device) for k, v in points.items()}
    counts = {k: int(v.shape[0]) for k, v in points.items()}
    _check_final(final_gn_iterations, final_rank, final_counts, spec.numel, counts)
    if validation_points is None:
        validation_points = draw_validation_points(problem, seed, dtype, device, counts)
    else:
        validation_points = {k: torch.as_tensor(v).to(dtype=dtype, device=device)
                             for k, v in validation_points.items()}
    history: list[HistoryEntry] = []
    start_iter = 0
    best: dict | None = None  # {"iteration", "theta", "V", "z", "validation_residual"}
    settings = history_settings(
        problem, net, points, validation_points, seed, dtype, rank=rank, subspace=subspace,
        oversampling=oversampling, power_iterations=power_iterations, resample=resample,
        adaptive_fraction=adaptive_fraction, gn_iterations=gn_iterations, gn_patience=gn_patience, damping=damping,
        rcond=rcond, align_iterations=align_iterations, dtau=dtau, warm_start=warm_start,
        reject_factor=reject_factor, accept=accept, patience=patience,
        **({"chord_steps": chord_steps} if chord_steps else {}),
        **({"final_gn_iterations": final_gn_iterations, "final_rank": final_rank,
            "final_counts": dict(sorted(final_counts.items())) if final_counts else None}
           if final_gn_iterations > 0 else {}))
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None:
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):  # of a write killed midway
            leftover.unlink(missing_ok=True)
    if path is not None and resume and path.exists():
        state = read_checkpoint(path)
        check_settings(path, state.get("settings", {}), settings)
        net.load_state_dict({k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
                             for k, v in state["model"].items()})
        generator.set_state(state["generator"])
        points = {k: v.to(dtype=dtype, device=device) for k, v in state["points"].items()}
        history = [HistoryEntry.from_json(rec) for rec in state["history"]]
        start_iter = int(state["next_iteration"])
        best = {k: (v.to(dtype=dtype, device=device) if isinstance(v, torch.Tensor) else v)
                for k, v in state["best"].items()}

    def validation_of(module: nn.Module) -> float:
        return residual_norm(problem, module, validation_points)

    if start_iter == 0 and not history:
        # Iteration 0 records the starting network (no refinement) and is the first "best".
        residual, validation = residual_norm(problem, net, points), validation_of(net)
        errors = model_errors(problem, net, dtype, device) if compute_errors else {}
        rec = HistoryEntry(0, time.perf_counter() - t_start, residual=residual, errors=errors,
                           extras={"accepted": True, "validation_residual": validation, "linearized_residual": None,
                                   "rank": None, "gn_iterations": 0, "network_validation_residual": validation})
        history.append(rec)
        best = {"iteration": 0, "theta": spec.flatten(net).clone(), "V": None, "z": None,
                "validation_residual": validation}
        start_iter = 1
        if path is not None:
            _checkpoint(path, net, generator, points, history, best, start_iter, settings)
        if callback:
            callback(rec)

    # Validation residual of the current network: that of the last accepted alignment.
    network_val = next(r["network_validation_residual"] for r in reversed(history) if r["accepted"])
    backends: dict[str, dict] = {}  # the path of each term in the last Gauss–Newton and alignment
    finished = any(rec.get("final") for rec in history)
    for k in range(start_iter, 0 if finished else outer_iterations + 1):
        if patience is not None and _since_best(history) >= patience:
            break
        t_iter = time.perf_counter()
        if k > 1 and resample != "none":
            points = (adaptive_points(problem, net, generator, dtype, device, counts, adaptive_fraction)
                      if resample == "adaptive" else problem.sample_points(generator, dtype, device, counts))
        gn = tangent_gauss_newton(
            problem, net, points=points, validation_points=validation_points, rank=rank, subspace=subspace,
            oversampling=oversampling, power_iterations=power_iterations, max_iters=gn_iterations,
            patience=gn_patience, damping=damping, rcond=rcond, chord_steps=chord_steps, generator=generator,
            dtype=dtype, device=device, memory_budget=memory_budget, compute_errors=False)
        lin = gn.model
        backends["gauss_newton"] = gn.diagnostics["jacobian_backends"]
        pred_val = gn.diagnostics["after"].validation
        gn_best = gn.history[gn.best_iteration]
        # Align the network to the predictor on every collocation point.
        x_all = torch.cat(list(points.values()))
        with torch.no_grad():
            targets = lin(x_all).detach()
        aligned = copy.deepcopy(net)
        start_step = 0.0
        align_problem = AlignmentProblem(problem, x_all, targets, dtau)
        align_points = {**(points if dtau is not None else {}), "align": x_all}
        if warm_start:  # with align_iterations=0: a Gauss–Newton step in θ with a backtracking choice
            start_step = _warm_start(align_problem, aligned, align_points, lin.delta.detach(), spec)
        if align_iterations > 0:
            backends["alignment"] = train_lbfgs(align_problem, aligned, align_points, align_iterations,
                                                progress=False).backends
        net_val = validation_of(aligned)
        distance_before, distance_after = _distances_to(lin, net, aligned, validation_points)
        extras = {"linearized_residual": gn.history[1]["linearized_residual"] if len(gn.history) > 1 else None,
                  "validation_residual": pred_val, "network_validation_residual": net_val,
                  "rank": gn.basis.rank, "gn_iterations": len(gn.history) - 1, "gn_stop": gn.stop_reason,
                  "chord_steps": sum(h["chord_steps"] for h in gn.history), "align_start_step": start_step,
                  "network_distance": distance_after}
        errors = {}
        if compute_errors:
            errors = model_errors(problem, lin, dtype, device)
            extras.update({f"network_{key}": v for key, v in model_errors(problem, aligned, dtype, device).items()})
        # The predictor may become the best state; the aligned network replaces the current one
        # by the rules of `accept` (a diverging alignment is rejected and the network kept).
        best = _better_predictor(best, k, lin, pred_val)
        extras["accepted_by"] = alignment_verdict(accept, reject_factor, network_val, net_val, pred_val,
                                                  distance_before, distance_after)
        accepted = extras["accepted_by"] is not None
        extras["accepted"] = accepted
        if accepted:
            spec.assign(net, spec.flatten(aligned))
            network_val = net_val
            if net_val < best["validation_residual"]:
                best = {"iteration": k, "theta": spec.flatten(aligned).clone(), "V": None, "z": None,
                        "validation_residual": net_val}
        extras["best_iteration"] = best["iteration"]
        extras["seconds_iteration"] = time.perf_counter() - t_iter
        elapsed = (history[-1].seconds if history else 0.0) + extras["seconds_iteration"]
        rec = HistoryEntry(k, elapsed, residual=gn_best.residual, errors=errors, extras=extras)
        history.append(rec)
        if path is not None:
            _checkpoint(path, net, generator, points, history, best, k + 1, settings)
        if callback:
            callback(rec)

    if final_gn_iterations > 0 and not finished:
        k = history[-1].iteration + 1
        t_iter = time.perf_counter()
        final_points = {**counts, **(final_counts or {})}
        if resample == "adaptive":
            points = adaptive_points(problem, net, generator, dtype, device, final_points, adaptive_fraction)
        else:
            points = problem.sample_points(generator, dtype, device, final_points)
        m = spec.numel
        whole = final_rank == m or (final_rank is None and m <= FULL_SPACE_MAX_PARAMS)
        gn = tangent_gauss_newton(
            problem, net, points=points, validation_points=validation_points,
            rank=None if whole else (final_rank or rank), subspace="full" if whole else subspace,
            oversampling=oversampling, power_iterations=power_iterations, max_iters=final_gn_iterations,
            patience=gn_patience, damping=damping, rcond=rcond, chord_steps=chord_steps, generator=generator,
            dtype=dtype, device=device, memory_budget=memory_budget, compute_errors=False)
        backends["final"] = gn.diagnostics["jacobian_backends"]
        pred_val = gn.diagnostics["after"].validation
        lin = gn.model
        best = _better_predictor(best, k, lin, pred_val)
        extras = {"final": True, "accepted": True, "validation_residual": pred_val,
                  "network_validation_residual": network_val, "rank": gn.basis.rank,
                  "linearized_residual": gn.history[1]["linearized_residual"] if len(gn.history) > 1 else None,
                  "gn_iterations": len(gn.history) - 1, "gn_stop": gn.stop_reason,
                  "chord_steps": sum(h["chord_steps"] for h in gn.history),
                  "points": {name: int(v.shape[0]) for name, v in points.items()},
                  "best_iteration": best["iteration"], "seconds_iteration": time.perf_counter() - t_iter}
        errors = model_errors(problem, lin, dtype, device) if compute_errors else {}
        rec = HistoryEntry(k, history[-1].seconds + extras["seconds_iteration"],
                           residual=gn.history[gn.best_iteration].residual, errors=errors, extras=extras)
        history.append(rec)
        if path is not None:
            _checkpoint(path, net, generator, points, history, best, k + 1, settings)
        if callback:
            callback(rec)

    model_out = _best_model(net, spec, best)
    diag = {"outer_iterations": len(history) - 1, "best_iteration": best["iteration"],
            "best_state": "network" if best["V"] is None else "predictor",
            "validation_residual": best["validation_residual"],
            "seconds": (history[-1].seconds if history else 0.0), "backends": backends}
    if compute_errors:
        diag.update(model_errors(problem, model_out, dtype, device))
    return ILSRResult(model_out, net, history, best["iteration"], diag)


def alignment_verdict(accept: str, reject_factor: float, network_validation: float, aligned_validation: float,
                      predictor_validation: float, distance_before: float, distance_after: float) -> str | None:
    """Why an aligned network replaces the current one: "residual" (its validation residual is
    finite and at most reject_factor × the current network's), "distance" (accept "closer" only:
    the predictor validates better than the current network and the aligned network is closer to
    it than the current one), or None (rejected)."""
    if not math.isfinite(aligned_validation):
        return None
    if aligned_validation <= reject_factor * network_validation:
        return "residual"
    if accept == "closer" and predictor_validation < network_validation and distance_after < distance_before:
        return "distance"
    return None


def _distances_to(target: nn.Module, before: nn.Module, after: nn.Module,
                  points: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Relative L2 distances ‖before − target‖/‖target‖ and ‖after − target‖/‖target‖ of the
    outputs at all ``points`` (inf where not finite)."""
    x = torch.cat(list(points.values()))
    with torch.no_grad():
        t = target(x)
        scale = torch.linalg.vector_norm(t).clamp_min(torch.finfo(t.dtype).tiny)
        out = [float(torch.linalg.vector_norm(m(x) - t) / scale) for m in (before, after)]
    return tuple(v if math.isfinite(v) else math.inf for v in out)


def _better_predictor(best: dict, iteration: int, lin: LinearizedModel, validation: float) -> dict:
    """The best state: the predictor ``lin`` of ``iteration`` when its validation residual is finite
    and lower than the best one's, else ``best`` unchanged."""
    if not (math.isfinite(validation) and validation < best["validation_residual"]):
        return best
    return {"iteration": iteration, "theta": lin.theta0.clone(), "V": lin.basis.clone(),
            "z": lin.z.detach().clone(), "validation_residual": validation}


def _check_final(iterations: int, rank: int | None, counts: dict[str, int] | None, n_params: int,
                 terms: dict[str, int]) -> None:
    """Refuse final-refinement options that cannot run, naming the fix."""
    if iterations < 0:
        raise ValueError(f"final_gn_iterations must be >= 0 (0: no final refinement), got {iterations}")
    if rank is not None and not 1 <= rank <= n_params:
        raise ValueError(f"final_rank must be between 1 and the network's {n_params} parameters, got {rank}: "
                         "lower it, or leave it None for the whole space of a small network")
    unknown = sorted(set(counts or {}) - set(terms))
    if unknown:
        raise ValueError(f"final_counts names terms {unknown} the problem does not sample; its terms are "
                         f"{sorted(terms)}")
    if any(int(n) < 1 for n in (counts or {}).values()):
        raise ValueError(f"final_counts must give every term at least 1 point, got {counts}")


def _warm_start(align_problem: PDEProblem, net: nn.Module, points, delta: torch.Tensor, spec: ParamSpec,
                steps=(1.0, 0.5, 0.25)) -> float:
    """Move ``net`` (at θ0) to θ0 + s·delta for the s in ``steps`` (or 0) with the lowest finite
    alignment loss; returns that s."""
    theta0 = spec.flatten(net).clone()
    best_s, best = 0.0, residual_norm(align_problem, net, points)
    for s in steps:
        spec.assign(net, theta0 + s * delta)
        val = residual_norm(align_problem, net, points)
        if val < best:
            best_s, best = s, val
    spec.assign(net, theta0 + best_s * delta)
    return best_s


def _since_best(history: list[HistoryEntry]) -> int:
    """Outer iterations since the last new best (for the outer patience rule)."""
    return history[-1].iteration - history[-1].get("best_iteration", 0)


def _best_model(net: nn.Module, spec: ParamSpec, best: dict) -> LinearizedModel:
    base = copy.deepcopy(net)
    spec.assign(base, best["theta"])
    if best["V"] is None:  # the best state is a network: its predictor with z = 0
        m = spec.numel
        return LinearizedModel(base, best["theta"].new_zeros(m, 1), best["theta"].new_zeros(1))
    return LinearizedModel(base, best["V"], best["z"])


def _checkpoint(path: Path, net, generator, points, history, best, next_iteration, settings) -> None:
    save_state_dict(net, path, {
        "version": CHECKPOINT_VERSION,
        "settings": settings,
        "generator": generator.get_state(),
        "points": {k: v.detach().cpu() for k, v in points.items()},
        "history": [rec.to_json() for rec in history],
        "best": {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in best.items()},
        "next_iteration": int(next_iteration),
    })

"""Refine a trained DeepXDE model in place (PyTorch backend).

Three lines for a user who already has a ``dde.Model``::

    from pinnlsr.interop import deepxde as px
    result = px.refine(model)              # one-shot LSR in float64
    u = result.predictor(x)                # an nn.Module, called like model.net

The refinement problem is read from the model itself: ``model.data`` (``dde.data.PDE`` or
``TimePDE``: its ``pde`` function, its BCs/ICs and training points, anchors included), the loss
weights given to ``compile`` and ``model.net`` (feature and output transforms included, so hard
constraints stay exact). The stacked residual is

    f(θ) = concat_i sqrt(w_i / n_i) · e_i(θ),   ||f||² = Σ_i w_i mean(e_i²) = DeepXDE's training loss,

with e_i the PDE residuals (on the PDE points, as DeepXDE slices them) and then each BC's error, in
DeepXDE's order (``DeepXDEProblem.term_names``).

DeepXDE's ``pde(x, y)`` takes derivatives with ``dde.grad`` (``torch.autograd.grad`` with
``create_graph=True`` and a global cache), which ``torch.func`` transforms cannot trace. So the
Jacobian products are computed with plain autograd: G·v by forward-mode AD on the parameters over
DeepXDE's reverse-mode input derivatives (``torch.autograd.forward_ad`` dual parameters), Gᵀ·w by
one more reverse pass; DeepXDE's gradient cache is cleared around every evaluation. Both are exact
(tested against ``torch.autograd.functional.jacobian`` of the whole residual).

When ``pde(x, y)`` is pointwise (checked), the dense G is formed block by block (BC rows, then a
few PDE points at a time), which costs n·chunk instead of n² backward rows.

Nonlinear PDEs: :func:`gauss_newton` re-linearizes in parameter space (Levenberg–Marquardt with the
damping tried over decades per Jacobian, only decreasing steps accepted, best state on fresh
validation points).
Its result is a network of DeepXDE's own architecture, which :func:`write_back` copies into
``model.net``. The refined linear predictor of :func:`refine` is a different function from any
network; :func:`write_back` of an LSR result writes θ0 + V z (the network the step points to) and
says how far that is from the predictor.

float32 models are refined in float64 (a float64 copy of ``model.net``; the model itself is not
touched until :func:`write_back`, which casts back to the model's dtype and reports the loss).

Not supported (clear errors): TensorFlow/JAX/Paddle backends, forward-mode ``dde.config.autodiff``,
data objects other than PDE/TimePDE (physics-informed DeepONets, ``PDEOperatorCartesianProd``, are
refined one input function at a time by :mod:`pinnlsr.interop.deepxde_operator`), mini-batched
``PointSetBC``. External trainable variables (inverse problems) are held fixed.
"""
from __future__ import annotations

import copy
import math
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..models import LinearizedModel
from ..records import Evaluation, HistoryEntry, compared
from ..solvers import DampedLeastSquares, DampingSearch, gain_ratio, no_tf32, solve
from ..subspace import scaled_directions, sketch_svd
from .deepxde_problem import (INSTALL_HINT, SUPPORTED_DATA, DeepXDEJacobian, DeepXDEProblem, check_backend,
                              import_deepxde, refinement_notes)

# --------------------------------------------------------------------------------------
# results, predictor, write-back
# --------------------------------------------------------------------------------------
@dataclass
class DeepXDERefinement:
    """What :func:`refine` and :func:`gauss_newton` return.

    ``predictor``: the refined model, an nn.Module called like ``model.net`` on tensors (N, d) in
    ``problem.dtype`` (a :class:`~pinnlsr.models.LinearizedModel` for LSR, a copy of the net for
    Gauss–Newton); ``network``: a copy of ``model.net`` at the refined parameters (what
    :func:`write_back` writes); ``diagnostics``: residuals, errors, rank, seconds, notes.
    """

    predictor: nn.Module
    network: nn.Module
    problem: DeepXDEProblem
    method: str
    diagnostics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)

    def predict(self, x) -> np.ndarray:
        """Predictor values at points x (array-like (N, d)) as a float64 NumPy array."""
        return predict(self.predictor, x, self.problem.dtype)


def predict(module: Callable, x, dtype: torch.dtype = torch.float64, chunk: int = 8192) -> np.ndarray:
    """``module`` evaluated on x (N, d) in chunks, returned as NumPy (N, k)."""
    p = next(iter(module.parameters()), None) if isinstance(module, nn.Module) else None
    device = p.device if p is not None else torch.device("cpu")
    x = torch.as_tensor(np.asarray(x), dtype=dtype, device=device)
    outs = []
    for s in range(0, x.shape[0], chunk):
        with torch.enable_grad():  # LinearizedModel's jvp; cheap without create_graph
            outs.append(module(x[s:s + chunk]).detach())
    return torch.cat(outs).cpu().numpy().astype(np.float64)


def rel_l2(pred: np.ndarray, ref: np.ndarray) -> float:
    """||pred - ref||₂ / ||ref||₂ over all points and outputs."""
    return float(np.linalg.norm(pred - ref) / np.linalg.norm(ref))


def _errors_vs(problem: DeepXDEProblem, module: Callable, reference) -> dict:
    if reference is None:
        return {}
    X, U = reference
    P = predict(module, X, problem.dtype)
    U = np.asarray(U, dtype=np.float64).reshape(P.shape)
    return {"rel_l2": rel_l2(P, U), "max_abs_err": float(np.abs(P - U).max())}


def _norm(v: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(v))


def refine(model, *, rank: int | None = None, subspace: str = "svd", oversampling: int = 10,
           rcond: float = 1e-14, rcond_basis: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float64,
           device=None, loss_weights: Sequence[float] | None = None, anchors=None, reference=None,
           problem: DeepXDEProblem | None = None) -> DeepXDERefinement:
    """One-shot LSR of a compiled DeepXDE model; ``model`` is not modified.

    ``subspace="svd"``: dense G (n_rows, m) by reverse mode, V = the top ``rank`` right singular
    vectors scaled by 1/σ (default rank: all with σ > rcond_basis·σ_max, at most min(n_rows, m)).
    ``subspace="randomized"``: Y = Gᵀ Ω (rank + oversampling columns), Q = orth(Y), then the SVD
    of G Q (forward mode), for nets too large for a dense G. ``anchors``: extra PDE points for the
    refinement (see :class:`DeepXDEProblem`). ``reference`` = (X, U) arrays for the error (default:
    ``data.soln`` on ``data.test_x`` when the data has a solution).
    """
    t_start = time.perf_counter()
    prob = problem or DeepXDEProblem(model, dtype=dtype, device=device, loss_weights=loss_weights, anchors=anchors)
    reference = reference if reference is not None else prob.reference()
    theta = prob.theta()
    m, n = theta.numel(), prob.n_rows
    seconds = {}
    t = time.perf_counter()
    f0 = prob.residual_at(theta)
    seconds["residual"] = time.perf_counter() - t
    t = time.perf_counter()
    op = DeepXDEJacobian(prob, theta)
    with no_tf32():
        if subspace == "svd":
            G = op.dense()
            seconds["jacobian"] = time.perf_counter() - t
            t = time.perf_counter()
            U, S, Wh = torch.linalg.svd(G, full_matrices=False)
            W = Wh.T
        elif subspace == "randomized":
            W, S, U = sketch_svd(op, rank or min(m, n), oversampling,
                                 generator=torch.Generator(device="cpu").manual_seed(seed), left=True)
            seconds["jacobian"] = time.perf_counter() - t
            t = time.perf_counter()
        else:
            raise ValueError(f"subspace must be 'svd' or 'randomized', got {subspace!r}")
        # V = W/σ: G·V = U has orthonormal columns (the same scaling as pinnlsr.lsr)
        V, r = scaled_directions(W, S, rank or min(m, n), True, rcond_basis)
        GV = U[:, :r]
        seconds["basis"] = time.perf_counter() - t
        t = time.perf_counter()
        sol = solve(GV, -f0, method="svd", rcond=rcond)
        seconds["solve"] = time.perf_counter() - t
    t = time.perf_counter()
    predictor = LinearizedModel(prob.net, V, sol.z)
    predictor.eval()
    f_after = prob.residual(predictor).detach()
    network = predictor.network_at(1.0)
    residual_network = _norm(prob.residual(network).detach())
    terms_before = dict(zip(prob.term_names, prob.term_losses()))
    terms_after = dict(zip(prob.term_names, prob.term_losses(predictor)))
    diag = {
        "method": "lsr", "subspace": subspace, "rank": r, "n_rows": n, "n_params": m,
        "dtype": str(prob.dtype).replace("torch.", ""), "cond": sol.cond, "rank_used": sol.rank_used,
        "linearized_residual": sol.residual_norm, "notes": list(prob.notes),
        # before/after: the network and the linear predictor; network: the network at θ0 + V z
        **compared(before=Evaluation(_errors_vs(prob, prob.net, reference), _norm(f0), terms=terms_before),
                   after=Evaluation(_errors_vs(prob, predictor, reference), _norm(f_after), terms=terms_after),
                   network=Evaluation(_errors_vs(prob, network, reference), residual_network)),
    }
    seconds["diagnostics"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_start
    diag["seconds"] = seconds
    return DeepXDERefinement(predictor, network, prob, "lsr", diag)


def gauss_newton(model, *, iterations: int = 50, rcond: float = 1e-12, damping: float = 1e-3,
                 dtype: torch.dtype = torch.float64, device=None, loss_weights: Sequence[float] | None = None,
                 anchors=None, reference=None, problem: DeepXDEProblem | None = None, tol: float = 0.0,
                 validation=2000, seed: int = 0, patience: int = 10, max_seconds: float | None = None,
                 callback: Callable | None = None) -> DeepXDERefinement:
    """Levenberg–Marquardt on the DeepXDE residual in parameter space; ``model`` is not modified.

    Each iteration forms the dense G (n_rows, m) once (:class:`DeepXDEJacobian`) and the damped
    least-squares step min ||f + G δ||² + μ||δ||² for every trial μ from one SVD (of the R factor
    when G is tall; :class:`pinnlsr.solvers.DampedLeastSquares`, σ_k > rcond·σ_max kept). A step
    is accepted only when it lowers ||f||; μ is chosen per iteration by trying it over decades
    (:class:`pinnlsr.solvers.DampingSearch`: the step with the lowest validation residual, or
    training residual without validation points), centred first on μ = damping·σ_max².

    ``validation``: fresh PDE points (a count drawn from ``data.geom`` with ``seed``, or an array
    (k, d); 0/None: none). The state returned is the one with the lowest validation residual
    (PDE terms on those points plus the BC rows), so the refinement cannot over-fit the training
    points unseen; it stops after ``patience`` accepted steps without a new best, when no damping
    gives a decrease, when ||f|| <= tol, or after ``max_seconds``. Returns the network at that state
    (predictor = network) and the history per iteration.
    """
    t_start = time.perf_counter()
    prob = problem or DeepXDEProblem(model, dtype=dtype, device=device, loss_weights=loss_weights, anchors=anchors)
    reference = reference if reference is not None else prob.reference()
    net = copy.deepcopy(prob.net)
    theta = prob.theta()
    f = prob.residual_at(theta)
    residual_before, terms_before = _norm(f), dict(zip(prob.term_names, prob.term_losses()))
    errors_before = _errors_vs(prob, prob.net, reference)
    X_val = None
    if validation is not None and not (isinstance(validation, int) and validation <= 0):
        if not prob.pointwise:
            prob.notes.append("validation points skipped: the pde is not pointwise")
        else:
            X_val = (prob.sample_pde_points(validation, seed) if isinstance(validation, int)
                     else np.asarray(validation, dtype=np.float64))
    aux_val = prob.aux_at(X_val) if X_val is not None else None
    score = (lambda th, fv: prob.validation_residual(th, X_val, aux_val)) if X_val is not None else (
        lambda th, fv: _norm(fv))
    best = {"theta": theta.clone(), "score": score(theta, f), "iteration": 0}
    validation_before = best["score"] if X_val is not None else None
    search = DampingSearch(damping, max_tries=40)
    history, since_best, stop = [], 0, "iterations"
    for it in range(iterations):
        t = time.perf_counter()
        step = DampedLeastSquares(DeepXDEJacobian(prob, theta).dense(), -f, rcond)
        s_max2 = step.sigma_max**2 if step.sigma_max > 0 else 1.0

        def evaluate(delta):
            f_new = prob.residual_at(theta + delta)
            return (_norm(f_new) if torch.isfinite(f_new).all() else math.inf), f_new

        trial, tries, _ = search.choose(step, _norm(f), evaluate,
                                        (lambda d, f_new: score(theta + d, f_new)) if X_val is not None else None)
        accepted, rho = trial is not None, float("nan")
        if accepted:
            rho = gain_ratio(_norm(f), trial.norm, trial.linearized)
            theta, f = theta + trial.delta, trial.payload
        seconds = time.perf_counter() - t
        extras = {"accepted": accepted, "tries": tries, "damping": (trial.mu if accepted else search.mu) / s_max2,
                  "gain_ratio": rho, "rank_used": step.rank_used}
        if accepted:
            val = score(theta, f)
            extras["validation"] = val if X_val is not None else None
            if val < best["score"]:
                best, since_best = {"theta": theta.clone(), "score": val, "iteration": it + 1}, 0
            else:
                since_best += 1
        errors = {}
        if reference is not None and callback is not None:
            prob.spec.assign(net, theta)
            errors = _errors_vs(prob, net, reference)
        rec = HistoryEntry(it + 1, seconds, residual=_norm(f), errors=errors, extras=extras)
        history.append(rec)
        if callback is not None:
            callback(rec)
        if not accepted:
            stop = "no damping lowered the residual"
            break
        if _norm(f) <= tol:
            stop = "tol"
            break
        if since_best >= patience:
            stop = f"{patience} steps without a better validation residual"
            break
        if max_seconds is not None and time.perf_counter() - t_start >= max_seconds:
            stop = "max_seconds"
            break
    prob.spec.assign(net, best["theta"])
    for p in net.parameters():
        p.requires_grad_(True)
    residual_after = _norm(prob.residual_at(best["theta"]))
    terms_after = dict(zip(prob.term_names, prob.term_losses(net)))
    after = Evaluation(_errors_vs(prob, net, reference), residual_after,
                       best["score"] if X_val is not None else None, terms_after)
    diag = {
        "method": "gauss_newton", "iterations": len(history), "best_iteration": best["iteration"],
        "stopped": stop, "validation_points": 0 if X_val is None else int(X_val.shape[0]),
        "n_rows": prob.n_rows, "n_params": theta.numel(), "dtype": str(prob.dtype).replace("torch.", ""),
        "notes": list(prob.notes),
        **compared(before=Evaluation(errors_before, residual_before, validation_before, terms_before), after=after),
    }
    diag["seconds"] = {"total": time.perf_counter() - t_start}
    return DeepXDERefinement(net, net, prob, "gauss_newton", diag, history)


def write_back(model, refined: DeepXDERefinement | nn.Module) -> dict:
    """Copy the refined network's parameters into ``model.net`` in place (cast to its dtype).

    Returns {"max_change", "dtype", "note"}: with float32 models the float64 refinement is rounded
    (say so); for an LSR result the written network is θ0 + V z, not the linear predictor itself
    (its residual is in ``diagnostics["residual_network"]``)."""
    network = refined.network if isinstance(refined, DeepXDERefinement) else refined
    src = dict(network.named_parameters())
    dst = dict(model.net.named_parameters())
    missing = [k for k in dst if k not in src]
    if missing or set(src) - set(dst):
        raise ValueError(f"refined network and model.net have different parameters (missing {missing[:4]}, "
                         f"extra {sorted(set(src) - set(dst))[:4]}): was it refined from this model?")
    change = 0.0
    with torch.no_grad():
        for k, p in dst.items():
            if p.shape != src[k].shape:
                raise ValueError(f"parameter {k!r}: model.net has shape {tuple(p.shape)}, refined {tuple(src[k].shape)}")
            new = src[k].detach().to(device=p.device, dtype=p.dtype)
            change = max(change, float((new.double() - p.double()).abs().max()))
            p.copy_(new)
    dtype = next(model.net.parameters()).dtype
    notes = []
    if dtype != next(network.parameters()).dtype:
        notes.append(f"weights rounded from {next(network.parameters()).dtype} to {dtype}: refined accuracy "
                     "below that precision is lost; keep the float64 predictor for accurate values")
    if isinstance(refined, DeepXDERefinement) and refined.method == "lsr":
        notes.append("LSR result: wrote θ0 + V z, the network the step points to, which differs from the "
                     "linear predictor (use gauss_newton for a network that is the refined model)")
    return {"max_change": change, "dtype": str(dtype).replace("torch.", ""), "note": "; ".join(notes)}


# --------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------
def load_checkpoint(model_or_net, path: str | os.PathLike, strict: bool = True) -> list[str]:
    """Load network weights from a DeepXDE ``model.save`` file (``<prefix>-<step>.pt``) or a plain
    state_dict into ``model.net`` (or a bare net), without compile or the optimizer.

    Reads with ``torch.load(weights_only=True)`` (no code runs). Returns what was ignored (e.g.
    ``optimizer_state_dict``). Pickle-protocol saves (``.pkl``) are refused: re-save with the
    default protocol.
    """
    net = model_or_net.net if hasattr(model_or_net, "net") else model_or_net
    if not isinstance(net, nn.Module):
        raise TypeError("load_checkpoint needs a PyTorch-backend dde.Model or its net (a torch.nn.Module)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist (model.save appends '-<iteration>.pt')")
    if path.suffix == ".pkl":
        raise ValueError(f"{path.name} was saved with protocol='pickle', which runs code on load; re-save with "
                         "model.save(prefix) (protocol='backend')")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path.name} is not a weights-only PyTorch checkpoint ({exc}); save the net's "
                         "state_dict with torch.save or model.save") from exc
    ignored: list[str] = []
    if isinstance(obj, dict) and "model_state_dict" in obj:
        state = obj["model_state_dict"]
        ignored = [k for k in obj if k != "model_state_dict"]
    elif isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        state = obj
    else:
        raise ValueError(f"{path.name}: expected DeepXDE's {{'model_state_dict': ..., 'optimizer_state_dict': ...}} "
                         "or a plain state_dict")
    dtype = next(net.parameters()).dtype
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    result = net.load_state_dict(state, strict=strict)
    ignored += [f"unexpected key {k}" for k in result.unexpected_keys]
    ignored += [f"missing key {k}" for k in result.missing_keys]
    return ignored


__all__ = ["DeepXDEProblem", "DeepXDEJacobian", "DeepXDERefinement", "refine", "gauss_newton", "write_back",
           "load_checkpoint", "predict", "rel_l2", "import_deepxde", "check_backend", "refinement_notes",
           "SUPPORTED_DATA", "INSTALL_HINT"]

"""Error metrics against a problem's exact solution or reference data."""
from __future__ import annotations

import torch
from torch import nn

from .problem import PDEProblem


def reference_on(problem: PDEProblem, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The problem's (test points (N, d), reference values (N, k)) in dtype/device, validated."""
    ref = problem.reference()
    if ref is None:
        return None
    x, u = (torch.as_tensor(a).to(dtype=dtype, device=device) for a in ref)
    if u.ndim == 1:
        u = u.unsqueeze(1)
    if x.ndim != 2 or x.shape[1] != problem.dim:
        raise ValueError(
            f"reference points of {problem.name!r} have shape {tuple(x.shape)}, expected (N, {problem.dim})"
        )
    if u.shape != (x.shape[0], problem.n_outputs):
        raise ValueError(
            f"reference values of {problem.name!r} have shape {tuple(u.shape)}, expected "
            f"({x.shape[0]}, {problem.n_outputs}) for outputs {problem.output_names}"
        )
    if not (torch.isfinite(x).all() and torch.isfinite(u).all()):
        raise ValueError(f"reference data of {problem.name!r} contains NaN or Inf")
    return x, u


def predict(model: nn.Module, x: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Model outputs at x (N, d) -> (N, k), in chunks, without building a graph on the parameters."""
    outs = []
    for i in range(0, x.shape[0], chunk):
        with torch.no_grad():
            outs.append(model(x[i:i + chunk]).detach())
    return torch.cat(outs)


def error_metrics(prediction: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """rel_l2 = ||pred - ref||₂ / ||ref||₂ over all points and outputs, max_abs_err, and the
    relative L2 error of each output column (``rel_l2_<j>``)."""
    diff = prediction - reference
    out = {
        "rel_l2": float(diff.norm() / reference.norm()),
        "max_abs_err": float(diff.abs().max()),
    }
    if reference.shape[1] > 1:
        for j in range(reference.shape[1]):
            out[f"rel_l2_{j}"] = float(diff[:, j].norm() / reference[:, j].norm())
    return out


def model_errors(problem: PDEProblem, model: nn.Module, dtype: torch.dtype, device) -> dict[str, float]:
    """Error metrics of ``model`` against the problem's reference ({} when there is none), and
    ``rel_l2_<region>`` / ``max_abs_err_<region>`` on each of the problem's
    :meth:`~pinnlsr.problem.PDEProblem.error_regions` beside the all-point numbers."""
    ref = reference_on(problem, dtype, device)
    if ref is None:
        return {}
    x, u = ref
    pred = predict(model, x)
    out = error_metrics(pred, u)
    for name, mask in problem.error_regions(x).items():
        mask = torch.as_tensor(mask, device=x.device).reshape(-1)
        if mask.dtype != torch.bool or mask.shape[0] != x.shape[0] or not bool(mask.any()):
            raise ValueError(f"{problem.name}: error region {name!r} must be a non-empty boolean mask of the "
                             f"{x.shape[0]} reference points")
        sub = error_metrics(pred[mask], u[mask])
        out[f"rel_l2_{name}"], out[f"max_abs_err_{name}"] = sub["rel_l2"], sub["max_abs_err"]
    return out


"""Gradient-based pretraining and baselines: Adam and L-BFGS on the problem's loss ||f(θ)||².

The loss is Σ_t w_t · mean_i |r_t(x_i)|², the squared norm of the stacked residual that LSR
minimizes, so the numbers are directly comparable.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .models import ParamSpec
from .problem import PDEProblem
from .residual import residual_rows


@dataclass
class TrainHistory:
    """Loss per step and wall time; ``best_loss`` and the step that reached it."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_loss: float = math.inf
    best_step: int = -1
    diverged: bool = False


def _live_theta(model: nn.Module, spec: ParamSpec) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.cat([params[n].reshape(-1) for n in spec.names])


def _progress(total: int, desc: str, progress: bool | None):
    enabled = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def train_adam(
    problem: PDEProblem,
    model: nn.Module,
    points: dict[str, torch.Tensor],
    steps: int,
    lr: float = 1e-3,
    final_lr: float | None = 1e-4,
    progress: bool | None = None,
    log_every: int = 100,
    callback: Callable[[int, float], None] | None = None,
    max_seconds: float | None = None,
) -> TrainHistory:
    """Adam on the problem loss at fixed ``points`` ({term: (n, d)}), in place on ``model``.

    The learning rate decays exponentially from ``lr`` to ``final_lr`` (constant if None) over
    ``steps``. The model ends at the best parameters seen (a diverging run never leaves a worse
    model behind). Returns the loss history (every ``log_every`` steps and the last one), and
    calls ``callback(step, loss)`` at those steps. ``max_seconds`` stops the run at the first
    logged step after that much wall time (equal-time comparisons).
    """
    if steps < 0:
        raise ValueError(f"Adam steps must be >= 0, got {steps}")
    spec = ParamSpec.of(model)
    rows = residual_rows(problem, model, points, spec)
    params = [dict(model.named_parameters())[n] for n in spec.names]
    opt = torch.optim.Adam(params, lr=lr)
    gamma = (final_lr / lr) ** (1.0 / max(steps, 1)) if final_lr else 1.0
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    hist = TrainHistory()
    best_theta = spec.flatten(model).clone()
    start = time.perf_counter()
    bar = _progress(steps, "adam", progress)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        f = rows.values(_live_theta(model, spec), check=False)
        loss = f.dot(f)
        lv = float(loss.detach())
        if not math.isfinite(lv):
            hist.diverged = True
            break
        if lv < hist.best_loss:
            hist.best_loss, hist.best_step = lv, step
            best_theta = spec.flatten(model).clone()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            hist.step.append(step)
            hist.loss.append(lv)
            hist.seconds.append(time.perf_counter() - start)
            bar.set_postfix(loss=f"{lv:.3e}")
            if callback:
                callback(step, lv)
            if max_seconds is not None and time.perf_counter() - start >= max_seconds:
                break
        bar.update(1)
    bar.close()
    final = float(rows.values(spec.flatten(model), check=False).square().sum())
    if math.isfinite(final) and final < hist.best_loss:
        hist.best_loss, hist.best_step = final, steps
    else:
        spec.assign(model, best_theta)
    if hist.diverged:
        print(f"adam: loss became non-finite; kept the best state (loss {hist.best_loss:.3e} at step {hist.best_step})",
              file=sys.stderr)
    return hist


def train_lbfgs(
    problem: PDEProblem,
    model: nn.Module,
    points: dict[str, torch.Tensor],
    iterations: int,
    lr: float = 1.0,
    history_size: int = 50,
    progress: bool | None = None,
    log_every: int = 50,
    callback: Callable[[int, float], None] | None = None,
    max_seconds: float | None = None,
) -> TrainHistory:
    """``torch.optim.LBFGS`` with strong-Wolfe line search on the problem loss, in place.

    Runs ``iterations`` outer steps of at most 20 function evaluations each and keeps the best
    parameters seen; ``callback`` and ``max_seconds`` as in :func:`train_adam`."""
    if iterations < 0:
        raise ValueError(f"L-BFGS iterations must be >= 0, got {iterations}")
    spec = ParamSpec.of(model)
    rows = residual_rows(problem, model, points, spec)
    params = [dict(model.named_parameters())[n] for n in spec.names]
    opt = torch.optim.LBFGS(params, lr=lr, max_iter=20, history_size=history_size,
                            line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)
    hist = TrainHistory()
    best_theta = spec.flatten(model).clone()
    start = time.perf_counter()

    def closure():
        opt.zero_grad(set_to_none=True)
        f = rows.values(_live_theta(model, spec), check=False)
        loss = f.dot(f)
        loss.backward()
        return loss

    bar = _progress(iterations, "lbfgs", progress)
    for it in range(iterations):
        lv = float(opt.step(closure).detach())
        if not math.isfinite(lv):
            hist.diverged = True
            break
        if lv < hist.best_loss:
            hist.best_loss, hist.best_step = lv, it
            best_theta = spec.flatten(model).clone()
        if it % log_every == 0 or it == iterations - 1:
            hist.step.append(it)
            hist.loss.append(lv)
            hist.seconds.append(time.perf_counter() - start)
            bar.set_postfix(loss=f"{lv:.3e}")
            if callback:
                callback(it, lv)
            if max_seconds is not None and time.perf_counter() - start >= max_seconds:
                break
        bar.update(1)
    bar.close()
    final = float(rows.values(spec.flatten(model), check=False).square().sum())
    if not (math.isfinite(final) and final <= hist.best_loss):
        spec.assign(model, best_theta)
    else:
        hist.best_loss = final
    if hist.diverged:
        print(f"lbfgs: loss became non-finite; kept the best state (loss {hist.best_loss:.3e})", file=sys.stderr)
    return hist

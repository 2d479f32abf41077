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
from .records import HistoryEntry
from .jet_plans import JetLoss
from .residual import residual_rows


@dataclass
class TrainHistory:
    """The logged steps (:class:`~pinnlsr.records.HistoryEntry`: step, seconds since the start,
    loss), ``best_loss`` and the step that reached it, whether the loss diverged, and the path
    each term's values took (``backends``)."""

    entries: list[HistoryEntry] = field(default_factory=list)
    best_loss: float = math.inf
    best_step: int = -1
    diverged: bool = False
    backends: dict = field(default_factory=dict)

    @property
    def step(self) -> list[int]:
        return [e.iteration for e in self.entries]

    @property
    def loss(self) -> list[float]:
        return [e.loss for e in self.entries]

    @property
    def seconds(self) -> list[float]:
        return [e.seconds for e in self.entries]


class Objective:
    """The problem loss ||f(θ)||² of ``model`` at ``points`` as a function of the flat θ (m,):
    :meth:`value_and_grad` by jets where they apply and by ``vmap`` + autograd elsewhere
    (:class:`pinnlsr.jet_plans.JetLoss`; ``backends`` says which path each term takes)."""

    def __init__(self, problem: PDEProblem, model: nn.Module, points: dict[str, torch.Tensor],
                 loss_mode: str = "auto"):
        self.spec = ParamSpec.of(model)
        self.rows = residual_rows(problem, model, points, self.spec)
        self.loss = JetLoss(self.rows, model, self.spec.flatten(model), loss_mode)

    @property
    def backends(self) -> dict[str, str]:
        return self.loss.backends

    def value_and_grad(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss.value_and_grad(theta)

    def value(self, theta: torch.Tensor) -> float:
        """The loss at θ as a Python float (inf when not finite)."""
        v = float(self.loss.values(theta).square().sum())
        return v if math.isfinite(v) else math.inf


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
    loss_mode: str = "auto",
) -> TrainHistory:
    """Adam on the problem loss at fixed ``points`` ({term: (n, d)}), in place on ``model``.

    The learning rate decays exponentially from ``lr`` to ``final_lr`` (constant if None) over
    ``steps``. The model ends at the best parameters seen (a diverging run never leaves a worse
    model behind). Returns the loss history (every ``log_every`` steps and the last one), and
    calls ``callback(step, loss)`` at those steps. ``max_seconds`` stops the run at the first
    logged step after that much wall time (equal-time comparisons). ``loss_mode`` "auto" takes
    the loss and its gradient from jets where the model and the terms allow it (see
    :class:`Objective`; ``TrainHistory.backends`` records the path), "generic" from ``vmap`` +
    autograd everywhere; both give the same numbers to rounding.
    """
    if steps < 0:
        raise ValueError(f"Adam steps must be >= 0, got {steps}")
    objective = Objective(problem, model, points, loss_mode)
    spec = objective.spec
    theta = spec.flatten(model).clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    gamma = (final_lr / lr) ** (1.0 / max(steps, 1)) if final_lr else 1.0
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    hist = TrainHistory(backends=objective.backends)
    # The best state stays on the device: no host synchronization between logged steps.
    best_theta = theta.detach().clone()
    best_loss = torch.full((), math.inf, dtype=theta.dtype, device=theta.device)
    best_step = torch.full((), -1, dtype=torch.long, device=theta.device)
    start = time.perf_counter()
    bar = _progress(steps, "adam", progress)
    for step in range(steps):
        loss, grad = objective.value_and_grad(theta)
        better = loss < best_loss
        best_theta = torch.where(better, theta.detach(), best_theta)
        best_step = torch.where(better, step, best_step)
        best_loss = torch.where(better, loss, best_loss)
        if step % log_every == 0 or step == steps - 1:
            lv = float(loss)
            if not math.isfinite(lv):
                hist.diverged = True
                break
            hist.entries.append(HistoryEntry(step, time.perf_counter() - start, loss=lv))
            bar.set_postfix(loss=f"{lv:.3e}")
            if callback:
                callback(step, lv)
            if max_seconds is not None and time.perf_counter() - start >= max_seconds:
                theta.grad = grad
                opt.step()
                bar.update(1)
                break
        theta.grad = grad
        opt.step()
        sched.step()
        bar.update(1)
    bar.close()
    hist.best_loss, hist.best_step = float(best_loss), int(best_step)
    final = objective.value(theta.detach())
    if math.isfinite(final) and final < hist.best_loss:
        hist.best_loss, hist.best_step = final, steps
        spec.assign(model, theta.detach())
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
    loss_mode: str = "auto",
) -> TrainHistory:
    """``torch.optim.LBFGS`` with strong-Wolfe line search on the problem loss, in place.

    Runs ``iterations`` outer steps of at most 20 function evaluations each and keeps the best
    parameters seen; ``callback``, ``max_seconds`` and ``loss_mode`` as in :func:`train_adam`."""
    if iterations < 0:
        raise ValueError(f"L-BFGS iterations must be >= 0, got {iterations}")
    objective = Objective(problem, model, points, loss_mode)
    spec = objective.spec
    theta = spec.flatten(model).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=lr, max_iter=20, history_size=history_size,
                            line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)
    hist = TrainHistory(backends=objective.backends)
    best_theta = theta.detach().clone()
    start = time.perf_counter()

    def closure():
        loss, grad = objective.value_and_grad(theta)
        theta.grad = grad
        return loss

    bar = _progress(iterations, "lbfgs", progress)
    for it in range(iterations):
        lv = float(opt.step(closure).detach())
        if not math.isfinite(lv):
            hist.diverged = True
            break
        if lv < hist.best_loss:
            hist.best_loss, hist.best_step = lv, it
            best_theta = theta.detach().clone()
        if it % log_every == 0 or it == iterations - 1:
            hist.entries.append(HistoryEntry(it, time.perf_counter() - start, loss=lv))
            bar.set_postfix(loss=f"{lv:.3e}")
            if callback:
                callback(it, lv)
            if max_seconds is not None and time.perf_counter() - start >= max_seconds:
                break
        bar.update(1)
    bar.close()
    final = objective.value(theta.detach())
    if math.isfinite(final) and final <= hist.best_loss:
        hist.best_loss = final
        spec.assign(model, theta.detach())
    else:
        spec.assign(model, best_theta)
    if hist.diverged:
        print(f"lbfgs: loss became non-finite; kept the best state (loss {hist.best_loss:.3e})", file=sys.stderr)
    return hist

"""Gradient-based pretraining and baselines on the problem's loss ||f(θ)||²: Adam (or any
``torch.optim`` optimizer with Adam's loop and schedule, e.g. SOAP), L-BFGS and full-batch BFGS.

The loss is Σ_t w_t · mean_i |r_t(x_i)|², the squared norm of the stacked residual that LSR
minimizes, so the numbers are directly comparable.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .models import ParamSpec
from .problem import PDEProblem
from .records import HistoryEntry
from .jet_plans import JetLoss
from .residual import residual_rows


#: ``factory(params, lr)``: the optimizer of :func:`train_adam` over ``params`` (views of the flat
#: θ shaped like the model's parameters, in :class:`ParamSpec` order) at learning rate ``lr``.
OptimizerFactory = Callable[[list[torch.Tensor], float], torch.optim.Optimizer]


def adam_optimizer(params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` with its defaults: the optimizer of :func:`train_adam` by default."""
    return torch.optim.Adam(params, lr=lr)


def soap_optimizer(**options) -> OptimizerFactory:
    """SOAP (Shampoo-preconditioned Adam, Vyas et al. 2024) from the package ``pytorch-optimizer``,
    as an :data:`OptimizerFactory` for :func:`train_adam`: its defaults without weight decay (the
    loss is the problem's, as for Adam), ``options`` passed on. Each parameter keeps its shape, so
    every weight matrix gets its own Kronecker-factored preconditioner.

    Raises ModuleNotFoundError naming the install command when the package is missing."""
    try:
        from pytorch_optimizer import SOAP
    except ImportError as e:
        raise ModuleNotFoundError("SOAP needs the package pytorch-optimizer: pip install pytorch-optimizer "
                                  "(or pip install 'pinnlsr[baselines]')") from e
    options = {"weight_decay": 0.0, **options}
    return lambda params, lr: SOAP(params, lr=lr, **options)


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
    optimizer: OptimizerFactory = adam_optimizer,
    decay_steps: int | None = None,
    min_steps: int = 0,
) -> TrainHistory:
    """Adam (or ``optimizer``) on the problem loss at fixed ``points`` ({term: (n, d)}), in place
    on ``model``.

    The learning rate decays exponentially from ``lr`` to ``final_lr`` (constant if None) over
    ``decay_steps`` (default ``steps``) and stays at ``final_lr`` after them. The model ends at the
    best parameters seen (a diverging run never leaves a worse model behind). Returns the loss
    history (every ``log_every`` steps and the last one), and calls ``callback(step, loss)`` at
    those steps with the model at the current parameters. ``max_seconds`` stops the run at the
    first logged step after that much wall time and after ``min_steps`` steps (equal-time
    comparisons). ``loss_mode`` "auto" takes the loss and its gradient from jets where the model
    and the terms allow it (see :class:`Objective`; ``TrainHistory.backends`` records the path),
    "generic" from ``vmap`` + autograd everywhere; both give the same numbers to rounding.
    ``optimizer`` builds the optimizer from views of θ shaped like the model's parameters and the
    learning rate (:data:`OptimizerFactory`, e.g. :func:`soap_optimizer`).
    """
    if steps < 0:
        raise ValueError(f"Adam steps must be >= 0, got {steps}")
    objective = Objective(problem, model, points, loss_mode)
    spec = objective.spec
    theta = spec.flatten(model).clone()
    # The optimizer updates views of θ in place: per-parameter shapes for optimizers that
    # precondition matrices (SOAP), one flat θ for the loss and the best state.
    params = list(spec.unflatten(theta).values())
    opt = optimizer(params, lr)
    name = type(opt).__name__.lower()
    decay_steps = steps if decay_steps is None else decay_steps
    gamma = (final_lr / lr) ** (1.0 / max(decay_steps, 1)) if final_lr else 1.0
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    hist = TrainHistory(backends=objective.backends)
    # The best state stays on the device: no host synchronization between logged steps.
    best_theta = theta.clone()
    best_loss = torch.full((), math.inf, dtype=theta.dtype, device=theta.device)
    best_step = torch.full((), -1, dtype=torch.long, device=theta.device)
    start = time.perf_counter()
    bar = _progress(steps, name, progress)

    def step_with(grad):
        for p, g in zip(params, spec.unflatten(grad).values()):
            p.grad = g
        opt.step()
        bar.update(1)

    for step in range(steps):
        loss, grad = objective.value_and_grad(theta)
        better = loss < best_loss
        best_theta = torch.where(better, theta, best_theta)
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
                spec.assign(model, theta)
                callback(step, lv)
            if max_seconds is not None and step + 1 >= min_steps and time.perf_counter() - start >= max_seconds:
                step_with(grad)
                break
        step_with(grad)
        if step < decay_steps:
            sched.step()
    bar.close()
    hist.best_loss, hist.best_step = float(best_loss), int(best_step)
    final = objective.value(theta)
    if math.isfinite(final) and final < hist.best_loss:
        hist.best_loss, hist.best_step = final, steps
        spec.assign(model, theta)
    else:
        spec.assign(model, best_theta)
    if hist.diverged:
        print(f"{name}: loss became non-finite; kept the best state (loss {hist.best_loss:.3e} at step {hist.best_step})",
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
                spec.assign(model, theta.detach())
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


#: The most parameters :func:`train_bfgs` takes. SciPy's BFGS keeps a dense m×m inverse Hessian
#: (8·m² bytes: 0.29 GB at 6,000) and updates it with two m×m matrix products per iteration (4·m³
#: flops: 8.6e11 at 6,000, seconds per iteration on a CPU core); above this an equal-time budget
#: buys too few iterations for BFGS to be a baseline. L-BFGS (:func:`train_lbfgs`) has no limit.
BFGS_MAX_PARAMS = 6000


class _OutOfTime(Exception):
    """Raised inside SciPy's BFGS when the wall-time budget is spent."""


def train_bfgs(
    problem: PDEProblem,
    model: nn.Module,
    points: dict[str, torch.Tensor],
    iterations: int,
    progress: bool | None = None,
    log_every: int = 10,
    callback: Callable[[int, float], None] | None = None,
    max_seconds: float | None = None,
    loss_mode: str = "auto",
    max_params: int = BFGS_MAX_PARAMS,
) -> TrainHistory:
    """Full-batch BFGS (``scipy.optimize.minimize(method="BFGS")``, dense inverse Hessian) on the
    problem loss over the flat θ, in place on ``model``.

    The loss and gradient come from :class:`Objective` (the loss path of :func:`train_adam`) in
    the network's dtype; SciPy iterates in float64. Runs at most ``iterations`` iterations and
    at most ``max_seconds`` of wall time: the budget is checked before every loss evaluation, so
    the run stops within one evaluation (plus one Hessian update) of it. When SciPy stops early
    (its line search finds no decrease) with budget left, BFGS restarts from the best point with
    a fresh Hessian, as long as the previous run lowered the loss. The model ends at the best
    parameters evaluated. ``callback(iteration, loss)`` every ``log_every`` iterations, with the
    model at the iterate. Networks with more than ``max_params`` parameters are refused (see
    :data:`BFGS_MAX_PARAMS`)."""
    from scipy.optimize import minimize

    if iterations < 0:
        raise ValueError(f"BFGS iterations must be >= 0, got {iterations}")
    objective = Objective(problem, model, points, loss_mode)
    spec = objective.spec
    if spec.numel > max_params:
        raise ValueError(f"BFGS: the network has {spec.numel} parameters, more than max_params={max_params} "
                         "(a dense m×m inverse Hessian, O(m³) per iteration); use train_lbfgs, or a smaller network")
    like = spec.flatten(model)
    best = {"loss": math.inf, "theta": like.clone()}
    hist = TrainHistory(backends=objective.backends)
    start = time.perf_counter()
    done = 0
    bar = _progress(iterations, "bfgs", progress)

    def out_of_time() -> bool:
        return max_seconds is not None and time.perf_counter() - start >= max_seconds

    def fun(x):
        if out_of_time():
            raise _OutOfTime
        theta = torch.from_numpy(x).to(like)
        loss, grad = objective.value_and_grad(theta)
        lv = float(loss)
        if not math.isfinite(lv):
            hist.diverged = True
            return math.inf, np.zeros_like(x)
        if lv < best["loss"]:
            best.update(loss=lv, theta=theta.clone())
            hist.best_loss, hist.best_step = lv, done
        return lv, grad.detach().cpu().double().numpy()

    def iteration_done(intermediate_result):
        nonlocal done
        done += 1
        bar.update(1)
        lv = float(intermediate_result.fun)
        if done % log_every == 0 or done == iterations:
            hist.entries.append(HistoryEntry(done - 1, seconds=time.perf_counter() - start, loss=lv))
            bar.set_postfix(loss=f"{lv:.3e}")
            if callback:
                spec.assign(model, torch.from_numpy(intermediate_result.x).to(like))
                callback(done - 1, lv)
        if out_of_time():
            raise StopIteration

    while done < iterations and not out_of_time():
        before = best["loss"]
        try:
            minimize(fun, best["theta"].cpu().double().numpy(), jac=True, method="BFGS", callback=iteration_done,
                     options={"maxiter": iterations - done, "gtol": 0.0})
        except _OutOfTime:
            break
        if not best["loss"] < before:  # a run that did not lower the loss: restarting would not either
            break
    bar.close()
    if done and (not hist.step or hist.step[-1] != done - 1):  # the last iteration, with the best loss
        hist.entries.append(HistoryEntry(done - 1, seconds=time.perf_counter() - start, loss=best["loss"]))
    spec.assign(model, best["theta"])
    if hist.diverged:
        print(f"bfgs: the loss was non-finite at some trial point; kept the best state (loss {hist.best_loss:.3e})",
              file=sys.stderr)
    return hist

"""Physics-informed DeepONets: operator problems, batched PI training, per-instance LSR.

An :class:`OperatorProblem` is a PDE family whose residual terms take the input function f as a
parameter: each term is ``residual(u, x, y)`` for one point x (d,), where u is the solution
callable and y = f(x_0) (1,) the input function at the point's first (space) coordinate. The same
per-point code serves

- pretraining (:func:`train_pideeponet`): Adam on Σ_t w_t mean r_t² over batches of input
  functions, with fresh collocation points each step;
- per-instance refinement (:func:`refine_instances`): for one input function the problem becomes an
  ordinary :class:`~pinnlsr.problem.PDEProblem` (:meth:`OperatorProblem.instance`) and the DeepONet an
  ordinary model (:class:`~pinnlsr.deeponet.InstanceModel`), so :func:`pinnlsr.lsr.lsr` refines the
  operator network's parameters on that instance's residual.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.func import vmap

from .deeponet import DeepONet, InstanceModel
from .grf import FunctionBatch
from .lsr import lsr
from .operator_batched import NotBatchable, describe_instance, refine_batched
from .problem import PDEProblem, Term
from .records import Evaluation, HistoryEntry
from .train import TrainHistory


@dataclass
class OperatorTerm:
    """One residual term of an operator problem.

    ``residual(u, x, y)`` with y = f(x[0]) of shape (1,); ``sample(n, generator) -> (n, d)`` draws
    its points; ``n_train`` points per function per training step, ``n_lsr`` for refinement."""

    name: str
    residual: Callable
    sample: Callable[[int, torch.Generator], torch.Tensor]
    n_train: int
    n_lsr: int
    weight: float = 1.0


class OperatorProblem:
    """Base class of a PDE family with input function f. Subclasses set the attributes and
    implement :meth:`terms`, :meth:`sample_functions`, :meth:`solve_reference` and :meth:`test_axes`.

    Attributes: ``name``, ``description``, ``input_names`` (time last), ``output_names``,
    ``n_sensors`` (equispaced sensors of f on [0, 1], or [0, 1) when ``periodic``)."""

    name = "operator"
    description = ""
    input_names: tuple[str, ...] = ("x",)
    output_names: tuple[str, ...] = ("s",)
    n_sensors = 100
    periodic = False
    scan_ranks: tuple[int, ...] = (25, 50, 100, 200)

    @property
    def dim(self) -> int:
        return len(self.input_names)

    # --- to implement -------------------------------------------------------------------
    def terms(self) -> list[OperatorTerm]:
        raise NotImplementedError

    def sample_functions(self, n: int, generator: torch.Generator) -> FunctionBatch:
        raise NotImplementedError

    def solve_reference(self, functions: FunctionBatch, index: int) -> np.ndarray:
        """Reference solution of function ``index`` on :meth:`test_points`, shape (N,)."""
        raise NotImplementedError

    def test_axes(self) -> tuple[np.ndarray, ...]:
        """The test grid axes: (x,) or (x, t)."""
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------
    def sensor_points(self) -> torch.Tensor:
        """Sensor locations (n_sensors,)."""
        if self.periodic:
            return torch.arange(self.n_sensors, dtype=torch.float64) / self.n_sensors
        return torch.linspace(0, 1, self.n_sensors, dtype=torch.float64)

    def sensors(self, functions: FunctionBatch) -> torch.Tensor:
        """Branch inputs: every function at the sensors, (B, n_sensors)."""
        return functions(self.sensor_points().to(functions.values.dtype))

    def check_sensors(self, sensors: torch.Tensor) -> torch.Tensor:
        """Validate branch inputs (B, n_sensors): right sensor count, finite."""
        sensors = torch.as_tensor(sensors)
        if sensors.ndim == 1:
            sensors = sensors.unsqueeze(0)
        if sensors.ndim != 2 or sensors.shape[1] != self.n_sensors:
            raise ValueError(
                f"{self.name}: input functions must be sampled at the {self.n_sensors} sensors "
                f"{'i/' + str(self.n_sensors) if self.periodic else 'linspace(0, 1, ' + str(self.n_sensors) + ')'} "
                f"(shape (B, {self.n_sensors})), got shape {tuple(sensors.shape)}: resample them on that grid"
            )
        if not torch.isfinite(sensors).all():
            bad = sorted(set(torch.nonzero(~torch.isfinite(sensors))[:, 0].tolist()))
            raise ValueError(f"{self.name}: input functions {bad[:10]} have NaN or Inf sensor values")
        return sensors

    def test_points(self) -> torch.Tensor:
        """Tensor grid of :meth:`test_axes`, (N, d), time slowest (rows ordered (t, x))."""
        axes = self.test_axes()
        if len(axes) == 1:
            return torch.as_tensor(axes[0], dtype=torch.float64).reshape(-1, 1)
        x, t = axes
        tt, xx = np.meshgrid(t, x, indexing="ij")
        return torch.as_tensor(np.stack([xx.ravel(), tt.ravel()], 1))

    def references(self, functions: FunctionBatch) -> torch.Tensor:
        """Reference solutions of every function on the test points, (B, N)."""
        return torch.as_tensor(np.stack([self.solve_reference(functions, i) for i in range(len(functions))]))

    def default_deeponet(self, generator=None, dtype=torch.float64, device="cpu",
                         widths=(50, 50, 50), latent=50) -> DeepONet:
        return DeepONet(self.n_sensors, self.dim, widths, widths, latent, 1, "tanh", generator, dtype, device,
                        trunk_lower=(0.0,) * self.dim, trunk_upper=(1.0,) * self.dim)

    def instance(self, functions: FunctionBatch, index: int, generator: torch.Generator,
                 reference: torch.Tensor | None = None, counts: dict[str, int] | None = None) -> "InstanceProblem":
        """Function ``index`` as an ordinary PDEProblem, with fixed points drawn from ``generator``
        (``n_lsr`` per term unless ``counts`` says otherwise)."""
        one = functions[index]
        terms = []
        for t in self.terms():
            n = (counts or {}).get(t.name, t.n_lsr)
            pts = t.sample(n, generator).to(torch.float64)
            y = one(pts[:, 0])[0].unsqueeze(1)
            terms.append(Term(t.name, t.residual, pts, weight=t.weight, targets=y))
        ref = None if reference is None else (self.test_points(), reference.reshape(-1, 1))
        return InstanceProblem(self, terms, ref)


class InstanceProblem(PDEProblem):
    """One input function of an operator problem: fixed points, targets y = f(x_0), reference."""

    def __init__(self, parent: OperatorProblem, terms: list[Term], reference):
        self.parent = parent
        self.name = f"{parent.name}[instance]"
        self.description = parent.description
        self.input_names = parent.input_names
        self.output_names = parent.output_names
        self._terms = terms
        self._reference = reference

    def terms(self) -> list[Term]:
        return self._terms

    def reference(self):
        return self._reference


# ---------------------------------------------------------------------------------------------
# Physics-informed training over batches of functions
# ---------------------------------------------------------------------------------------------

def _point_residual(net: DeepONet, residual: Callable) -> Callable:
    """``fn(b (p, k), x (d,), y (1,)) -> (q,)``: the residual of the DeepONet whose branch features are b."""

    def fn(b, x, y):
        def u(xp):
            return (net.trunk_features(xp.unsqueeze(0))[0] * b).sum(0) + net.bias

        return torch.as_tensor(residual(u, x, y)).reshape(-1)

    return fn


def physics_loss(problem: OperatorProblem, net: DeepONet, functions: FunctionBatch,
                 generator: torch.Generator, sensors: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Σ_t w_t mean r_t² over all ``functions`` with fresh points (n_train per function per term).

    Points are drawn (and ``functions`` evaluated) on the CPU, then moved to the network's device.
    Returns (loss, {term: float mean r_t²})."""
    like = next(net.parameters())
    on_net = dict(dtype=like.dtype, device=like.device)
    sensors = problem.sensors(functions) if sensors is None else sensors
    feats = net.branch_features(sensors.to(**on_net))  # (B, p, k)
    B = feats.shape[0]
    total, parts = 0.0, {}
    for t in problem.terms():
        pts = torch.stack([t.sample(t.n_train, generator) for _ in range(B)]).to(like.dtype)  # (B, P, d)
        y = functions(pts[..., 0].to(functions.values.dtype)).to(**on_net).unsqueeze(-1)  # (B, P, 1)
        pts = pts.to(like.device)
        P = pts.shape[1]
        b = feats.unsqueeze(1).expand(B, P, *feats.shape[1:]).reshape(B * P, *feats.shape[1:])
        r = vmap(_point_residual(net, t.residual))(b, pts.reshape(B * P, -1), y.reshape(B * P, 1))
        mse = r.square().mean()
        parts[t.name] = float(mse.detach())
        total = total + t.weight * mse
    return total, parts


def train_pideeponet(problem: OperatorProblem, net: DeepONet, functions: FunctionBatch, steps: int,
                     batch_size: int = 32, lr: float = 1e-3, final_lr: float = 1e-4,
                     generator: torch.Generator | None = None, log_every: int = 100,
                     printer: Callable[[str], None] | None = print) -> TrainHistory:
    """Adam on the physics loss, ``batch_size`` training functions per step (drawn with
    ``generator``), exponential learning-rate decay lr -> final_lr. In place on ``net``. Returns
    the loss every ``log_every`` steps and at the last step."""
    if steps < 0 or batch_size < 1:
        raise ValueError(f"train_pideeponet: need steps >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    generator = generator or torch.Generator().manual_seed(0)
    like = next(net.parameters())
    all_sensors = problem.check_sensors(problem.sensors(functions)).to(dtype=like.dtype, device=like.device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, (final_lr / lr) ** (1.0 / max(steps, 1)))
    hist = TrainHistory()
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(len(functions), (min(batch_size, len(functions)),), generator=generator)
        loss, parts = physics_loss(problem, net, functions[idx], generator, all_sensors[idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{problem.name}: training loss became {float(loss)} at step {step}; "
                                     "lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            hist.entries.append(HistoryEntry(step, time.perf_counter() - start, loss=float(loss.detach())))
            if printer:
                terms = " ".join(f"{k}={v:.2e}" for k, v in parts.items())
                printer(f"  step {step:6d}  loss {hist.loss[-1]:.3e}  ({terms})  {time.perf_counter() - start:.0f}s")
    return hist


# ---------------------------------------------------------------------------------------------
# Evaluation and per-instance refinement
# ---------------------------------------------------------------------------------------------

def predict_operator(net: DeepONet, sensors: torch.Tensor, points: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """DeepONet outputs for every function at every point, (B, N), without a graph, on the
    network's device (sensors (B, n_sensors) and points (N, d) are moved there)."""
    like = next(net.parameters())
    on_net = dict(dtype=like.dtype, device=like.device)
    points = points.to(**on_net)
    out = []
    with torch.no_grad():
        for i in range(0, sensors.shape[0], batch):
            out.append(net(sensors[i:i + batch].to(**on_net), points))
    return torch.cat(out)


def relative_errors(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-function relative L2 error, (B,)."""
    return (pred - ref).norm(dim=1) / ref.norm(dim=1)


def refine_instances(problem: OperatorProblem, net: DeepONet, functions: FunctionBatch,
                     references: torch.Tensor | None, rank: int, seed: int = 0,
                     counts: dict[str, int] | None = None, keep_models: int = 0,
                     printer: Callable[[str], None] | None = None, gauss_newton: int = 0,
                     mode: str = "batched", block_size: int | None = None, **lsr_options) -> dict:
    """LSR of ``net`` on each function separately (randomized subspace of rank ``rank``).

    With ``gauss_newton`` = K > 0 (for nonlinear PDEs) each instance instead runs up to K
    tangent Gauss–Newton iterations on the same basis (:func:`pinnlsr.gauss_newton.tangent_gauss_newton`;
    its first step is one-shot LSR), judged on the same instance at independently drawn points.

    ``mode``: "batched" (default) refines ``block_size`` instances at once (default: as many as
    the memory budget allows; :mod:`pinnlsr.operator_batched`), "loop" one after the other
    through :func:`pinnlsr.lsr.lsr` / :func:`~pinnlsr.gauss_newton.tangent_gauss_newton` (the
    reference path; the same numbers to rounding). Where the batched path does not apply (see
    :class:`pinnlsr.operator_batched.NotBatchable`) the loop runs and ``path_reason`` says why.

    Returns {"instances": [per-instance rows], "models": first ``keep_models`` refined
    predictors, "path": "batched" or "loop", "block_size": instances refined together}. Each row
    holds the :class:`~pinnlsr.records.Evaluation` of the network (``before``), of the one-shot
    LSR step (``lsr``) and of the result (``after``: the LSR step, or with Gauss–Newton its best
    iterate by validation residual), with errors when references are given; ``linearized_residual``
    of the LSR step, ``rank``, ``cond``, ``peak_memory_gb``, and the refinement seconds without
    error evaluation (``seconds``; ``seconds_lsr`` of the LSR step; in the batched path the
    block's time shared evenly). With Gauss–Newton also ``iterations``, ``best_iteration`` and
    ``stop_reason``."""
    if mode not in ("batched", "loop"):
        raise ValueError(f"mode must be 'batched' or 'loop', got {mode!r}")
    reason = None
    if mode == "batched":
        try:
            return refine_batched(problem, net, functions, references, rank, seed, counts, lsr_options,
                                  gauss_newton, block_size, keep_models, printer)
        except NotBatchable as exc:
            reason = str(exc)
    sensors = problem.check_sensors(problem.sensors(functions))
    options = dict(subspace="randomized", oversampling=10, power_iterations=0)
    options.update(lsr_options)
    rows, models = [], []
    for i in range(len(functions)):
        gen = torch.Generator().manual_seed(seed * 100003 + i)
        ref = None if references is None else references[i]
        inst = problem.instance(functions, i, gen, ref, counts)
        if gauss_newton > 0:
            row, model = _gauss_newton_instance(problem, functions, i, inst, InstanceModel(net, sensors[i]), rank,
                                                seed, counts, gauss_newton, ref is not None, options)
        else:
            res = lsr(inst, InstanceModel(net, sensors[i]), rank=rank, seed=seed + i,
                      compute_errors=ref is not None, **options)
            d = res.diagnostics
            row = {"before": d["before"], "lsr": d["after"], "after": d["after"],
                   "linearized_residual": d["linearized_residual"], "rank": d["rank"], "cond": d["cond"],
                   "peak_memory_gb": d["peak_memory_gb"], "seconds": d["seconds"]["refine"],
                   "seconds_lsr": d["seconds"]["refine"]}
            model = res.model
        rows.append(row)
        if i < keep_models:
            models.append(model)
        if printer:
            printer(describe_instance(i, row))
    out = {"instances": rows, "models": models, "path": "loop", "block_size": 1}
    if reason is not None:
        out["path_reason"] = reason
    return out


def _gauss_newton_instance(problem, functions, index, inst, model, rank, seed, counts, iterations,
                           with_errors, options) -> tuple[dict, torch.nn.Module]:
    """Tangent Gauss–Newton on one instance; validation: the same instance on other points."""
    from .gauss_newton import tangent_gauss_newton
    from .lsr import _peak_memory_gb

    val_gen = torch.Generator().manual_seed(seed * 100003 + index + 7_919_001)
    validation = problem.instance(functions, index, val_gen, None, counts)
    res = tangent_gauss_newton(inst, model, rank=rank, seed=seed + index, validation=validation,
                               max_iters=iterations, compute_errors=with_errors, **options)
    first = res.history[1] if len(res.history) > 1 else res.history[0]  # the one-shot LSR step
    row = {"before": res.diagnostics["before"], "lsr": Evaluation(first.errors, first.residual),
           "after": res.diagnostics["after"], "linearized_residual": first["linearized_residual"],
           "rank": res.diagnostics["rank"], "cond": None,
           "peak_memory_gb": _peak_memory_gb(torch.device(res.z.device)), "seconds_lsr": first.seconds,
           "seconds": res.diagnostics["seconds"], "iterations": res.diagnostics["iterations"],
           "best_iteration": res.best_iteration, "stop_reason": res.stop_reason}
    return row, res.model


def summarize(values) -> tuple[float, float]:
    """(mean, std) of a list of floats."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())


def rank_scan(problem: OperatorProblem, net: DeepONet, functions: FunctionBatch, ranks, seed: int = 0,
              tolerance: float = 2.0, counts: dict[str, int] | None = None,
              printer: Callable[[str], None] | None = print, **lsr_options) -> tuple[int, list[dict]]:
    """Choose the LSR rank on a few instances by the linearized training residual.

    For each rank, the mean linearized residual ||f0 + G V z|| over ``functions``; the choice is the
    smallest rank within ``tolerance`` × the best mean (larger ranks cost time and gain little).
    Returns (rank, table rows)."""
    table, start = [], []  # start: the mean residual of the network itself, per rank
    for r in ranks:
        out = refine_instances(problem, net, functions, None, r, seed, counts, **lsr_options)
        lin = [row["linearized_residual"] for row in out["instances"]]
        secs = [row["seconds"] for row in out["instances"]]
        start.append(float(np.mean([row["before"].residual for row in out["instances"]])))
        table.append({"rank": int(r), "linearized_residual_mean": float(np.mean(lin)),
                      "residual_before_mean": start[-1], "seconds_mean": float(np.mean(secs))})
    best = min(row["linearized_residual_mean"] for row in table)
    chosen = next(row["rank"] for row in table if row["linearized_residual_mean"] <= tolerance * best)
    if printer:
        printer(f"rank scan on {len(functions)} instances (linearized training residual, choose the smallest "
                f"rank within {tolerance:g}x of the best):")
        for row, residual in zip(table, start):
            mark = "  <- chosen" if row["rank"] == chosen else ""
            printer(f"  r = {row['rank']:5d}  residual {residual:.3e} -> linearized "
                    f"{row['linearized_residual_mean']:.3e}  {row['seconds_mean']:.2f}s{mark}")
    return chosen, table

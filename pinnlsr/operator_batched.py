"""Per-instance refinement of a physics-informed DeepONet, a block of instances at a time.

:func:`pinnlsr.operator_learning.refine_instances` can refine one input function after the other
(``mode="loop"``: :func:`pinnlsr.lsr.lsr` or :func:`pinnlsr.gauss_newton.tangent_gauss_newton` per
instance). :func:`refine_batched` refines B of them at once and gives the same numbers to
rounding: every instance keeps its points (generator seed·100003 + i), its sketch (seed + i), its
validation points and its own Levenberg–Marquardt state, while the Jacobian products run for the
whole block (:class:`pinnlsr.instance_batch.BatchOperator`) and the small dense algebra on stacks
(batched QR and SVD in :func:`pinnlsr.subspace.sketch_svd` and
:class:`pinnlsr.solvers.DampedLeastSquares`). Gauss–Newton runs with masks: an instance that has
stopped keeps its coefficients while the others go on, and the host waits once per trial step
(is any instance still searching?), not per instance.

B comes from the memory budget (:func:`instances_per_block`): the block's dense matrices take at
most half of it, the Jacobian row chunks the rest. What the batched path does not cover (another
subspace or solver, a Jacobian mode other than "auto", a trunk without jets, a term the jets do
not serve) raises :class:`NotBatchable`, and the caller runs the loop instead.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from . import jacobian as jac
from .deeponet import InstanceModel
from .engine import StructuredJacobian
from .gauss_newton import ValidationStop
from .instance_batch import BatchBlock, BatchOperator, InstanceBatch
from .lsr import _clock, _peak_memory_gb, _resolve_device, prepare_model
from .models import LinearizedModel, ParamSpec
from .records import Evaluation
from .residual import output_rows, residual_rows
from .solvers import DampedLeastSquares, DampingSearch, no_tf32
from .subspace import scaled_directions, sketch_svd

#: options of :func:`pinnlsr.lsr.lsr` and :func:`pinnlsr.gauss_newton.tangent_gauss_newton` the
#: batched path takes (with the values it supports where not every value is)
LSR_OPTIONS = {"subspace", "oversampling", "power_iterations", "scale_basis", "solver", "rcond", "tikhonov",
               "dtype", "device", "jacobian_mode", "memory_budget", "least_squares"}
GN_OPTIONS = {"subspace", "oversampling", "power_iterations", "scale_basis", "rcond", "dtype", "device",
              "jacobian_mode", "memory_budget", "damping", "max_tries", "patience", "tol", "jacobian"}
SUPPORTED = {"subspace": "randomized", "solver": "svd", "jacobian_mode": "auto", "jacobian": "shifted"}
ERROR_METRICS = ("rel_l2", "max_abs_err")  # per instance, against the references
STOP_REASONS = ("max_iters", "no_decrease", "converged", "validation")  # a block's stop codes index these
NO_DECREASE, CONVERGED, VALIDATION = 1, 2, 3
_MIN_CHUNK_POINTS = 32  # points per instance in a row chunk that a block must leave room for


class NotBatchable(ValueError):
    """The batched path does not apply to these options or this network; the message says why."""


@dataclass
class Config:
    """The refinement settings, as :func:`pinnlsr.lsr.lsr` and
    :func:`pinnlsr.gauss_newton.tangent_gauss_newton` default them."""

    oversampling: int = 10
    power_iterations: int = 0
    scale_basis: bool = True
    rcond: float | None = 1e-14
    tikhonov: float = 0.0
    dtype: torch.dtype = torch.float64
    device: str | torch.device | None = None
    memory_budget: int | None = None
    damping: float = 1e-20
    max_tries: int = 30
    patience: int = 3
    tol: float = 1e-12

    @classmethod
    def of(cls, options: dict, gauss_newton: int) -> "Config":
        allowed = GN_OPTIONS if gauss_newton else LSR_OPTIONS
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise NotBatchable(f"option(s) {unknown} are not covered by the batched path")
        for key, value in SUPPORTED.items():
            if key in options and options[key] != value:
                raise NotBatchable(f"{key}={options[key]!r} (the batched path takes {key}={value!r})")
        kept = {k: v for k, v in options.items() if k in cls.__dataclass_fields__}
        cfg = cls(**kept)
        if cfg.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {cfg.dtype}")
        if gauss_newton and (cfg.max_tries < 1 or cfg.patience < 1):
            raise ValueError("max_iters must be >= 0, max_tries and patience >= 1")
        return cfg


def instances_per_block(n_instances: int, n_rows: int, n_out: int, m: int, width: int, q_max: int,
                        itemsize: int, budget: int) -> int:
    """Instances refined together: as many as keep the block's dense matrices ([G V | f] with its
    QR, the sketch Ω and J Q, the m×width Jᵀ Ω, Q, W and V) within half of ``budget`` bytes and
    leave the other half for row chunks of at least 32 points per instance; at least 1."""
    dense = itemsize * (3 * n_rows * (width + 2) + 2 * n_out * width + 4 * m * width)
    rows = itemsize * q_max * (2 * m + width) * _MIN_CHUNK_POINTS
    return max(1, min(n_instances, (budget // 2) // dense, (budget // 2) // rows))


def describe_instance(index: int, row: dict) -> str:
    """The progress line of one refined instance."""
    before, after = row["before"], row["after"]
    return (f"  instance {index:4d}: rel L2 {before.rel_l2 or float('nan'):.3e} -> "
            f"{after.rel_l2 or float('nan'):.3e}  residual {before.residual:.3e} -> "
            f"{after.residual:.3e}  {row['seconds']:.2f}s")


def _as_records(rows: list[dict]) -> list[dict]:
    """Instance rows in the loop's form: the flat ``rel_l2_<tag>`` / ``max_abs_err_<tag>`` /
    ``residual_<tag>`` columns of a block become the :class:`~pinnlsr.records.Evaluation` of
    ``before``, ``lsr`` and ``after``."""
    out = []
    for row in rows:
        row = dict(row)
        evals = {}
        for tag in ("before", "lsr", "after"):
            errors = {m: row.pop(f"{m}_{tag}", None) for m in ERROR_METRICS}
            evals[tag] = Evaluation({m: v for m, v in errors.items() if v is not None}, row.pop(f"residual_{tag}", None))
        if evals["lsr"].residual is None:  # one-shot LSR: its step is the result
            evals["lsr"] = evals["after"]
            row.setdefault("seconds_lsr", row["seconds"])
        out.append({**evals, **row})
    return out


class BlockRefiner:
    """What every block shares: the network copy at θ0 in the refinement's dtype and device, the
    jet plan and row scale of each term (checked once, on the first instance), the rank and the
    sketch width; :meth:`lsr` and :meth:`gauss_newton` refine one block (call them with TF32 off,
    as :func:`refine_batched` does)."""

    def __init__(self, problem, net, functions, sensors: torch.Tensor, references, rank: int, seed: int,
                 counts, cfg: Config):
        self.problem, self.functions, self.references = problem, functions, references
        self.seed, self.counts, self.cfg = seed, counts, cfg
        self.device = _resolve_device(next(net.parameters()).device if cfg.device is None else cfg.device)
        self.dtype = cfg.dtype
        self.sensors = sensors.to(dtype=self.dtype, device=self.device)
        self.model = prepare_model(InstanceModel(net, sensors[0]), self.dtype, self.device)
        spec = ParamSpec.of(self.model)
        self.m, self.theta = spec.numel, spec.flatten(self.model)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if rank > self.m:
            warnings.warn(f"rank {rank} exceeds the number of trainable parameters m = {self.m}; clipped to {self.m}",
                          UserWarning, stacklevel=3)
        self.rank = min(rank, self.m)
        first = self.instance(0)
        points = {t.name: t.points.to(self.dtype) for t in first.terms()}
        rows = residual_rows(first, self.model, {k: v.to(self.device) for k, v in points.items()})
        plans = StructuredJacobian(rows, self.theta).plans
        out_rows = output_rows(self.model, torch.cat(list(points.values())).to(self.device), spec)
        self.out_plan = StructuredJacobian(out_rows, self.theta).plans["outputs"]
        for name, plan in {**plans, "outputs": self.out_plan}.items():
            if plan.kind != "jet":
                raise NotBatchable(f"term {name!r} takes the generic path ({plan.describe()})")
        self.terms = [(b.name, plans[b.name], b.scale, b.q) for b in rows.blocks]
        self.n_rows, self.n_out, self.q_max = rows.n_rows, out_rows.n_rows, max(b.q for b in rows.blocks)
        self.width = min(self.rank + cfg.oversampling, self.m, self.n_out)
        self.budget = jac.default_memory_budget(self.device) if cfg.memory_budget is None else int(cfg.memory_budget)

    def block_size(self, n_instances: int) -> int:
        return instances_per_block(n_instances, self.n_rows, self.n_out, self.m, self.width, self.q_max,
                                   self.theta.element_size(), self.budget)

    def instance(self, index: int, offset: int = 0):
        """Instance ``index`` with its points (generator seed·100003 + index + offset)."""
        gen = torch.Generator().manual_seed(self.seed * 100003 + index + offset)
        return self.problem.instance(self.functions, index, gen, None, self.counts)

    def blocks(self, instances) -> list[BatchBlock]:
        """The terms of these instances as stacks (B, n, ·)."""
        out = []
        for name, plan, scale, q in self.terms:
            terms = [next(t for t in inst.terms() if t.name == name) for inst in instances]
            pts = torch.stack([torch.as_tensor(t.points) for t in terms]).to(dtype=self.dtype, device=self.device)
            data = (pts.new_zeros(*pts.shape[:2], 0) if terms[0].targets is None else
                    torch.stack([torch.as_tensor(t.targets) for t in terms]).to(pts))
            out.append(BatchBlock(name, plan, pts, data.reshape(*pts.shape[:2], -1), scale, q))
        return out

    def basis(self, batch: InstanceBatch, blocks: list[BatchBlock], index: list[int]):
        """(V (B, m, r), ranks (B,)): each instance's randomized basis from its own sketch Ω
        (generator seed + i), as :func:`pinnlsr.subspace.randomized_basis` draws it."""
        pts = torch.cat([b.points for b in blocks], 1)
        outputs = BatchBlock("outputs", self.out_plan, pts, pts.new_zeros(*pts.shape[:2], 0), 1.0,
                             self.n_out // pts.shape[1])
        omega = torch.stack([torch.randn(self.n_out, self.width, generator=torch.Generator().manual_seed(self.seed + i),
                                         dtype=self.dtype) for i in index]).to(self.device)
        w, s, _ = sketch_svd(BatchOperator(batch, [outputs], self.budget), self.rank, self.cfg.oversampling,
                             self.cfg.power_iterations, omega=omega)
        return scaled_directions(w, s, self.rank, self.cfg.scale_basis, 0.0)

    def errors(self, batch: InstanceBatch, index: list[int], delta: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``rel_l2`` and ``max_abs_err`` (each (B,)) of the predictors against the references, the
        metrics of :func:`pinnlsr.metrics.error_metrics` per instance ({} without references)."""
        if self.references is None:
            return {}
        x = self.problem.test_points().to(dtype=self.dtype, device=self.device)
        ref = torch.as_tensor(self.references)[index].to(dtype=self.dtype, device=self.device).reshape(len(index), -1)
        chunk = batch.points_per_pass(self.budget)
        pred = torch.cat([batch.outputs(x[i:i + chunk], delta) for i in range(0, x.shape[0], chunk)], 1)
        diff = pred.reshape(len(index), -1) - ref
        return {"rel_l2": diff.norm(dim=1) / ref.norm(dim=1), "max_abs_err": diff.abs().amax(dim=1)}

    def models(self, index: list[int], V: torch.Tensor, z: torch.Tensor, ranks: list[int]) -> list:
        """The refined predictors of these instances (:class:`~pinnlsr.models.LinearizedModel`)."""
        out = []
        for j, i in enumerate(index):
            base = prepare_model(InstanceModel(self.model.deeponet, self.sensors[i]), self.dtype, self.device)
            out.append(LinearizedModel(base, V[j, :, :ranks[j]], z[j, :ranks[j]]))
        return out

    def setup(self, index: list[int]):
        """(start time, batch, training blocks, V, ranks) of a block of instances."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = _clock(self.device)
        batch = InstanceBatch(self.model, self.sensors[index], self.theta)
        blocks = self.blocks([self.instance(i) for i in index])
        V, ranks = self.basis(batch, blocks, index)
        return t0, batch, blocks, V, ranks

    def lsr(self, index: list[int]) -> tuple[list[dict], torch.Tensor, torch.Tensor, list[int]]:
        """One-shot LSR of a block: (instance records as the loop writes them, V, z, ranks)."""
        t0, batch, blocks, V, ranks = self.setup(index)
        a, f0 = BatchOperator(batch, blocks, self.budget).matmul_and_values(V)
        step = DampedLeastSquares(a, -f0, self.cfg.rcond)
        z = step.solve(self.cfg.tikhonov ** 2)
        linearized = step.residual_norm(z)
        delta = _step(V, z)
        seconds = (_clock(self.device) - t0) / len(index)
        after = BatchOperator(batch, blocks, self.budget, delta).values().norm(dim=-1)
        before = f0.norm(dim=-1)
        err0, err1 = self.errors(batch, index, None), self.errors(batch, index, delta)
        if not bool((after <= before).all()):
            warnings.warn("LSR raised the residual of the predictor on some instances: the problem is nonlinear "
                          "and the step left the region where the linearization holds. Use a lower rank or "
                          "iterate (gauss_newton=K).", RuntimeWarning, stacklevel=3)
        cols = {"residual_before": before, "linearized_residual": linearized, "residual_after": after,
                "rank": ranks, "cond": step.cond}
        for metric in ERROR_METRICS:
            cols[f"{metric}_before"], cols[f"{metric}_after"] = err0.get(metric), err1.get(metric)
        rows = _records(cols, len(index))
        peak = _peak_memory_gb(self.device)
        for row in rows:
            row.update(peak_memory_gb=peak, seconds=seconds)
        return rows, V, z, _ranks(rows)

    def gauss_newton(self, index: list[int], iterations: int) -> tuple[list[dict], torch.Tensor, torch.Tensor, list[int]]:
        """Tangent Gauss–Newton of a block, each instance judged on its validation points (the same
        instance on points from generator seed·100003 + i + 7,919,001): the loop's records."""
        cfg = self.cfg
        t0, batch, blocks, V, ranks = self.setup(index)
        validation = self.blocks([self.instance(i, 7_919_001) for i in index])

        def residual(on, z):
            return BatchOperator(batch, on, self.budget, _step(V, z)).values()

        z = V.new_zeros(len(index), V.shape[-1])
        f = residual(blocks, z)
        if not bool(torch.isfinite(f).all()):
            raise FloatingPointError("the residual has NaN or Inf values at the pretrained network on instances "
                                     f"{[index[j] for j in torch.nonzero(~torch.isfinite(f).all(1))[:, 0].tolist()]}")
        f_norm, val = f.norm(dim=-1), residual(validation, z).norm(dim=-1)
        err0 = self.errors(batch, index, None)
        hist = {"residual": [f_norm], "validation": [val], "linearized": [torch.full_like(f_norm, math.nan)],
                "seconds": [_clock(self.device) - t0], **{m: [err0.get(m)] for m in ERROR_METRICS}}
        best = ValidationStop(z, val, cfg.patience, cfg.tol)
        active = torch.ones_like(f_norm, dtype=torch.bool)
        done, stop = torch.zeros_like(best.iteration), torch.zeros_like(best.iteration)
        search = DampingSearch(cfg.damping, max_tries=cfg.max_tries)
        for it in range(1, iterations + 1):
            if not bool(active.any()):
                break
            a = BatchOperator(batch, blocks, self.budget, _step(V, z)).matmul(V)
            step = DampedLeastSquares(a, -f, cfg.rcond)
            kept, accepted = search.choose_stack(
                step, f_norm, active, lambda dz: _norms(residual(blocks, z + dz)),
                lambda dz, f_try: residual(validation, z + dz).norm(dim=-1))
            z_new = torch.where(accepted.unsqueeze(-1), z + kept["delta"], z)
            f_new = torch.where(accepted.unsqueeze(-1), kept["payload"], f)
            lin_new = torch.where(accepted, kept["linearized"], torch.full_like(f_norm, math.nan))
            done += active
            stop = torch.where(active & ~accepted, NO_DECREASE, stop)
            new_norm = f_new.norm(dim=-1)
            decrease = f_norm - new_norm
            z, f, f_norm = z_new, f_new, torch.where(accepted, new_norm, f_norm)
            val = residual(validation, z).norm(dim=-1)
            errors = self.errors(batch, index, _step(V, z))
            for key, value in (("residual", f_norm), ("validation", val), ("linearized", lin_new),
                               ("seconds", _clock(self.device) - t0), *((m, errors.get(m)) for m in ERROR_METRICS)):
                hist[key].append(value)
            converged, stalled = best.update_masked(it, z, val, f_norm, decrease, accepted)
            stop = torch.where(converged, CONVERGED, torch.where(stalled, VALIDATION, stop))
            active = active & accepted & ~converged & ~stalled
        rows = _gauss_newton_records(hist, best.iteration, done, stop, ranks, len(index))
        peak = _peak_memory_gb(self.device)
        for row in rows:
            row["peak_memory_gb"] = peak
        return rows, V, best.z, _ranks(rows)


def _norms(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||f_i|| (B,), f) with inf where an instance's residual is not finite."""
    finite = torch.isfinite(f).all(-1)
    return torch.where(finite, f.norm(dim=-1), math.inf), f


def _step(V: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """δ_i = V_i z_i: (B, m) for V (B, m, r) and z (B, r)."""
    return (V @ z.unsqueeze(-1)).squeeze(-1)


def _ranks(rows: list[dict]) -> list[int]:
    return [row["rank"] for row in rows]


def _records(columns: dict, n: int) -> list[dict]:
    """One dict per instance from columns of tensors (B,) (one transfer each; None stays None)."""
    values = {k: (v.tolist() if isinstance(v, torch.Tensor) else [v] * n) for k, v in columns.items()}
    return [{k: v[j] for k, v in values.items()} for j in range(n)]


def _gauss_newton_records(hist: dict, best_it: torch.Tensor, done: torch.Tensor, stop: torch.Tensor,
                          ranks: torch.Tensor, n: int) -> list[dict]:
    """The loop's Gauss–Newton instance records from the block's history: iteration 0, the first
    step (one-shot LSR) and the best iterate by validation residual of every instance."""
    stacked = {k: torch.stack(v) for k, v in hist.items() if k != "seconds" and v[0] is not None}
    first = min(1, len(hist["seconds"]) - 1)
    cols = {"rank": ranks, "iterations": done, "best_iteration": best_it}
    pick = {"before": 0, "lsr": first}
    for name in (*ERROR_METRICS, "residual"):
        if name not in stacked:
            cols.update({f"{name}_before": None, f"{name}_lsr": None, f"{name}_after": None})
            continue
        for tag, at in pick.items():
            cols[f"{name}_{tag}"] = stacked[name][at]
        cols[f"{name}_after"] = stacked[name].gather(0, best_it.unsqueeze(0))[0]
    cols["linearized_residual"] = stacked["linearized"][first]
    rows = _records(cols, n)
    seconds = hist["seconds"]
    for row, reason in zip(rows, stop.tolist()):
        lin = row["linearized_residual"]
        row.update(linearized_residual=None if lin is None or math.isnan(lin) else lin, cond=None,
                   seconds_lsr=seconds[first] / n, seconds=seconds[-1] / n, stop_reason=STOP_REASONS[reason])
    return rows


def refine_batched(problem, net, functions, references, rank: int, seed: int = 0, counts: dict | None = None,
                   options: dict | None = None, gauss_newton: int = 0, block_size: int | None = None,
                   keep_models: int = 0, printer=None) -> dict:
    """Refine every input function of ``functions`` (LSR, or LSR and up to ``gauss_newton``
    tangent Gauss–Newton iterations), ``block_size`` instances at a time (default: from the memory
    budget, :func:`instances_per_block`). Arguments and instance records as
    :func:`pinnlsr.operator_learning.refine_instances`; ``seconds`` of an instance is its block's
    time shared evenly. Returns {"instances", "models", "path": "batched", "block_size"}.
    Raises :class:`NotBatchable` when the batched path does not apply."""
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    cfg = Config.of(dict(options or {}), gauss_newton)
    sensors = problem.check_sensors(problem.sensors(functions))
    refiner = BlockRefiner(problem, net, functions, sensors, references, rank, seed, counts, cfg)
    n = len(functions)
    size = block_size or refiner.block_size(n)
    rows, models = [], []
    for start in range(0, n, size):
        index = list(range(start, min(n, start + size)))
        with no_tf32():
            block_rows, V, z, ranks = (refiner.gauss_newton(index, gauss_newton) if gauss_newton > 0
                                       else refiner.lsr(index))
        keep = [j for j, i in enumerate(index) if i < keep_models]
        if keep:
            models += refiner.models([index[j] for j in keep], V[keep], z[keep], [ranks[j] for j in keep])
        block_rows = _as_records(block_rows)
        rows += block_rows
        if printer:
            for i, row in zip(index, block_rows):
                printer(describe_instance(i, row))
    return {"instances": rows, "models": models, "path": "batched", "block_size": size}


__all__ = ["NotBatchable", "Config", "BlockRefiner", "instances_per_block", "describe_instance", "refine_batched"]

"""Structured, streaming Jacobian engine and the fast one-shot LSR step.

The cost of one LSR step is the three Jacobian products Jᵀ·Ω, J·Q and G·V (about 6·n·m·r flops for
n rows, m parameters and rank r). This module makes all three plain GEMMs on explicit row chunks and
makes the rows themselves cheap:

- **Jet rows.** For an MLP (Linear layers with tanh or sin after an affine input scaling or a
  fixed feature map, and the predictor / shifted network built on one) a residual that depends on
  u only through its value and derivatives up to order 2 at its point (or at fixed shifts of it)
  has rows G_i = Σ_c (∂r/∂u^(c))(x_i) · ∂u^(c)(x_i)/∂θ over the jet channels c it reads. The jets
  of those channels go through the network as batched GEMMs (:mod:`pinnlsr.jets`), ∂r/∂u^(c)
  comes from the user's residual evaluated on u's jets (no network inside), and one written-out
  reverse pass gives every row: about C·n·m flops for C channels instead of ``vmap(jacrev)``
  through nested ``torch.func`` transforms. Blocks the jets cannot serve (values at other points,
  third derivatives, another model) use the ``vmap(jacrev)`` rows; ``plans`` says which and why.
- **Streaming.** Rows come in chunks of points sized from a memory budget (default from free device
  memory), so G and J are never stored whole. A budget below one point falls back to the
  matrix-free jvp/vjp products with a ResourceWarning (never an out-of-memory crash).
- **Stable reductions.** Tall matrices (J·Q, [G·V | f0]) are reduced to their R factor, in one QR
  when they fit in the budget and otherwise by a streaming TSQR over chunks; the small SVDs act on
  R only. Singular vectors get a canonical sign, so the basis and z do not depend on how the rows
  were split (chunks, processes: see :mod:`pinnlsr.distributed`).

Entry points: :func:`apply`/:func:`apply_transpose` (the "auto" backend of
:class:`pinnlsr.linearize.JacobianOperator`, so of ``lsr(..., jacobian_mode="auto")``) and
:func:`lsr_step`, the streamed randomized-basis LSR step used by ``scripts/bench_lsr.py``.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.func import jacrev, vmap

from . import jacobian as jac
from .jet_plans import JetPlan, block_jets, plan_block, residual_of_jet
from .jets import jet_network
from .residual import Block, Rows
from .qr import StreamingR, canonical_svd, orthonormalize
from .solvers import no_tf32

# Bytes per point of a structured chunk, in units of q·m numbers: the rows, the per-layer outer
# products before they are copied into the rows, and the product with the directions.
_STRUCTURED_OVERHEAD = 2
_MAX_CHUNK_POINTS = 8192


# ----------------------------------------------------------------------------------------------
# Rows from jets
# ----------------------------------------------------------------------------------------------
class StructuredJacobian:
    """Explicit row chunks of a Rows' Jacobian, by jets (:mod:`pinnlsr.jets`) where the model and
    the term allow it and by ``vmap(jacrev)`` otherwise. ``plans`` says which path each block
    takes and why (:meth:`pinnlsr.jet_plans.JetPlan.describe`).

    A jet block's rows are G_i = Σ_c (∂r/∂u^(c))(x_i) · ∂u^(c)(x_i)/∂θ over the jet channels c the
    residual reads: the coefficients come from the user's residual evaluated on u's jets, the
    products from one written-out reverse pass of the jets with q cotangents at once. A residual
    that evaluates u at fixed shifts x + o_k of its point (a periodic condition) sums the rows of
    its anchors. Each block is checked once on a few probe points against the generic path."""

    def __init__(self, rows: Rows, theta: torch.Tensor, probe_points: int = 3):
        self.rows = rows
        self.plans: dict[str, JetPlan] = {}
        self._nets: dict[str, object] = {}
        for block in rows.blocks:
            net = None if block.model is None else jet_network(block.model, rows.spec)
            self._nets[block.name] = net
            self.plans[block.name] = plan_block(block, net, theta, probe_points)

    def block_rows_and_values(self, block: Block, theta: torch.Tensor, pts: torch.Tensor,
                              data: torch.Tensor, values: bool = False):
        """(scaled rows (c·q, m), scaled values (c·q,) or None) of ``block`` at ``pts`` (c, d).
        For jet blocks the values come from the same jets at no extra cost."""
        plan = self.plans[block.name]
        if plan.kind != "jet":
            g = jac.block_jacobian(block, theta, pts, data)
            vals = block.scale * vmap(block.fn, in_dims=(None, 0, 0))(theta, pts, data).reshape(-1) if values else None
            return g, vals
        with torch.no_grad():
            return self._jet_rows(block, theta.detach(), pts, data, plan)

    def _jet_rows(self, block: Block, theta: torch.Tensor, pts: torch.Tensor, data: torch.Tensor, plan: JetPlan):
        net, ch = self._nets[block.name], plan.channels
        c, n_k = pts.shape[0], plan.n_anchors
        full, state = block_jets(net, plan, theta, pts, keep=True)  # (c, K, C_full, k)
        k, idx = full.shape[-1], ch.full_index()
        r_of_jet = residual_of_jet(plan.residual, plan.with_data, plan.offsets)

        def with_value(j, x, y):
            r = r_of_jet(j, x, y)
            return r, r

        coef, vals = vmap(jacrev(with_value, has_aux=True))(full, pts, data)  # (c, q, K, C_full, k), (c, q)
        q = coef.shape[1]
        cot = coef[:, :, :, idx].permute(1, 4, 3, 0, 2).reshape(q, k, ch.size, c * n_k)
        rows = net.point_rows(theta, state, cot, ch, n_k, self.rows.m)  # (q, c, m)
        rows = rows.transpose(0, 1).reshape(c * q, -1).mul_(block.scale)
        return rows, block.scale * vals.reshape(-1)


def points_per_chunk(rows: Rows, budget: int | None, dtype: torch.dtype, device,
                     extra_columns: int = 0, q: int | None = None) -> int:
    """Points per structured chunk under ``budget`` bytes (rows, outer products and the product
    with ``extra_columns`` directions) for blocks of ``q`` rows per point (default: the largest
    q of ``rows``); 0 when not even one point fits."""
    budget = jac.default_memory_budget(device) if budget is None else int(budget)
    itemsize = torch.empty((), dtype=dtype).element_size()
    q = max(b.q for b in rows.blocks) if q is None else q
    per_point = q * (_STRUCTURED_OVERHEAD * rows.m + extra_columns) * itemsize
    return int(min(_MAX_CHUNK_POINTS, budget // per_point))


def iter_rows(rows: Rows, theta: torch.Tensor, memory_budget: int | None = None, extra_columns: int = 0,
              engine: StructuredJacobian | None = None):
    """Yield (row slice, G[slice] (c, m)) over all rows, in chunks from the budget. Raises a
    ValueError naming the fix when not one point fits (callers may fall back to matrix-free)."""
    for sl, g, _ in iter_rows_and_values(rows, theta, memory_budget, extra_columns, engine):
        yield sl, g


def iter_rows_and_values(rows: Rows, theta: torch.Tensor, memory_budget: int | None = None,
                         extra_columns: int = 0, engine: StructuredJacobian | None = None,
                         values: bool = False):
    """Yield (row slice, G[slice] (c, m), f[slice] (c,) or None) over all rows, in chunks sized
    per block from the budget."""
    if points_per_chunk(rows, memory_budget, theta.dtype, theta.device, extra_columns) < 1:
        raise ValueError(
            f"memory budget of {memory_budget} bytes cannot hold the Jacobian rows of one point "
            f"(m = {rows.m} parameters): raise memory_budget or use jacobian_mode='matrix_free'"
        )
    engine = engine or StructuredJacobian(rows, theta)
    start = 0
    for block in rows.blocks:
        chunk = points_per_chunk(rows, memory_budget, theta.dtype, theta.device, extra_columns, block.q)
        for i in range(0, block.points.shape[0], chunk):
            pts, data = block.points[i:i + chunk], block.data[i:i + chunk]
            g, v = engine.block_rows_and_values(block, theta, pts, data, values=values)
            yield slice(start + i * block.q, start + (i + pts.shape[0]) * block.q), g, v
        start += block.n_rows


def _fallback(rows, memory_budget, theta, columns) -> bool:
    if points_per_chunk(rows, memory_budget, theta.dtype, theta.device, columns) >= 1:
        return False
    warnings.warn(
        f"memory budget of {memory_budget} bytes is below one point's Jacobian rows (m = {rows.m}); "
        "using the slower matrix-free jvp/vjp products instead. Raise memory_budget to get the "
        "structured engine.", ResourceWarning, stacklevel=3)
    return True


def apply(rows: Rows, theta: torch.Tensor, v: torch.Tensor, memory_budget: int | None = None,
          engine: StructuredJacobian | None = None) -> torch.Tensor:
    """G · v for v (m, l), streamed over structured row chunks: (n, l)."""
    jac._check_directions(rows, theta, v, "right")
    if _fallback(rows, memory_budget, theta, v.shape[1]):
        return jac.apply(rows, theta, v, "matrix_free", memory_budget)
    out = torch.empty(rows.n_rows, v.shape[1], dtype=theta.dtype, device=theta.device)
    with no_tf32():
        for sl, g in iter_rows(rows, theta, memory_budget, v.shape[1], engine):
            torch.matmul(g, v, out=out[sl])
    return out


def apply_transpose(rows: Rows, theta: torch.Tensor, w: torch.Tensor, memory_budget: int | None = None,
                    engine: StructuredJacobian | None = None) -> torch.Tensor:
    """Gᵀ · w for w (n, l), streamed over structured row chunks: (m, l)."""
    jac._check_directions(rows, theta, w, "left")
    if _fallback(rows, memory_budget, theta, w.shape[1]):
        return jac.apply_transpose(rows, theta, w, "matrix_free", memory_budget)
    out = torch.zeros(rows.m, w.shape[1], dtype=theta.dtype, device=theta.device)
    with no_tf32():
        for sl, g in iter_rows(rows, theta, memory_budget, w.shape[1], engine):
            out.addmm_(g.T, w[sl])
    return out


# ----------------------------------------------------------------------------------------------
# Stable reductions
# ----------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------
# The streamed LSR step
# ----------------------------------------------------------------------------------------------
@dataclass
class StepResult:
    """What :func:`lsr_step` returns. ``V`` (m, r) is the scaled basis, ``z`` (r,) the
    coefficients, ``linearized_residual`` ||f0 + G V z||."""

    z: torch.Tensor
    V: torch.Tensor
    singular_values: torch.Tensor  # of the sketch J·Q, descending
    rank: int
    residual_before: float
    linearized_residual: float
    cond: float
    seconds: dict = field(default_factory=dict)
    plans: dict = field(default_factory=dict)
    engines: tuple | None = field(default=None, repr=False)  # (residual, output) StructuredJacobian


@dataclass
class Reducer:
    """How per-process partial results are combined (identity for one process; see
    :mod:`pinnlsr.distributed`): ``sum_`` adds a tensor over processes in place, ``stack_r``
    turns this process's R factor into the R of all processes' rows, ``agree`` makes every
    process hold rank 0's tensor, ``any_`` is True on every process when it is on one (a check
    that must stop every process before the next collective, not one)."""

    sum_: Callable[[torch.Tensor], None] = lambda t: None
    stack_r: Callable[[torch.Tensor], torch.Tensor] = lambda r: r
    agree: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    any_: Callable[[bool], bool] = lambda flag: flag


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lsr_step(rows: Rows, out_rows: Rows, theta: torch.Tensor, rank: int, oversampling: int = 10,
             generator: torch.Generator | None = None, omega: torch.Tensor | None = None,
             memory_budget: int | None = None, rcond: float | None = 1e-14, scale: bool = True,
             reducer: Reducer | None = None,
             engines: tuple[StructuredJacobian, StructuredJacobian] | None = None) -> StepResult:
    """One randomized-basis LSR step on the residual ``rows`` with the output Jacobian of
    ``out_rows``, streamed: Y = Jᵀ Ω, Q = orth(Y), R_B = R(J Q), SVD(R_B) → V (scaled by 1/σ so
    J V is orthonormal), R = R([G V | f0]), truncated SVD of R → z.

    ``omega`` (n_out, r + p) is the sketch (drawn from ``generator`` on the CPU when None, like
    :func:`pinnlsr.subspace.randomized_basis`). Matches ``lsr(..., subspace="randomized")`` up to
    rounding; the timings of each phase are in ``seconds``.

    ``engines`` = (residual engine, output engine), e.g. ``StepResult.engines`` of an earlier step
    on the same rows (iterative LSR), reuses their checked plans: no per-term checks ("setup")
    in this step."""
    reducer = reducer or Reducer()
    device, dtype = theta.device, theta.dtype
    budget = jac.default_memory_budget(device) if memory_budget is None else int(memory_budget)
    itemsize = theta.element_size()
    t = {}
    _sync(device)
    t0 = time.perf_counter()
    width = min(rank + oversampling, out_rows.m)
    if omega is None:
        omega = torch.randn(out_rows.n_rows, width, generator=generator, dtype=dtype).to(device)
    with no_tf32(), torch.no_grad():
        if engines is not None:
            eng_res, eng_out = engines
            if eng_res.rows is not rows or eng_out.rows is not out_rows:
                raise ValueError("engines were made for other Rows: pass the rows they were built on, or engines=None")
        else:
            eng_out = StructuredJacobian(out_rows, theta)
            eng_res = StructuredJacobian(rows, theta)
        _sync(device)
        t["setup"] = time.perf_counter() - t0

        tt = time.perf_counter()
        y = apply_transpose(out_rows, theta, omega, budget, eng_out)  # (m, width)
        reducer.sum_(y)
        _sync(device)
        t["sketch"] = time.perf_counter() - tt

        tt = time.perf_counter()
        q = orthonormalize(y)
        del y
        q = reducer.agree(q)
        _sync(device)
        t["orth"] = time.perf_counter() - tt

        tt = time.perf_counter()
        r_b = _streamed_r(out_rows, theta, q, False, budget, itemsize, eng_out)[0]
        r_b = reducer.stack_r(r_b)
        _sync(device)
        ts = time.perf_counter()
        _, s, vh = canonical_svd(r_b)
        rc = max(out_rows.n_rows, out_rows.m) * torch.finfo(dtype).eps
        keep = int((s > rc * s[0]).sum())
        r = min(rank, keep)
        if r == 0:
            raise ValueError("the output Jacobian is zero: the network does not depend on its parameters here")
        t["basis_svd"] = time.perf_counter() - ts  # part of "basis": the SVD of R_B
        v = q @ vh[:r].T
        if scale:
            v = v / s[:r]
        del q
        _sync(device)
        t["basis"] = time.perf_counter() - tt

        tt = time.perf_counter()
        rr, f0 = _streamed_r(rows, theta, v, True, budget, itemsize, eng_res)
        if reducer.any_(not bool(torch.isfinite(f0).all())):  # every process stops, none waits
            _check_finite(rows, f0)
            raise FloatingPointError("the residual has NaN or Inf values on another process's points: "
                                     "check the network and the residual functions there")
        rr = reducer.stack_r(rr)
        _sync(device)
        t["jacobian"] = time.perf_counter() - tt

        tt = time.perf_counter()
        z, linres, cond = _solve_from_r(rr, r, rcond)
        z = reducer.agree(z)
        before = f0.dot(f0).reshape(1)
        reducer.sum_(before)
        _sync(device)
        t["solve"] = time.perf_counter() - tt
    t["total"] = time.perf_counter() - t0
    plans = {**{f"outputs/{k}": p.describe() for k, p in eng_out.plans.items()},
             **{k: p.describe() for k, p in eng_res.plans.items()}}
    return StepResult(z, v, s, r, float(before.sqrt()), linres, cond, t, plans, (eng_res, eng_out))


def _streamed_r(rows: Rows, theta: torch.Tensor, v: torch.Tensor, with_values: bool,
                budget: int, itemsize: int, engine: StructuredJacobian):
    """(R factor of [G V | f0] (or of G V without ``with_values``), f0 (n,) or None), the
    products streamed over row chunks and f0 computed along with the rows; the tall matrix is kept
    whole when it takes at most a quarter of the budget, else folded by a streaming TSQR."""
    cols = v.shape[1] + with_values
    whole = rows.n_rows * cols * itemsize <= budget // 4
    acc = StreamingR(rows.n_rows if whole else max(2 * cols, budget // (4 * cols * itemsize)))
    if _fallback(rows, budget, theta, cols):
        a = jac.apply(rows, theta, v, "matrix_free", budget)
        f0 = rows.values(theta, check=False) if with_values else None
        acc.add(torch.cat([a, f0.unsqueeze(1)], 1) if with_values else a)
        return acc.result(), f0
    f0 = torch.empty(rows.n_rows, dtype=theta.dtype, device=theta.device) if with_values else None
    for sl, g, vals in iter_rows_and_values(rows, theta, budget, cols, engine, values=with_values):
        block = torch.empty(g.shape[0], cols, dtype=theta.dtype, device=theta.device)
        torch.matmul(g, v, out=block[:, :v.shape[1]])
        if with_values:
            block[:, -1] = vals
            f0[sl] = vals
        acc.add(block)
    return acc.result(), f0


def _check_finite(rows: Rows, f0: torch.Tensor) -> None:
    """The FloatingPointError of :meth:`Rows.values` for NaN/Inf residual values, naming the term."""
    if bool(torch.isfinite(f0).all()):
        return
    for name, sl in rows.offsets().items():
        if not bool(torch.isfinite(f0[sl]).all()):
            raise FloatingPointError(
                f"residual term {name!r} has NaN or Inf values at the current parameters: check the "
                "network's parameters and outputs (a diverged training run?) and the term's residual "
                "function for divisions by zero or logs of negative numbers")


def _solve_from_r(rr: torch.Tensor, r: int, rcond: float | None) -> tuple[torch.Tensor, float, float]:
    """min_z ||A z + f0|| from R of [A | f0] (A has r columns): truncated SVD of R11."""
    r11, r12 = rr[:r, :r], rr[:r, r]
    rho2 = rr[r:, r].pow(2).sum()
    u, s, vh = canonical_svd(r11)
    rc = max(rr.shape) * torch.finfo(rr.dtype).eps if rcond is None else rcond
    k = int((s > rc * s[0]).sum()) if s[0] > 0 else 0
    c = u[:, :k].T @ r12
    z = -(vh[:k].T @ (c / s[:k]))
    lin = (r11 @ z + r12).pow(2).sum() + rho2
    cond = float(s[0] / s[k - 1]) if k else float("inf")
    return z, float(lin.sqrt()), cond


__all__ = [
    "StructuredJacobian",
    "points_per_chunk",
    "iter_rows",
    "apply",
    "apply_transpose",
    "Reducer",
    "StepResult",
    "lsr_step",
]

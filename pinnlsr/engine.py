"""Structured, streaming Jacobian engine: jet rows of G and J in chunks under a memory budget.

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

Entry points: :func:`apply`/:func:`apply_transpose` and the row chunks (the "auto" backend of
:class:`pinnlsr.linearize.JacobianOperator`, so of ``lsr(..., jacobian_mode="auto")`` and of the
streamed step :func:`pinnlsr.lsr.lsr_step`).
"""
from __future__ import annotations

import warnings

import torch
from torch.func import jacrev, vmap

from . import jacobian as jac
from .jet_plans import JetPlan, block_jets, plan_block
from .jet_models import jet_network
from .residual import Block, Rows
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
        r_of_jet = plan.residual_of_jet()

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


__all__ = [
    "StructuredJacobian",
    "points_per_chunk",
    "iter_rows",
    "apply",
    "apply_transpose",
]

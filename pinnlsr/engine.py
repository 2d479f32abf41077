"""Structured, streaming Jacobian engine and the fast one-shot LSR step.

The cost of one LSR step is the three Jacobian products Jᵀ·Ω, J·Q and G·V (about 6·n·m·r flops for
n rows, m parameters and rank r). This module makes all three plain GEMMs on explicit row chunks and
makes the rows themselves cheap:

- **Jet rows for MLPs.** For an :class:`~pinnlsr.models.MLP` (Linear layers with tanh or sin,
  optional input scaling) a residual that depends on u only through its value and derivatives up to
  order 2 *at the point itself* has rows G_i = Σ_c (∂r/∂u^(c))(x_i) · ∂u^(c)(x_i)/∂θ over the jet
  components c (u, ∇u, upper triangle of ∇²u). The engine propagates the jets of all points of a
  chunk through the network as batched GEMMs, gets ∂r/∂u^(c) by evaluating the user's own residual on
  the local Taylor polynomial of u (no network inside), back-propagates these cotangents once and
  forms each layer's rows as Σ_c ḡ_c ⊗ a_c: about C·n·m flops for C jet channels instead of the
  cost of ``vmap(jacrev)`` through nested ``torch.func`` transforms. Which jet order a block needs
  is found per block by checking values on probe points and rows against ``vmap(jacrev)``; blocks
  that fail (a residual evaluating u at other points, e.g. a periodic condition, or third
  derivatives, or a model that is not an MLP) use the generic ``vmap(jacrev)`` rows instead.
- **Streaming.** Rows come in chunks of points sized from a memory budget (default from free device
  memory), so G and J are never stored whole. A budget below one point falls back to the
  matrix-free jvp/vjp products with a ResourceWarning (never an out-of-memory crash).
- **Stable reductions.** Tall matrices (J·Q, [G·V | f0]) are reduced to their R factor, in one QR
  when they fit in the budget and otherwise by a streaming TSQR over chunks; the small SVDs act on
  R only. Singular vectors get a canonical sign, so the basis and z do not depend on how the rows
  were split (chunks, processes: see :mod:`pinnlsr.distributed`).

Entry points: :func:`apply`/:func:`apply_transpose` (also reachable as
``pinnlsr.jacobian.apply(..., mode="structured")`` and so as ``lsr(..., jacobian_mode="structured")``)
and :func:`lsr_step`, the streamed randomized-basis LSR step used by ``scripts/bench_lsr.py``.
"""
from __future__ import annotations

import inspect
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.func import jacrev, vmap

from . import jacobian as jac
from .models import MLP, ParamSpec, Sine
from .residual import Block, Rows
from .solvers import no_tf32

# Bytes per point of a structured chunk, in units of q·m numbers: the rows, the per-layer outer
# products before they are copied into the rows, and the product with the directions.
_STRUCTURED_OVERHEAD = 2
_MAX_CHUNK_POINTS = 8192


# ----------------------------------------------------------------------------------------------
# MLP structure and jets
# ----------------------------------------------------------------------------------------------
@dataclass
class MLPStructure:
    """Where each Linear layer's weight (out, in) and bias (out,) sit in the flat θ, the
    activation between layers and the fixed input map x̃ = (x - shift)·scale."""

    layers: list[tuple[slice, slice, int, int]]  # (weight slice, bias slice, out, in)
    activation: str  # "tanh" | "sin"
    shift: torch.Tensor | None
    scale: torch.Tensor | None

    @classmethod
    def of(cls, model: nn.Module, spec: ParamSpec) -> "MLPStructure | None":
        """The structure of a pinnlsr MLP (or an nn.Sequential of Linear/Tanh/Sine), else None."""
        seq = model.net if isinstance(model, MLP) else model
        if not isinstance(seq, nn.Sequential):
            return None
        prefix = "net." if isinstance(model, MLP) else ""
        offsets, start = {}, 0
        for name, size in zip(spec.names, spec.sizes):
            offsets[name] = slice(start, start + size)
            start += size
        layers, acts, used = [], set(), set()
        mods = list(seq.named_children())
        for i, (name, mod) in enumerate(mods):
            if isinstance(mod, nn.Linear):
                if mod.bias is None or (i % 2) != 0:
                    return None
                w, b = f"{prefix}{name}.weight", f"{prefix}{name}.bias"
                if w not in offsets or b not in offsets:
                    return None
                layers.append((offsets[w], offsets[b], mod.out_features, mod.in_features))
                used |= {w, b}
            elif isinstance(mod, nn.Tanh):
                acts.add("tanh")
            elif isinstance(mod, Sine):
                acts.add("sin")
            else:
                return None
            if (i % 2 == 1) != (not isinstance(mod, nn.Linear)):
                return None
        if len(acts) > 1 or not layers or used != set(spec.names) or not isinstance(mods[-1][1], nn.Linear):
            return None
        shift = getattr(model, "input_shift", None)
        scale = getattr(model, "input_scale", None)
        return cls(layers, acts.pop() if acts else "tanh", shift, scale)

    def _act(self, h: torch.Tensor):
        if self.activation == "tanh":
            t = torch.tanh(h)
            s1 = 1 - t * t
            return t, s1, -2 * t * s1
        s, c = torch.sin(h), torch.cos(h)
        return s, c, -s

    def jets(self, theta: torch.Tensor, x: torch.Tensor, order: int):
        """Forward jets of the network at points x (c, d): returns (inputs A_l (c, C, in_l) of each
        layer, pre-activations H_l (c, C, out_l) as autograd leaves, outputs U (c, C, k)).
        Channels: value, then the d first derivatives (order >= 1), then the upper-triangle second
        derivatives (j <= k) (order 2)."""
        c, d = x.shape
        pairs = [(j, k) for j in range(d) for k in range(j, d)] if order >= 2 else []
        xs = x if self.shift is None else (x - self.shift) * self.scale
        chans = [xs]
        if order >= 1:
            s = torch.ones(d, dtype=x.dtype, device=x.device) if self.scale is None else self.scale
            eye = torch.diag(s)
            chans += [eye[j].expand(c, d) for j in range(d)]
        chans += [torch.zeros_like(xs) for _ in pairs]
        a = torch.stack(chans, 1)  # (c, C, d)
        inputs, pres = [], []
        for li, (ws, bs, out_f, in_f) in enumerate(self.layers):
            w = theta[ws].view(out_f, in_f)
            h = a @ w.T
            h[:, 0] += theta[bs]
            if li == 0:  # the graph starts here; later H_l are intermediate tensors of it
                h.requires_grad_(True)
            inputs.append(a.detach())
            pres.append(h)
            if li == len(self.layers) - 1:
                return inputs, pres, h
            t, s1, s2 = self._act(h[:, 0])
            new = [t]
            if order >= 1:
                new += [s1 * h[:, 1 + j] for j in range(d)]
            for p, (j, k) in enumerate(pairs):
                new.append(s2 * h[:, 1 + j] * h[:, 1 + k] + s1 * h[:, 1 + d + p])
            a = torch.stack(new, 1)
        raise AssertionError("unreachable")


def _n_channels(order: int, d: int) -> int:
    return 1 + (d if order >= 1 else 0) + (d * (d + 1) // 2 if order >= 2 else 0)


def taylor_polynomial(jet: torch.Tensor, x0: torch.Tensor, order: int) -> Callable:
    """u(y) ≈ Σ_c jet_c · basis_c(y - x0): the local Taylor polynomial with the given jet (C, k) at
    x0 (d,), exact in value and derivatives up to ``order`` at y = x0."""
    d = x0.shape[0]
    pairs = [(j, k) for j in range(d) for k in range(j, d)] if order >= 2 else []

    def u(y: torch.Tensor) -> torch.Tensor:
        dy = y - x0
        out = jet[0]
        if order >= 1:
            out = out + dy @ jet[1:1 + d]
        for p, (j, k) in enumerate(pairs):
            coef = 0.5 if j == k else 1.0
            out = out + coef * dy[j] * dy[k] * jet[1 + d + p]
        return out

    return u


@dataclass
class _BlockPlan:
    kind: str  # "jet" | "generic"
    order: int = 0
    residual: Callable | None = None
    with_data: bool = False
    reason: str = ""


def _closure_parts(fn: Callable) -> tuple[Callable | None, nn.Module | None, bool]:
    """(residual, model, with_data) of a Block function made by pinnlsr.residual (point_function
    or output_rows); (None, None, False) when unknown."""
    try:
        nonlocals = inspect.getclosurevars(fn).nonlocals
    except (TypeError, ValueError):
        return None, None, False
    model = nonlocals.get("model")
    if "residual" in nonlocals:
        return nonlocals["residual"], model, bool(nonlocals.get("with_data", False))
    if model is not None and fn.__name__ == "fn":  # output_rows: the network output itself
        return (lambda u, x: u(x)), model, False
    return None, None, False


class StructuredJacobian:
    """Explicit row chunks of a Rows' Jacobian, by jets for MLP blocks and ``vmap(jacrev)``
    otherwise. ``plans`` says which path each block takes and why."""

    def __init__(self, rows: Rows, theta: torch.Tensor, probe_points: int = 4):
        self.rows = rows
        self.plans: dict[str, _BlockPlan] = {}
        self._structures: dict[str, MLPStructure] = {}
        for block in rows.blocks:
            self.plans[block.name] = self._plan(block, theta, probe_points)

    def _plan(self, block: Block, theta: torch.Tensor, n_probe: int) -> _BlockPlan:
        residual, model, with_data = _closure_parts(block.fn)
        if residual is None:
            return _BlockPlan("generic", reason="block function not made by pinnlsr.residual")
        structure = MLPStructure.of(model, self.rows.spec)
        if structure is None:
            return _BlockPlan("generic", reason="model is not a plain MLP (Linear + tanh/sin)")
        self._structures[block.name] = structure
        pts, data = block.points[:n_probe], block.data[:n_probe]
        tol = 1e-9 if theta.dtype == torch.float64 else 1e-4
        exact_values = vmap(block.fn, in_dims=(None, 0, 0))(theta, pts, data).reshape(-1)
        full = _BlockPlan("jet", 2, residual, with_data)
        try:  # values of the order-2 surrogate first (cheap), then rows against vmap(jacrev)
            jet = structure.jets(theta.detach(), pts, 2)[2].detach()
            f = self._residual_of_jet(full)
            values = vmap(f, in_dims=(0, 0, 0))(jet, pts, data).reshape(-1)
            if (values - exact_values).abs().max() > tol * max(1.0, float(exact_values.abs().max())):
                raise ValueError("values differ")
            # the order needed: the highest jet group with a structurally nonzero coefficient
            coef = vmap(jacrev(f), in_dims=(0, 0, 0))(jet, pts, data)  # (c, q, C, k)
            d = pts.shape[1]
            order = 2 if bool((coef[:, :, 1 + d:] != 0).any()) else (1 if bool((coef[:, :, 1:1 + d] != 0).any()) else 0)
            plan = _BlockPlan("jet", order, residual, with_data)
            rows = self.block_rows(block, theta, pts, data, plan)
        except Exception:  # the residual does not run on a polynomial, or disagrees with it
            return _BlockPlan("generic", reason="residual needs more than the order-2 jet at its point")
        exact_rows = jac.block_jacobian(block, theta, pts, data)
        if (rows - exact_rows).abs().max() <= tol * max(1.0, float(exact_rows.abs().max())):
            return plan
        return _BlockPlan("generic", reason="residual needs more than the order-2 jet at its point")

    @staticmethod
    def _residual_of_jet(plan: _BlockPlan) -> Callable:
        def r_of_jet(j, x, y):
            u = taylor_polynomial(j, x, plan.order)
            r = plan.residual(u, x, y) if plan.with_data else plan.residual(u, x)
            return torch.as_tensor(r).reshape(-1)

        return r_of_jet

    def block_rows(self, block: Block, theta: torch.Tensor, pts: torch.Tensor, data: torch.Tensor,
                   plan: _BlockPlan | None = None) -> torch.Tensor:
        """Scaled rows of ``block`` at ``pts`` (c, d): shape (c·q, m)."""
        plan = plan or self.plans[block.name]
        if plan.kind == "generic":
            return jac.block_jacobian(block, theta, pts, data)
        with torch.enable_grad():
            return self._jet_rows(block, theta, pts, data, plan)

    def _jet_rows(self, block, theta, pts, data, plan) -> torch.Tensor:
        structure = self._structures[block.name]
        c, d = pts.shape
        inputs, pres, out = structure.jets(theta.detach(), pts, plan.order)
        jet = out.detach()  # (c, C, k)

        coef = vmap(jacrev(self._residual_of_jet(plan)), in_dims=(0, 0, 0))(jet, pts, data)  # (c, q, C, k)
        q = coef.shape[1]
        rows = torch.empty(c, q, self.rows.m, dtype=theta.dtype, device=theta.device)
        for j in range(q):
            grads = torch.autograd.grad(out, pres, coef[:, j], retain_graph=j < q - 1)
            for (ws, bs, out_f, in_f), g, a in zip(structure.layers, grads, inputs):
                rows[:, j, ws] = torch.bmm(g.transpose(1, 2), a).reshape(c, -1)
                rows[:, j, bs] = g[:, 0]
        rows = rows.reshape(c * q, -1)
        rows.mul_(block.scale)
        return rows


def points_per_chunk(rows: Rows, budget: int | None, dtype: torch.dtype, device,
                     extra_columns: int = 0) -> int:
    """Points per structured chunk under ``budget`` bytes (rows, outer products and the product
    with ``extra_columns`` directions); 0 when not even one point fits."""
    budget = jac.default_memory_budget(device) if budget is None else int(budget)
    itemsize = torch.empty((), dtype=dtype).element_size()
    q_max = max(b.q for b in rows.blocks)
    per_point = q_max * (_STRUCTURED_OVERHEAD * rows.m + extra_columns) * itemsize
    return int(min(_MAX_CHUNK_POINTS, budget // per_point))


def iter_rows(rows: Rows, theta: torch.Tensor, memory_budget: int | None = None, extra_columns: int = 0,
              engine: StructuredJacobian | None = None):
    """Yield (row slice, G[slice] (c, m)) over all rows, in chunks from the budget. Raises a
    ValueError naming the fix when not one point fits (callers may fall back to matrix-free)."""
    chunk = points_per_chunk(rows, memory_budget, theta.dtype, theta.device, extra_columns)
    if chunk < 1:
        raise ValueError(
            f"memory budget of {memory_budget} bytes cannot hold the Jacobian rows of one point "
            f"(m = {rows.m} parameters): raise memory_budget or use jacobian_mode='matrix_free'"
        )
    engine = engine or StructuredJacobian(rows, theta)
    for block, start, pts, data in rows.chunks(chunk):
        g = engine.block_rows(block, theta, pts, data)
        yield slice(start, start + g.shape[0]), g


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
def r_factor(a: torch.Tensor) -> torch.Tensor:
    """R of a = Q R (reduced), shape (min(rows, cols), cols)."""
    return torch.linalg.qr(a, mode="r")[1]


def stack_r(factors: list[torch.Tensor]) -> torch.Tensor:
    """TSQR combine: R of the stacked R factors (each (·, l)), shape (≤l, l)."""
    return r_factor(torch.cat(factors)) if len(factors) > 1 else factors[0]


class StreamingR:
    """R factor of a tall matrix given in row blocks, with bounded memory: blocks are buffered up
    to ``buffer_rows`` rows and folded into R by QR (a streaming TSQR)."""

    def __init__(self, buffer_rows: int):
        self.buffer_rows = max(1, buffer_rows)
        self.parts: list[torch.Tensor] = []
        self.rows = 0
        self.r: torch.Tensor | None = None

    def add(self, block: torch.Tensor) -> None:
        self.parts.append(block)
        self.rows += block.shape[0]
        if self.rows >= self.buffer_rows:
            self._fold()

    def _fold(self) -> None:
        if not self.parts:
            return
        parts = ([self.r] if self.r is not None else []) + self.parts
        self.r = r_factor(torch.cat(parts))
        self.parts, self.rows = [], 0

    def result(self) -> torch.Tensor:
        self._fold()
        return self.r


def canonical_svd(r: torch.Tensor):
    """SVD of a small matrix with the sign of each right singular vector fixed (largest |entry|
    positive), so the result does not depend on the row signs of R. Returns (U, S, Vh)."""
    u, s, vh = torch.linalg.svd(r, full_matrices=False)
    idx = vh.abs().argmax(dim=1, keepdim=True)
    sign = torch.sign(torch.gather(vh, 1, idx))
    sign[sign == 0] = 1
    return u * sign.T, s, vh * sign


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


@dataclass
class Reducer:
    """How per-process partial results are combined (identity for one process; see
    :mod:`pinnlsr.distributed`): ``sum_`` adds a tensor over processes in place, ``stack_r``
    turns this process's R factor into the R of all processes' rows."""

    sum_: Callable[[torch.Tensor], None] = lambda t: None
    stack_r: Callable[[torch.Tensor], torch.Tensor] = lambda r: r
    agree: Callable[[torch.Tensor], torch.Tensor] = lambda t: t


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lsr_step(rows: Rows, out_rows: Rows, theta: torch.Tensor, rank: int, oversampling: int = 10,
             generator: torch.Generator | None = None, omega: torch.Tensor | None = None,
             memory_budget: int | None = None, rcond: float | None = 1e-14, scale: bool = True,
             reducer: Reducer | None = None) -> StepResult:
    """One randomized-basis LSR step on the residual ``rows`` with the output Jacobian of
    ``out_rows``, streamed: Y = Jᵀ Ω, Q = orth(Y), R_B = R(J Q), SVD(R_B) → V (scaled by 1/σ so
    J V is orthonormal), R = R([G V | f0]), truncated SVD of R → z.

    ``omega`` (n_out, r + p) is the sketch (drawn from ``generator`` on the CPU when None, like
    :func:`pinnlsr.subspace.randomized_basis`). Matches ``lsr(..., subspace="randomized")`` up to
    rounding; the timings of each phase are in ``seconds``."""
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
        eng_out = StructuredJacobian(out_rows, theta)
        eng_res = StructuredJacobian(rows, theta)
        f0 = rows.values(theta)
        _sync(device)
        t["setup"] = time.perf_counter() - t0

        tt = time.perf_counter()
        y = apply_transpose(out_rows, theta, omega, budget, eng_out)  # (m, width)
        reducer.sum_(y)
        _sync(device)
        t["sketch"] = time.perf_counter() - tt

        tt = time.perf_counter()
        q = torch.linalg.qr(y)[0]
        del y
        q = reducer.agree(q)
        _sync(device)
        t["orth"] = time.perf_counter() - tt

        tt = time.perf_counter()
        r_b = _streamed_r(out_rows, theta, q, None, budget, itemsize, eng_out)
        r_b = reducer.stack_r(r_b)
        _, s, vh = canonical_svd(r_b)
        rc = max(out_rows.n_rows, out_rows.m) * torch.finfo(dtype).eps
        keep = int((s > rc * s[0]).sum())
        r = min(rank, keep)
        if r == 0:
            raise ValueError("the output Jacobian is zero: the network does not depend on its parameters here")
        v = q @ vh[:r].T
        if scale:
            v = v / s[:r]
        del q
        _sync(device)
        t["basis"] = time.perf_counter() - tt

        tt = time.perf_counter()
        rr = _streamed_r(rows, theta, v, f0, budget, itemsize, eng_res)
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
    plans = {**{f"outputs/{k}": p.kind + (f"(order {p.order})" if p.kind == "jet" else f": {p.reason}")
                for k, p in eng_out.plans.items()},
             **{k: p.kind + (f"(order {p.order})" if p.kind == "jet" else f": {p.reason}")
                for k, p in eng_res.plans.items()}}
    return StepResult(z, v, s, r, float(before.sqrt()), linres, cond, t, plans)


def _streamed_r(rows: Rows, theta: torch.Tensor, v: torch.Tensor, f0: torch.Tensor | None,
                budget: int, itemsize: int, engine: StructuredJacobian) -> torch.Tensor:
    """R factor of [G V | f0] (or of G V when f0 is None), the products streamed over row chunks;
    the tall matrix is kept whole when it takes at most a quarter of the budget, else folded by a
    streaming TSQR."""
    cols = v.shape[1] + (f0 is not None)
    whole = rows.n_rows * cols * itemsize <= budget // 4
    acc = StreamingR(rows.n_rows if whole else max(2 * cols, budget // (4 * cols * itemsize)))
    if _fallback(rows, budget, theta, cols):
        a = jac.apply(rows, theta, v, "matrix_free", budget)
        acc.add(torch.cat([a, f0.unsqueeze(1)], 1) if f0 is not None else a)
        return acc.result()
    for sl, g in iter_rows(rows, theta, budget, cols, engine):
        block = torch.empty(g.shape[0], cols, dtype=theta.dtype, device=theta.device)
        torch.matmul(g, v, out=block[:, :v.shape[1]])
        if f0 is not None:
            block[:, -1] = f0[sl]
        acc.add(block)
    return acc.result()


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
    "MLPStructure",
    "StructuredJacobian",
    "taylor_polynomial",
    "points_per_chunk",
    "iter_rows",
    "apply",
    "apply_transpose",
    "r_factor",
    "stack_r",
    "StreamingR",
    "canonical_svd",
    "Reducer",
    "StepResult",
    "lsr_step",
]

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
from torch.func import jacrev, jvp, vmap

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
    _index_cache: dict = field(default_factory=dict, repr=False)

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

    def _pair_index(self, d: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Index tensors (j, k) of the upper-triangle pairs j <= k, made once per device (a host to
        device copy per layer would stall the GPU queue)."""
        key = (d, str(device))
        if key not in self._index_cache:
            pairs = [(j, k) for j in range(d) for k in range(j, d)]
            self._index_cache[key] = (torch.tensor([j for j, _ in pairs], device=device),
                                      torch.tensor([k for _, k in pairs], device=device))
        return self._index_cache[key]

    def _act(self, h: torch.Tensor, third: bool = False):
        """The activation and its first two derivatives at h (and the third with ``third``)."""
        if self.activation == "tanh":
            t = torch.tanh(h)
            s1 = 1 - t * t
            s2 = -2 * t * s1
            return (t, s1, s2, -2 * (s1 * s1 + t * s2)) if third else (t, s1, s2)
        s, c = torch.sin(h), torch.cos(h)
        return (s, c, -s, -c) if third else (s, c, -s)

    def jets(self, theta: torch.Tensor, x: torch.Tensor, order: int):
        """Forward jets of the network at points x (c, d): returns (inputs A_l (c, C, in_l) of each
        layer, pre-activations H_l (c, C, out_l), outputs U (c, C, k)).
        Channels: value, then the d first derivatives (order >= 1), then the upper-triangle second
        derivatives (j <= k) (order 2). All channels are propagated together (a few batched ops
        per layer, whatever d)."""
        c, d = x.shape
        pairs = [(j, k) for j in range(d) for k in range(j, d)] if order >= 2 else []
        xs = x if self.shift is None else (x - self.shift) * self.scale
        parts = [xs.unsqueeze(1)]
        if order >= 1:
            s = torch.ones(d, dtype=x.dtype, device=x.device) if self.scale is None else self.scale
            parts.append(torch.diag(s).expand(c, d, d))
        if pairs:
            parts.append(xs.new_zeros(c, len(pairs), d))
        a = torch.cat(parts, 1)  # (c, C, d)
        n_ch = a.shape[1]
        if pairs:
            jj, kk = self._pair_index(d, x.device)
            jj, kk = jj + 1, kk + 1
        inputs, pres = [], []
        for li, (ws, bs, out_f, in_f) in enumerate(self.layers):
            w = theta[ws].view(out_f, in_f)
            bias = theta[bs].unsqueeze(0)
            if n_ch > 1:
                bias = torch.cat([bias, bias.new_zeros(n_ch - 1, out_f)])
            h = torch.matmul(a, w.T).add_(bias)
            inputs.append(a)
            pres.append(h)
            if li == len(self.layers) - 1:
                return inputs, pres, h
            t, s1, s2 = self._act(h[:, 0])
            new = [t.unsqueeze(1)]
            if order >= 1:
                new.append(s1.unsqueeze(1) * h[:, 1:1 + d])
            if pairs:
                new.append(s2.unsqueeze(1) * h.index_select(1, jj) * h.index_select(1, kk)
                           + s1.unsqueeze(1) * h[:, 1 + d:])
            a = torch.cat(new, 1) if len(new) > 1 else new[0]
        raise AssertionError("unreachable")


    def jet_backward(self, theta: torch.Tensor, pres: list[torch.Tensor], cot: torch.Tensor, order: int,
                     d: int) -> list[torch.Tensor]:
        """Reverse pass of :meth:`jets`, written out (no autograd): the cotangents of every
        pre-activation H_l, shape (..., c, C, out_l), for a cotangent ``cot`` (..., c, C, k) of the
        outputs (leading dimensions: several cotangents at once)."""
        pairs = [(j, k) for j in range(d) for k in range(j, d)] if order >= 2 else []
        grads = [cot]
        g = cot
        for li in range(len(self.layers) - 1, 0, -1):
            ws, _, out_f, in_f = self.layers[li]
            abar = torch.matmul(g, theta[ws].view(out_f, in_f))  # cotangent of the activation jets
            h = pres[li - 1]
            h0 = h[:, 0]
            if order == 0:
                g = abar * self._act(h0)[1].unsqueeze(1)
                grads.append(g)
                continue
            sig = self._act(h0, third=bool(pairs))
            s1, s2 = sig[1].unsqueeze(1), sig[2].unsqueeze(1)
            h1 = h[:, 1:1 + d]
            a0, a1 = abar[..., :1, :], abar[..., 1:1 + d, :]
            g0 = a0 * s1 + (a1 * h1).sum(-2, keepdim=True) * s2
            g1 = a1 * s1
            parts = [g0, g1]
            if pairs:
                jj, kk = self._pair_index(d, h.device)
                h2 = h[:, 1 + d:]
                a2 = abar[..., 1 + d:, :]
                hj, hk = h1.index_select(1, jj), h1.index_select(1, kk)
                g0 = g0 + (a2 * (sig[3].unsqueeze(1) * hj * hk + s2 * h2)).sum(-2, keepdim=True)
                t2 = a2 * s2
                g1 = g1.index_add(g1.dim() - 2, jj, t2 * hk).index_add(g1.dim() - 2, kk, t2 * hj)
                parts = [g0, g1, a2 * s1]
            g = torch.cat(parts, -2)
            grads.append(g)
        return grads[::-1]


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
    offsets: torch.Tensor | None = None  # (K, d): u is evaluated at x + offsets[k]; None: at x only

    @property
    def n_anchors(self) -> int:
        return 1 if self.offsets is None else self.offsets.shape[0]

    def describe(self) -> str:
        if self.kind != "jet":
            return f"{self.kind}: {self.reason}"
        return f"jet(order {self.order})" + (f", u at {self.n_anchors} shifted points" if self.n_anchors > 1 else "")


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


def multi_taylor_polynomial(jets: torch.Tensor, anchors: torch.Tensor, order: int) -> Callable:
    """u(y) ≈ the Taylor polynomial (:func:`taylor_polynomial`) of the anchor nearest to y, for jets
    (K, C, k) at anchors (K, d): exact in value and derivatives up to ``order`` at every anchor."""
    if anchors.shape[0] == 1:
        return taylor_polynomial(jets[0], anchors[0], order)
    polys = [taylor_polynomial(jets[i], anchors[i], order) for i in range(anchors.shape[0])]
    ids = torch.arange(anchors.shape[0], device=anchors.device)

    def u(y: torch.Tensor) -> torch.Tensor:
        pick = (ids == ((y - anchors) ** 2).sum(-1).argmin()).to(jets.dtype)  # piecewise constant
        return sum(pick[i] * p(y) for i, p in enumerate(polys))

    return u


def evaluation_offsets(residual: Callable, with_data: bool, points: torch.Tensor, data: torch.Tensor,
                       k: int) -> torch.Tensor | None:
    """The shifts o (K, d) such that ``residual`` at a point x evaluates u exactly at x + o_1, ...,
    x + o_K, found by running it once per probe point (points (c, d), data (c, p)) with a recording
    u. None when the shifts are not the same at every probe (u at points that are not fixed shifts
    of x, e.g. a reflection) or the residual does not run outside ``vmap``."""
    found = None
    scale = 1.0 + float(points.abs().max())
    tol = 1e-9 * scale if points.dtype == torch.float64 else 1e-4 * scale
    for x, y in zip(points, data):
        seen: list[list[float]] = []

        def u(z: torch.Tensor) -> torch.Tensor:
            seen.append(z.tolist())
            return torch.sin(z.sum() + torch.arange(1, k + 1, dtype=z.dtype, device=z.device))

        try:
            residual(u, x, y) if with_data else residual(u, x)
        except Exception:
            return None
        if not seen:
            return None
        shifts = torch.tensor(seen, dtype=torch.float64) - x.detach().to("cpu", torch.float64)
        unique: list[torch.Tensor] = []
        for o in shifts:
            if all((o - w).abs().max() > tol for w in unique):
                unique.append(o)
        unique.sort(key=lambda o: (float(o.abs().max()) > tol, o.tolist()))  # x itself first
        offs = torch.stack(unique)
        if found is None:
            found = offs
        elif found.shape != offs.shape or (found - offs).abs().max() > tol:
            return None
    return found.to(device=points.device, dtype=points.dtype)


class StructuredJacobian:
    """Explicit row chunks of a Rows' Jacobian, by jets for MLP blocks and ``vmap(jacrev)``
    otherwise. ``plans`` says which path each block takes and why.

    A residual may evaluate u at several points x + o_k with shifts o_k that are the same for all
    points (a periodic condition u(x) - u(x + L e_1), its derivative version): the jets of all
    these anchors are propagated together and each point's rows sum the anchors' outer products.

    Each block is checked once, on a few probe points spread over it: the shifts are recorded by
    running the residual with a recording u, then the surrogate's values and rows (along a random
    direction) are compared with the exact ones from one ``jvp`` of the block function."""

    def __init__(self, rows: Rows, theta: torch.Tensor, probe_points: int = 3):
        self.rows = rows
        self.plans: dict[str, _BlockPlan] = {}
        self._structures: dict[str, MLPStructure] = {}
        for block in rows.blocks:
            self.plans[block.name] = self._plan(block, theta, probe_points)

    @staticmethod
    def _probe_indices(n: int, n_probe: int) -> torch.Tensor:
        """First, last and evenly spread points of a block (so a piecewise residual is seen)."""
        return torch.linspace(0, n - 1, min(n, n_probe)).round().long().unique()

    def _plan(self, block: Block, theta: torch.Tensor, n_probe: int) -> _BlockPlan:
        residual, model, with_data = _closure_parts(block.fn)
        if residual is None:
            return _BlockPlan("generic", reason="block function not made by pinnlsr.residual")
        structure = MLPStructure.of(model, self.rows.spec)
        if structure is None:
            return _BlockPlan("generic", reason="model is not a plain MLP (Linear + tanh/sin)")
        self._structures[block.name] = structure
        idx = self._probe_indices(block.points.shape[0], n_probe).to(block.points.device)
        pts, data = block.points[idx], block.data[idx]
        offsets = evaluation_offsets(residual, with_data, pts, data, structure.layers[-1][2])
        if offsets is None:
            return _BlockPlan("generic", reason="residual evaluates u at points that are not fixed shifts of x")
        if offsets.shape[0] == 1 and float(offsets.abs().max()) == 0:
            offsets = None
        fail = _BlockPlan("generic", reason="residual needs more than the order-2 jets of u at its points")
        theta = theta.detach()
        try:  # rows and values of the order-2 surrogate (zero coefficients drop out of the rows)
            full = _BlockPlan("jet", 2, residual, with_data, offsets=offsets)
            rows, values, coef = self._jet_rows(block, theta, pts, data, full)
        except Exception:  # the residual does not run on a polynomial
            return fail
        direction = torch.randn(theta.shape[0], generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64).to(theta)
        exact_values, exact_dir = jvp(
            lambda th: block.scale * vmap(block.fn, in_dims=(None, 0, 0))(th, pts, data).reshape(-1),
            (theta,), (direction,))
        tol = 1e-9 if theta.dtype == torch.float64 else 1e-4
        scale_v = max(1.0, float(exact_values.abs().max()))
        scale_d = max(1.0, float(exact_dir.abs().max()))
        if ((values - exact_values).abs().max() > tol * scale_v
                or (rows @ direction - exact_dir).abs().max() > tol * scale_d):
            return fail
        # the order needed: the highest jet group with a structurally nonzero coefficient
        d = pts.shape[1]
        order = 2 if bool((coef[..., 1 + d:, :] != 0).any()) else (1 if bool((coef[..., 1:1 + d, :] != 0).any()) else 0)
        return _BlockPlan("jet", order, residual, with_data, offsets=offsets)

    @staticmethod
    def _jets(structure: MLPStructure, theta: torch.Tensor, pts: torch.Tensor, plan: _BlockPlan):
        """Jets at every anchor of the points pts (c, d): (inputs, pre-activations, U (c, K, C, k))."""
        if plan.offsets is None:
            inputs, pres, out = structure.jets(theta, pts, plan.order)
            return inputs, pres, out.unsqueeze(1)
        c, d = pts.shape
        anchors = (pts.unsqueeze(1) + plan.offsets).reshape(-1, d)  # (c·K, d)
        inputs, pres, out = structure.jets(theta, anchors, plan.order)
        return inputs, pres, out.reshape(c, plan.n_anchors, *out.shape[1:])

    @staticmethod
    def _residual_of_jet(plan: _BlockPlan) -> Callable:
        """r(jets (K, C, k), x (d,), y (p,)) -> (q,): the residual of the anchors' polynomials."""
        offsets = plan.offsets

        def r_of_jet(j, x, y):
            anchors = x.unsqueeze(0) if offsets is None else x + offsets
            u = multi_taylor_polynomial(j, anchors, plan.order)
            r = plan.residual(u, x, y) if plan.with_data else plan.residual(u, x)
            return torch.as_tensor(r).reshape(-1)

        return r_of_jet

    def _coefficients(self, plan: _BlockPlan, jet: torch.Tensor, pts: torch.Tensor, data: torch.Tensor):
        """∂r/∂jets (c, q, K, C, k) and the unscaled residual values (c, q) at pts (c, d) from
        the jets (c, K, C, k), in one vmapped call."""
        f = self._residual_of_jet(plan)

        def with_value(j, x, y):
            r = f(j, x, y)
            return r, r

        return vmap(jacrev(with_value, has_aux=True), in_dims=(0, 0, 0))(jet, pts, data)

    def block_coefficients(self, block: Block, theta: torch.Tensor, slab: int = _MAX_CHUNK_POINTS):
        """(∂r/∂jets (n, q, K, C, k), unscaled values (n, q)) at all points of a jet block,
        computed once per block so that each row chunk is only GEMMs and one backward pass."""
        plan, structure = self.plans[block.name], self._structures[block.name]
        coefs, vals = [], []
        with torch.no_grad():
            for i in range(0, block.points.shape[0], slab):
                pts, data = block.points[i:i + slab], block.data[i:i + slab]
                jet = self._jets(structure, theta.detach(), pts, plan)[2]
                c, v = self._coefficients(plan, jet, pts, data)
                coefs.append(c)
                vals.append(v)
        return torch.cat(coefs), torch.cat(vals)

    def block_rows(self, block: Block, theta: torch.Tensor, pts: torch.Tensor, data: torch.Tensor,
                   plan: _BlockPlan | None = None) -> torch.Tensor:
        """Scaled rows of ``block`` at ``pts`` (c, d): shape (c·q, m)."""
        return self.block_rows_and_values(block, theta, pts, data, plan)[0]

    def block_rows_and_values(self, block: Block, theta: torch.Tensor, pts: torch.Tensor,
                              data: torch.Tensor, plan: _BlockPlan | None = None,
                              values: bool = False, coef: torch.Tensor | None = None):
        """(scaled rows (c·q, m), scaled values (c·q,) or None) of ``block`` at ``pts`` (c, d);
        ``coef`` (c, q, K, C, k) from :meth:`block_coefficients` skips their computation (jet
        blocks). For jet blocks the values come from the same jets at no extra cost."""
        plan = plan or self.plans[block.name]
        if plan.kind == "generic":
            g = jac.block_jacobian(block, theta, pts, data)
            vals = block.scale * vmap(block.fn, in_dims=(None, 0, 0))(theta, pts, data).reshape(-1) if values else None
            return g, vals
        with torch.no_grad():
            g, vals, _ = self._jet_rows(block, theta.detach(), pts, data, plan, coef)
        return g, vals

    def _jet_rows(self, block, theta, pts, data, plan, coef=None):
        """(scaled rows (c·q, m), scaled values (c·q,) or None when coef is given, coef)."""
        structure = self._structures[block.name]
        c, d = pts.shape
        inputs, pres, out = self._jets(structure, theta, pts, plan)  # out (c, K, C, k)
        vals = None
        if coef is None:
            coef, vals = self._coefficients(plan, out, pts, data)
            vals = block.scale * vals.reshape(-1)
        q, n_k = coef.shape[1], plan.n_anchors
        # all q cotangents at once: (q, c·K, C, k)
        cot = coef.transpose(0, 1).reshape(q, c * n_k, *out.shape[2:])
        grads = structure.jet_backward(theta, pres, cot, plan.order, d)
        rows = torch.empty(c, q, self.rows.m, dtype=theta.dtype, device=theta.device)
        for (ws, bs, out_f, in_f), g, a in zip(structure.layers, grads, inputs):
            g4 = g.reshape(q, c, -1, out_f)  # (q, c, K·C, out): all anchors and channels of a point
            outer = torch.matmul(g4.transpose(-1, -2), a.reshape(c, -1, in_f))  # (q, c, out, in)
            rows[:, :, ws] = outer.reshape(q, c, -1).transpose(0, 1)
            rows[:, :, bs] = g.reshape(q, c, n_k, -1, out_f)[:, :, :, 0].sum(2).transpose(0, 1)
        rows = rows.reshape(c * q, -1)
        rows.mul_(block.scale)
        return rows, vals, coef


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
    """Yield (row slice, G[slice] (c, m), f[slice] (c,) or None) over all rows: chunks sized per
    block from the budget, each jet block's coefficients computed once for all its points."""
    if points_per_chunk(rows, memory_budget, theta.dtype, theta.device, extra_columns) < 1:
        raise ValueError(
            f"memory budget of {memory_budget} bytes cannot hold the Jacobian rows of one point "
            f"(m = {rows.m} parameters): raise memory_budget or use jacobian_mode='matrix_free'"
        )
    engine = engine or StructuredJacobian(rows, theta)
    start = 0
    for block in rows.blocks:
        chunk = points_per_chunk(rows, memory_budget, theta.dtype, theta.device, extra_columns, block.q)
        plan = engine.plans[block.name]
        coef = vals = None
        if plan.kind == "jet":
            coef, vals = engine.block_coefficients(block, theta)
            vals = block.scale * vals.reshape(-1) if values else None
        for i in range(0, block.points.shape[0], chunk):
            pts, data = block.points[i:i + chunk], block.data[i:i + chunk]
            if plan.kind == "jet":
                g, _ = engine.block_rows_and_values(block, theta, pts, data, plan, coef=coef[i:i + chunk])
                v = vals[i * block.q:(i + pts.shape[0]) * block.q] if values else None
            else:
                g, v = engine.block_rows_and_values(block, theta, pts, data, plan, values=values)
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
def r_factor(a: torch.Tensor) -> torch.Tensor:
    """R of a = Q R (reduced), shape (min(rows, cols), cols)."""
    return torch.linalg.qr(a, mode="r")[1]


def cholesky_qr(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Q (n, l), R (l, l) of a tall a (n, l) by shifted Cholesky-QR3 (Fukaya et al., 2020): three
    passes of Q ← Q·chol(QᵀQ)⁻ᵀ on the column-scaled matrix, the first with a small shift so the
    Cholesky factorization cannot fail. Orthogonal and backward stable to rounding for cond(a) up
    to about 1/eps, using Gram GEMMs and triangular solves instead of a Householder QR (much
    faster on GPUs). None when the shift would be too large (float32 at large sizes), a
    factorization fails or Q is not orthonormal to 1e3·eps·l (the caller then uses Householder QR)."""
    n, l = a.shape
    eps = torch.finfo(a.dtype).eps
    norms = a.norm(dim=0)
    if n < l or not bool((norms > 0).all()):
        return None
    shift = 11 * (n * l + l * (l + 1)) * eps
    if shift > 1e-3:  # float32 at large sizes: the shift would swamp the Gram matrix
        return None
    q = a / norms  # column scaling: the Gram matrix has a unit diagonal
    r = torch.diag(norms)
    for step in range(3):
        gram = q.T @ q
        if step == 0:
            gram.diagonal().add_(shift)
        chol, info = torch.linalg.cholesky_ex(gram)
        if bool(info.any()):
            return None
        q = torch.linalg.solve_triangular(chol.mT, q, upper=True, left=False)  # Q L⁻ᵀ
        r = chol.mT @ r
    gram = q.T @ q
    gram.diagonal().sub_(1)
    if not float(gram.abs().max()) <= 1e3 * eps * l:
        return None
    return q, r


def orthonormalize(y: torch.Tensor, force: bool = False) -> torch.Tensor:
    """An orthonormal basis Q (n, l) of the columns of a tall y (n, l) of full column rank: by
    :func:`cholesky_qr` on GPUs (or with ``force``), else (or when it fails) Householder QR."""
    if y.device.type != "cpu" or force:
        out = cholesky_qr(y)
        if out is not None:
            return out[0]
    return torch.linalg.qr(y)[0]


def fast_r_factor(a: torch.Tensor, force: bool = False) -> torch.Tensor:
    """R (l, l) of a tall a (n ≥ l, l): :func:`cholesky_qr` on GPUs (or with ``force``), else
    Householder QR (:func:`r_factor`)."""
    if (a.device.type != "cpu" or force) and a.shape[0] >= 4 * a.shape[1]:
        out = cholesky_qr(a)
        if out is not None:
            return out[1]
    return r_factor(a)


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
        self.r = fast_r_factor(torch.cat(parts))
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
    engines: tuple | None = field(default=None, repr=False)  # (residual, output) StructuredJacobian


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
        _check_finite(rows, f0)
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

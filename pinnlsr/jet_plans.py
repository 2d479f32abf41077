"""Which residual terms the jets serve, and the training loss on them.

For each term (a :class:`~pinnlsr.residual.Block`) :func:`plan_block` finds the jet channels its
residual reads (:func:`needed_channels`) and the fixed shifts of its point where it reads u, and
admits jets only when values and the gradient of the term's loss equal the generic ``vmap`` path on
a few probe points; otherwise the term takes the generic path and :class:`JetPlan` says why
(third derivatives, u at points that are not fixed shifts of x, a model without jets).
:class:`JetLoss` is the loss ||f(θ)||² = Σ_t w_t·mean|r_t|² and its gradient on these plans (one jet
pass per chunk and a written-out reverse pass), :func:`residual_norm` the residual norm of a
network, both used by training, Gauss–Newton, Iterative LSR and the runners.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import grad_and_value, jacrev, vmap

from .jet_models import LinearizedJets, ShiftedJets, jet_network
from .jets import Channels, JetNetwork, TaylorJet, all_pairs, anchor_call_order, evaluation_offsets, probe_indices
from .models import ParamSpec
from .residual import Block, Rows, point_function

#: points per jet pass of the loss: fewer, larger passes cost fewer dispatches; 4,096 was fastest on
#: burgers1d, kovasznay, lid_driven and allen_cahn1d (1 CPU thread, malloc set by
#: pinnlsr.allocator), and a chunk's jets stay a few megabytes per layer
JET_CHUNK_POINTS = 4096


# ----------------------------------------------------------------------------------------------
# Per-term plans
# ----------------------------------------------------------------------------------------------
@dataclass
class JetPlan:
    """How one residual term is evaluated: ``kind`` "jet" (with its channels and the fixed shifts
    ``offsets`` (K, d) of the points where the residual reads u, None for the point itself) or
    "generic" (``reason`` says why)."""

    kind: str
    channels: Channels | None = None
    residual: Callable | None = None
    with_data: bool = False
    offsets: torch.Tensor | None = None
    reason: str = ""
    call_anchors: tuple[int, ...] | None = None

    def residual_of_jet(self) -> Callable:
        """r(jets (K, C_full, k), x (d,), y (p,)) -> (q,) of this plan (:func:`residual_of_jet`)."""
        return residual_of_jet(self.residual, self.with_data, self.offsets, self.order, self.call_anchors)

    @property
    def n_anchors(self) -> int:
        return 1 if self.offsets is None else self.offsets.shape[0]

    @property
    def order(self) -> int:
        """The highest derivative order the term reads (0, 1 or 2; jet plans only)."""
        return self.channels.order

    def describe(self, names: tuple[str, ...] | None = None) -> str:
        if self.kind != "jet":
            return f"generic: {self.reason}"
        text = f"jet({self.channels.describe(names)})"
        return text + (f" at {self.n_anchors} shifted points" if self.n_anchors > 1 else "")


def residual_of_jet(residual: Callable, with_data: bool, offsets: torch.Tensor | None, order: int = 2,
                    call_anchors: tuple[int, ...] | None = None) -> Callable:
    """r(jets (K, C, k), x (d,), y (p,)) -> (q,): the residual evaluated on u seen through its
    jets at the anchors x + offsets (x itself when None) by :class:`TaylorJet`, exact in value and
    derivatives up to ``order`` at each anchor. Jets in the layout of order 2 (channels above
    ``order`` are not read). ``call_anchors``: the anchor of each read u(y), in the order of the
    reads (:func:`anchor_call_order`); None to pick the nearest anchor at each read."""
    x_is_anchor = offsets is None or float(offsets[0].abs().max()) == 0

    def r_of_jet(j, x, y):
        anchors = x.unsqueeze(0) if offsets is None else x + offsets
        u = TaylorJet(j, anchors, x, x_is_anchor, order, call_anchors)
        r = residual(u, x, y) if with_data else residual(u, x)
        return torch.as_tensor(r).reshape(-1)

    return r_of_jet


def block_parts(block: Block) -> tuple[Callable | None, nn.Module | None, bool]:
    """(per-point residual, model, with_data) of a block made by :mod:`pinnlsr.residual`
    (None, None, False for a block function written by hand: no jets for it)."""
    return block.residual, block.model, block.with_data


def needed_channels(r_of_jet: Callable, points: torch.Tensor, data: torch.Tensor, n_anchors: int,
                    k: int) -> Channels:
    """The channels whose coefficient ∂r/∂jet is nonzero at random jets on the probe ``points``
    (c, d): a structurally zero coefficient stays zero, one that vanishes by chance at the
    network's own jets does not."""
    c, d = points.shape
    n_full = Channels.full(d, 2).size
    gen = torch.Generator().manual_seed(12345)
    jets = torch.randn(c, n_anchors, n_full, k, generator=gen, dtype=torch.float64).to(points)
    coef = vmap(jacrev(r_of_jet))(jets, points, data)  # (c, q, K, C_full, k)
    used = coef.abs().amax(dim=(0, 1, 2, 4)) > 0  # (C_full,)
    pairs = [p for i, p in enumerate(all_pairs(d)) if bool(used[1 + d + i])]
    first = sorted({j for j in range(d) if bool(used[1 + j])} | {j for p in pairs for j in p})
    return Channels(d, tuple(first), tuple(pairs))


def plan_block(block: Block, net, theta: torch.Tensor, n_probe: int = 3) -> JetPlan:
    """The :class:`JetPlan` of one block, checked on a few probe points against the generic
    evaluation: values and the gradient of the term's loss must agree to rounding."""
    residual, _, with_data = block_parts(block)
    if residual is None:
        return JetPlan("generic", reason="block function not made by pinnlsr.residual")
    if net is None:
        return JetPlan("generic", reason="model is not an MLP (Linear + tanh/sin, optional input map)")
    idx = probe_indices(block.points.shape[0], n_probe).to(block.points.device)
    pts, data = block.points[idx], block.data[idx]
    offsets = evaluation_offsets(residual, with_data, pts, data, net.n_outputs)
    if offsets is None:
        return JetPlan("generic", reason="residual evaluates u at points that are not fixed shifts of x")
    if offsets.shape[0] == 1 and float(offsets.abs().max()) == 0:
        offsets = None
    r_of_jet = residual_of_jet(residual, with_data, offsets)
    try:
        channels = needed_channels(r_of_jet, pts, data, 1 if offsets is None else offsets.shape[0], net.n_outputs)
    except Exception as exc:  # the residual does not run on a polynomial
        return JetPlan("generic", reason=f"residual does not run on a Taylor polynomial ({type(exc).__name__})")
    call_anchors = None if offsets is None else anchor_call_order(residual, with_data, pts, data, offsets,
                                                                   net.n_outputs)
    plan = JetPlan("jet", channels, residual, with_data, offsets, call_anchors=call_anchors)
    block, net, theta = _check_setting(block, net, theta.detach())
    if not _agrees_with_generic(plan, block, net, theta, pts, data):
        return JetPlan("generic", reason="residual needs more than the order-2 jets of u at its points")
    return plan


def _check_setting(block: Block, net, theta: torch.Tensor):
    """(block, jets, θ) on which a plan is checked. The correction J·V·z of the predictor and the
    shifted network does not change which channels a residual reads, but along a basis scaled by
    1/σ it (and the gradient in z) is computed with large cancellation on every path: their plans
    are checked on the base network at θ0."""
    if isinstance(net, (LinearizedJets, ShiftedJets)):
        base = block.model.base if isinstance(net, LinearizedJets) else block.model.net
        spec = ParamSpec.of(base) if isinstance(net, ShiftedJets) else block.model.spec
        fn = point_function(base, spec, block.residual, block.name, block.with_data)
        return dataclasses.replace(block, fn=fn, model=base), net.base, net.theta0
    return block, net, theta


def _agrees_with_generic(plan: JetPlan, block: Block, net, theta: torch.Tensor, pts: torch.Tensor,
                         data: torch.Tensor) -> bool:
    """Values and the gradient of the term's loss at the probe points pts (c, d) by jets equal
    those of the generic path to rounding."""
    try:
        loss, grad, values = _jet_block_loss(net, plan, block, theta, pts, data, with_values=True)
    except Exception:
        return False
    with torch.enable_grad():  # callers may run under no_grad
        th = theta.clone().requires_grad_(True)
        exact = block.scale * vmap(block.fn, in_dims=(None, 0, 0))(th, pts, data).reshape(-1)
        exact_grad, = torch.autograd.grad(exact.square().sum(), th)
        exact = exact.detach()
    tol = 1e-9 if theta.dtype == torch.float64 else 1e-4
    v_scale = max(1.0, float(exact.abs().max()))
    g_scale = max(1e-300, float(exact_grad.abs().max()))
    return (float((values - exact).abs().max()) <= tol * v_scale
            and float((grad - exact_grad).abs().max()) <= tol * max(g_scale, 1e-12 * v_scale))


def block_anchors(plan: JetPlan, pts: torch.Tensor) -> torch.Tensor:
    """The points (c·K, d) where a block's residual reads u: each point's K anchors in a row."""
    return pts if plan.offsets is None else (pts.unsqueeze(1) + plan.offsets).reshape(-1, pts.shape[1])


def block_jets(net, plan: JetPlan, theta: torch.Tensor, pts: torch.Tensor, keep: bool = False,
               inputs: torch.Tensor | None = None):
    """(jets (c, K, C_full, k) at the anchors of pts (c, d) in the full order-2 layout, with
    zeros in the channels the plan does not propagate; the reverse-pass state with ``keep``).
    ``inputs``: the network's input jets at the anchors, when already computed."""
    ch = plan.channels
    c, d = pts.shape
    out = net.forward(theta, block_anchors(plan, pts), ch, keep=keep, inputs=inputs)  # (k, C, c·K)
    out, state = out if keep else (out, None)
    k = out.shape[0]
    full = out.new_zeros(c, plan.n_anchors, Channels.full(d, 2).size, k)
    full[:, :, ch.full_index()] = out.permute(2, 1, 0).reshape(c, plan.n_anchors, ch.size, k)
    return full, state


def _jet_block_loss(net: JetNetwork, plan: JetPlan, block: Block, theta: torch.Tensor, pts: torch.Tensor,
                    data: torch.Tensor, with_values: bool = False, grad: torch.Tensor | None = None,
                    inputs: torch.Tensor | None = None):
    """(scale²·Σ|r|² over pts (c, d), its gradient in θ (m,), scaled values (c·q,) or None)."""
    ch = plan.channels
    c, n_k = pts.shape[0], plan.n_anchors
    full, state = block_jets(net, plan, theta, pts, keep=True, inputs=inputs)
    k, idx = full.shape[-1], ch.full_index()
    r_of_jet = plan.residual_of_jet()
    s2 = block.scale ** 2

    def sq(j, x, y):
        r = r_of_jet(j, x, y)
        return r.square().sum(), r

    gsq, (sqv, r) = vmap(grad_and_value(sq, has_aux=True))(full, pts, data)
    grad = torch.zeros_like(theta) if grad is None else grad
    cot = (s2 * gsq[:, :, idx]).permute(3, 2, 0, 1).reshape(k, ch.size, c * n_k)
    net.backward(theta, state, cot, ch, grad)
    values = block.scale * r.reshape(-1) if with_values else None
    return s2 * sqv.sum(), grad, values


# ----------------------------------------------------------------------------------------------
# The training loss
# ----------------------------------------------------------------------------------------------
class JetLoss:
    """The loss ||f(θ)||² = Σ_t w_t·mean|r_t|² of ``rows`` and its gradient, by jets where the
    model and the term allow it and by ``vmap`` + autograd elsewhere.

    Args:
        rows: the stacked residual (:func:`pinnlsr.residual.residual_rows`).
        model: the network the rows were built on (its structure decides whether jets apply).
        theta: parameters at which the plans are checked (m,).
        mode: "auto" (jets where they apply) or "generic" (vmap + autograd everywhere).
    """

    def __init__(self, rows: Rows, model: nn.Module, theta: torch.Tensor, mode: str = "auto",
                 chunk_points: int = JET_CHUNK_POINTS):
        if mode not in ("auto", "generic"):
            raise ValueError(f"loss mode must be 'auto' or 'generic', got {mode!r}")
        self.rows, self.chunk_points = rows, chunk_points
        self.net = jet_network(model, rows.spec) if mode == "auto" else None
        self._inputs: dict[tuple[str, int], torch.Tensor] = {}  # input jets per chunk: the points are fixed
        self.plans: dict[str, JetPlan] = {}
        for block in rows.blocks:
            if mode == "generic":
                self.plans[block.name] = JetPlan("generic", reason="mode='generic'")
            else:
                self.plans[block.name] = plan_block(block, self.net, theta)

    @property
    def backends(self) -> dict[str, str]:
        """{term: "jet(u,u_x,...)" or "generic: why"}."""
        return {name: plan.describe() for name, plan in self.plans.items()}

    def _chunks(self):
        """Yield (block, plan, points (c, d), data (c, p), input jets or None) over every term in
        chunks of ``chunk_points`` points."""
        for block in self.rows.blocks:
            plan = self.plans[block.name]
            for i in range(0, block.points.shape[0], self.chunk_points):
                pts, data = block.points[i:i + self.chunk_points], block.data[i:i + self.chunk_points]
                inputs = self._input_jets(block.name, i, plan, pts) if plan.kind == "jet" else None
                yield block, plan, pts, data, inputs

    def value_and_grad(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss (0-d tensor), gradient (m,)) at θ (m,); no autograd graph is kept."""
        theta = theta.detach()
        grad = torch.zeros_like(theta)
        loss = theta.new_zeros(())
        for block, plan, pts, data, inputs in self._chunks():
            if plan.kind == "jet":
                part = _jet_block_loss(self.net, plan, block, theta, pts, data, grad=grad, inputs=inputs)[0]
            else:
                th = theta.clone().requires_grad_(True)
                part = block.scale ** 2 * vmap(block.fn, in_dims=(None, 0, 0))(th, pts, data).square().sum()
                grad += torch.autograd.grad(part, th)[0]
            loss = loss + part.detach()
        return loss, grad

    def _input_jets(self, name: str, start: int, plan: JetPlan, pts: torch.Tensor) -> torch.Tensor:
        """The network's input jets at a chunk's anchors, computed once (a feature map's
        derivatives cost more than the chunk's network pass)."""
        key = (name, start)
        if key not in self._inputs:
            self._inputs[key] = self.net.input_jets(block_anchors(plan, pts), plan.channels)
        return self._inputs[key]

    def values(self, theta: torch.Tensor) -> torch.Tensor:
        """The stacked scaled residual f(θ), shape (n_rows,), without gradients."""
        theta = theta.detach()
        parts = []
        with torch.no_grad():
            for block, plan, pts, data, inputs in self._chunks():
                if plan.kind == "jet":
                    parts.append(_jet_block_values(self.net, plan, block, theta, pts, data, inputs))
                else:
                    parts.append(block.scale * vmap(block.fn, in_dims=(None, 0, 0))(theta, pts, data).reshape(-1))
        return torch.cat(parts)


def _jet_block_values(net: JetNetwork, plan: JetPlan, block: Block, theta: torch.Tensor, pts: torch.Tensor,
                      data: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled values (c·q,) of a jet block at pts (c, d)."""
    full = block_jets(net, plan, theta, pts, inputs=inputs)[0]
    r = vmap(plan.residual_of_jet())(full, pts, data)
    return block.scale * r.reshape(-1)


def residual_norm(problem, module: nn.Module, points: dict[str, torch.Tensor], check: bool = False) -> float:
    """||f|| of ``module`` on ``problem`` at ``points`` ({term: (n, d)}), by jets where they
    apply; inf when the network or its residual is not finite, or with ``check`` the
    FloatingPointError that names the term."""
    from .residual import residual_rows

    try:
        rows = residual_rows(problem, module, points)
    except FloatingPointError:
        if check:
            raise
        return math.inf
    theta = ParamSpec.of(module).flatten(module)
    n = float(torch.linalg.vector_norm(JetLoss(rows, module, theta).values(theta)))
    if not math.isfinite(n) and check:
        rows.values(theta)  # raises the error that names the term
    return n if math.isfinite(n) else math.inf
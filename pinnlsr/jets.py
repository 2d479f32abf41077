"""Jets of MLPs with only the derivative channels a residual needs, and the training loss on them.

A residual that depends on u only through its value and derivatives up to order 2 at the point
itself (or at fixed shifts of it) is a function r(J(x)) of the network's jet J(x): the value, the
first derivatives ∂u/∂x_j and the second derivatives ∂²u/∂x_j∂x_k that it reads. Burgers' residual
u_t + u u_x - ν u_xx reads four of the six order-2 channels of a 2-D input; a Dirichlet condition
reads the value alone. This module

- finds those channels per residual term (:class:`Channels`, :func:`needed_channels`) by
  differentiating the residual, evaluated on the local Taylor polynomial of u, at random jets;
- propagates exactly those channels through the network as batched GEMMs (:class:`JetNetwork`),
  through an affine input scaling or a fixed input feature map (e.g. a periodic cos/sin embedding);
- has a written-out reverse pass that forms each layer's weight gradient as one GEMM, so the
  training loss Σ_t w_t·mean|r_t|² and its gradient need no autograd graph over the network and no
  per-point parameter Jacobians (:class:`pinnlsr.jet_plans.JetLoss`), and every Jacobian row comes
  from one pass with q cotangents (:mod:`pinnlsr.engine`).

Which terms the jets serve, and why the others fall back to the generic ``vmap`` path, is decided
in :mod:`pinnlsr.jet_plans`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import jacfwd, vmap

from .models import MLP, Sine

# ----------------------------------------------------------------------------------------------
# Channels
# ----------------------------------------------------------------------------------------------
def all_pairs(d: int) -> list[tuple[int, int]]:
    """The upper-triangle pairs (j, k), j <= k, in the order of the full order-2 jet."""
    return [(j, k) for j in range(d) for k in range(j, d)]


@dataclass(frozen=True)
class Channels:
    """Which jet channels are propagated: the value, first derivatives along ``first`` and second
    derivatives for ``pairs`` ((j, k) with j <= k). Every dimension of a pair is in ``first``."""

    d: int
    first: tuple[int, ...] = ()
    pairs: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        need = {j for pair in self.pairs for j in pair}
        if not need <= set(self.first):
            raise ValueError(f"Channels: pairs {self.pairs} need first-derivative channels {sorted(need)}")

    @classmethod
    def full(cls, d: int, order: int) -> "Channels":
        """Every channel up to ``order`` (0, 1 or 2)."""
        return cls(d, tuple(range(d)) if order >= 1 else (), tuple(all_pairs(d)) if order >= 2 else ())

    @property
    def size(self) -> int:
        return 1 + len(self.first) + len(self.pairs)

    @property
    def order(self) -> int:
        return 2 if self.pairs else (1 if self.first else 0)

    def full_index(self) -> list[int]:
        """Positions of these channels in the full order-2 layout (value, d firsts, pairs)."""
        pair_pos = {p: 1 + self.d + i for i, p in enumerate(all_pairs(self.d))}
        return [0] + [1 + j for j in self.first] + [pair_pos[p] for p in self.pairs]

    def describe(self, names: tuple[str, ...] | None = None) -> str:
        names = names or tuple(f"x{j}" for j in range(self.d))
        parts = ["u"] + [f"u_{names[j]}" for j in self.first] + [f"u_{names[j]}{names[k]}" for j, k in self.pairs]
        return ",".join(parts)


# ----------------------------------------------------------------------------------------------
# u seen through its jets
# ----------------------------------------------------------------------------------------------
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


def multi_taylor_polynomial(jets: torch.Tensor, anchors: torch.Tensor, order: int) -> Callable:
    """u(y) ≈ the Taylor polynomial (:func:`taylor_polynomial`) of the anchor nearest to y, for jets
    (K, C, k) at anchors (K, d): exact in value and derivatives up to ``order`` at every anchor."""
    if anchors.shape[0] == 1:
        return taylor_polynomial(jets[0], anchors[0], order)
    ids = torch.arange(anchors.shape[0], device=anchors.device)

    def u(y: torch.Tensor) -> torch.Tensor:
        # one-hot (K,), piecewise constant in y: the nearest anchor's jet and position, gathered by
        # products (an index would not pass vmap), then one polynomial instead of K per call
        pick = (ids == ((y - anchors) ** 2).sum(-1).argmin()).to(jets.dtype)
        return taylor_polynomial(torch.tensordot(pick, jets, dims=1), pick @ anchors, order)(y)

    return u


def shift_tolerance(points: torch.Tensor) -> float:
    """How far apart two points (c, d) may lie and count as the same shift: rounding of their dtype."""
    scale = 1.0 + float(points.abs().max())
    return 1e-9 * scale if points.dtype == torch.float64 else 1e-4 * scale


def evaluation_offsets(residual: Callable, with_data: bool, points: torch.Tensor, data: torch.Tensor,
                       k: int) -> torch.Tensor | None:
    """The shifts o (K, d) such that ``residual`` at a point x evaluates u exactly at x + o_1, ...,
    x + o_K, found by running it once per probe point (points (c, d), data (c, p)) with a recording
    u. None when the shifts are not the same at every probe (u at points that are not fixed shifts
    of x, e.g. a reflection) or the residual does not run outside ``vmap``."""
    found = None
    tol = shift_tolerance(points)
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




class TaylorJet:
    """u for a residual evaluated on jets: the Taylor polynomials of u at the anchors (x itself
    first when the residual reads u there), plus a shortcut for :mod:`pinnlsr.operators`: at the
    residual's own point x, ``value``/``partial``/``gradient``/``hessian``/``laplacian`` read the
    channel directly (:meth:`jet_at`) instead of differentiating the polynomial.

    Shapes: jets (K, C, k) in the layout of ``order`` (value, then d firsts for order >= 1, then
    the upper-triangle pairs for order 2), anchors (K, d)."""

    def __init__(self, jets: torch.Tensor, anchors: torch.Tensor, x: torch.Tensor, x_is_anchor: bool,
                 order: int = 2, call_anchors: tuple[int, ...] | None = None):
        self.jets, self.anchors, self.x, self.x_is_anchor, self.order = jets, anchors, x, x_is_anchor, order
        self.d = anchors.shape[1]
        self.call_anchors, self.calls = call_anchors, 0
        self.poly = multi_taylor_polynomial(jets, anchors, order) if call_anchors is None else None

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if y is self.x and self.x_is_anchor:
            return self.jets[0, 0]
        if self.call_anchors is None:
            return self.poly(y)
        # the anchor of this call is known from the plan (:func:`anchor_call_order`): the same
        # polynomial the nearest-anchor search picks, without a search per call
        if self.calls >= len(self.call_anchors):
            raise RuntimeError(f"the residual read u {self.calls + 1} times; its plan recorded "
                               f"{len(self.call_anchors)} reads")
        a = self.call_anchors[self.calls]
        self.calls += 1
        return taylor_polynomial(self.jets[a], self.anchors[a], self.order)(y)

    def jet_at(self, x: torch.Tensor, component: int | None, dims: tuple[int, ...]) -> torch.Tensor | None:
        """∂^|dims| u_component / ∂x_dims at the residual's point (all k outputs when
        ``component`` is None), or None (not that point, or a derivative of order above the
        jet's: the caller differentiates instead)."""
        if x is not self.x or not self.x_is_anchor or len(dims) > self.order:
            return None
        d = self.d
        if not dims:
            channel = 0
        elif len(dims) == 1:
            channel = 1 + dims[0]
        else:
            j, k = sorted(dims)
            channel = 1 + d + j * d - j * (j - 1) // 2 + (k - j)
        return self.jets[0, channel] if component is None else self.jets[0, channel, component]


class _AnchorRecorder(TaylorJet):
    """A :class:`TaylorJet` that records, per read u(y) that is not the shortcut at x, the index
    of the anchor at y (None when y is no anchor)."""

    def __init__(self, *args, tol: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.tol, self.read = tol, []

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if not (y is self.x and self.x_is_anchor):
            dist = (y.detach() - self.anchors).abs().amax(-1)
            a = int(dist.argmin())
            self.read.append(a if float(dist[a]) <= self.tol else None)
        return super().__call__(y)


def anchor_call_order(residual: Callable, with_data: bool, points: torch.Tensor, data: torch.Tensor,
                      offsets: torch.Tensor, k: int) -> tuple[int, ...] | None:
    """The anchor x + offsets[a] that each read u(y) of ``residual`` evaluated on jets takes, in
    the order of the reads, found on the probe points (c, d) with data (c, p); None when the
    order is not the same at every probe, a read falls between anchors or the residual does not
    run outside ``vmap``. Under ``vmap`` a residual reads u in one order at every point, so the
    order seen at the probes holds everywhere (and the plan's check against the generic path
    confirms it)."""
    d, tol = points.shape[1], shift_tolerance(points)
    x_is_anchor = float(offsets[0].abs().max()) == 0
    gen = torch.Generator().manual_seed(12345)
    found = None
    for x, y in zip(points, data):
        jets = torch.randn(offsets.shape[0], Channels.full(d, 2).size, k, generator=gen,
                           dtype=torch.float64).to(points)
        u = _AnchorRecorder(jets, x + offsets, x, x_is_anchor, tol=tol)
        try:
            residual(u, x, y) if with_data else residual(u, x)
        except Exception:
            return None
        if None in u.read or (found is not None and tuple(u.read) != found):
            return None
        found = tuple(u.read)
    return found


# ----------------------------------------------------------------------------------------------
# Jets through an MLP
# ----------------------------------------------------------------------------------------------
def mlp_layout(model: nn.Module, spec) -> tuple | None:
    """(layers, activation, input shift, input scale) of a pinnlsr MLP or an nn.Sequential of
    Linear layers with Tanh or Sine between them, else None. ``layers`` holds (weight slice, bias
    slice, out features, in features) of each Linear layer in the flat θ of ``spec``."""
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
        if (i % 2 == 0) != isinstance(mod, nn.Linear):
            return None
        if isinstance(mod, nn.Linear):
            w, b = f"{prefix}{name}.weight", f"{prefix}{name}.bias"
            if mod.bias is None or w not in offsets or b not in offsets:
                return None
            layers.append((offsets[w], offsets[b], mod.out_features, mod.in_features))
            used |= {w, b}
        elif isinstance(mod, nn.Tanh):
            acts.add("tanh")
        elif isinstance(mod, Sine):
            acts.add("sin")
        else:
            return None
    if len(acts) > 1 or not layers or used != set(spec.names) or not isinstance(mods[-1][1], nn.Linear):
        return None
    return (layers, acts.pop() if acts else "tanh", getattr(model, "input_shift", None),
            getattr(model, "input_scale", None))


def probe_indices(n: int, n_probe: int) -> torch.Tensor:
    """First, last and evenly spread indices of n points (so a piecewise residual is seen)."""
    return torch.linspace(0, n - 1, min(n, n_probe)).round().long().unique()


class JetNetwork:
    """An MLP (Linear layers with one activation, tanh or sin, between them) after a fixed input
    map, seen through the flat parameter vector θ.

    Args:
        layers: (weight slice, bias slice, out features, in features) of each Linear layer in θ.
        activation: "tanh" or "sin".
        input_map: "affine" (x̃ = (x - shift)·scale, identity when both are None) or a callable
            φ: (d,) -> (in,) for one point (a fixed feature map, no parameters).
    """

    def __init__(self, layers, activation: str, shift: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None, feature_map: Callable | None = None):
        self.layers = layers
        self.activation = activation
        self.shift, self.scale = shift, scale
        self.feature_map = feature_map

    @property
    def n_outputs(self) -> int:
        return self.layers[-1][2]

    def _act(self, h: torch.Tensor, third: bool):
        if self.activation == "tanh":
            t = torch.tanh(h)
            s1 = 1 - t * t
            s2 = -2 * t * s1
            return t, s1, s2, (-2 * (s1 * s1 + t * s2) if third else None)
        s, c = torch.sin(h), torch.cos(h)
        return s, c, -s, (-c if third else None)

    def _act_into(self, h: torch.Tensor, out: torch.Tensor, third: bool):
        """σ(h) written into ``out``; returns (σ', σ'', σ''' or None), computed in place."""
        if self.activation == "tanh":
            t = torch.tanh(h, out=out)  # (2σ(2h) - 1 is faster on the CPU but 3x less accurate)
            s1 = torch.mul(t, t).neg_().add_(1)
            s2 = torch.mul(t, s1).mul_(-2)
            return s1, s2, (torch.mul(s1, s1).addcmul_(t, s2).mul_(-2) if third else None)
        torch.sin(h, out=out)
        s1 = torch.cos(h)
        return s1, torch.neg(out), (torch.neg(s1) if third else None)

    def input_jets(self, x: torch.Tensor, ch: Channels) -> torch.Tensor:
        """Jets (in, C, c) of the first layer's input at points x (c, d): feature, channel, point."""
        c, d = x.shape
        if self.feature_map is None:
            xs = x if self.shift is None else (x - self.shift) * self.scale
            out = x.new_zeros(d, ch.size, c)
            out[:, 0] = xs.T
            for i, j in enumerate(ch.first):
                out[j, 1 + i] = 1.0 if self.scale is None else self.scale[j]
            return out
        phi = self.feature_map
        parts = [vmap(phi)(x).T.unsqueeze(1)]
        if ch.first:
            jac = vmap(jacfwd(phi))(x)  # (c, in, d)
            parts.append(jac[:, :, list(ch.first)].permute(1, 2, 0))
        if ch.pairs:
            hess = vmap(jacfwd(jacfwd(phi)))(x)  # (c, in, d, d)
            parts.append(torch.stack([hess[:, :, j, k].T for j, k in ch.pairs], 1))
        return torch.cat(parts, 1)

    def forward(self, theta: torch.Tensor, x: torch.Tensor, ch: Channels, keep: bool = False,
                inputs: torch.Tensor | None = None):
        """Output jets (k, C, c) at points x (c, d) (output, channel, point); with ``keep`` also
        the state that :meth:`backward` needs (each layer's input jets, each hidden
        pre-activation, the activation's derivatives there and the products of first-derivative
        channels). Without ``keep`` differentiable (forward and reverse mode) in θ; with ``keep``
        computed in place for the written-out reverse pass. ``inputs``: :meth:`input_jets` of x,
        when already computed.

        Layout: feature-major, so every layer is one GEMM W·A over all channels and points."""
        a = self.input_jets(x, ch) if inputs is None else inputs
        if keep:
            return self._forward_keep(theta, a, ch)
        nf, n_ch = len(ch.first), ch.size
        idx = None
        if ch.pairs:
            pos = {j: i for i, j in enumerate(ch.first)}
            idx = (torch.tensor([pos[j] for j, _ in ch.pairs], device=x.device),
                   torch.tensor([pos[k] for _, k in ch.pairs], device=x.device))
        last = len(self.layers) - 1
        for li, (ws, bs, out_f, in_f) in enumerate(self.layers):
            c = a.shape[-1]
            h = torch.mm(theta[ws].view(out_f, in_f), a.reshape(in_f, -1)).view(out_f, n_ch, c)
            h[:, 0] += theta[bs].unsqueeze(1)
            if li == last:
                return h
            t, s1, s2, _ = self._act(h[:, 0], third=False)
            s1u = s1.unsqueeze(1)
            parts = [t.unsqueeze(1)]
            if nf:
                h1 = h[:, 1:1 + nf]
                parts.append(h1 * s1u)
            if ch.pairs:
                parts.append(h[:, 1 + nf:] * s1u + h1.index_select(1, idx[0]) * h1.index_select(1, idx[1]) * s2.unsqueeze(1))
            a = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        raise AssertionError("unreachable")

    def _forward_keep(self, theta: torch.Tensor, a: torch.Tensor, ch: Channels):
        """:meth:`forward` with ``keep``, in place: (output jets (k, C, c), state)."""
        nf = len(ch.first)
        pos = {j: i for i, j in enumerate(ch.first)}
        pairs = [(1 + pos[j], 1 + pos[k]) for j, k in ch.pairs]  # channel indices of the two factors
        inputs, acts = [], []
        last = len(self.layers) - 1
        for li, (ws, bs, out_f, in_f) in enumerate(self.layers):
            c = a.shape[-1]
            h = torch.mm(theta[ws].view(out_f, in_f), a.reshape(in_f, -1)).view(out_f, ch.size, c)
            h[:, 0] += theta[bs].unsqueeze(1)
            inputs.append(a)
            if li == last:
                return h, (inputs, acts, pairs)
            a = torch.empty_like(h)
            s1, s2, s3 = self._act_into(h[:, 0], a[:, 0], third=bool(pairs))
            s1u = s1.unsqueeze(1)
            if nf:
                torch.mul(h[:, 1:1 + nf], s1u, out=a[:, 1:1 + nf])
            products = []  # h_j·h_k of each pair, for the reverse pass
            if pairs:
                torch.mul(h[:, 1 + nf:], s1u, out=a[:, 1 + nf:])
                for p, (j, k) in enumerate(pairs):
                    products.append(torch.mul(h[:, j], h[:, k]))
                    a[:, 1 + nf + p].addcmul_(products[-1], s2)
            acts.append((h, s1, s2, s3, products))
        raise AssertionError("unreachable")

    def layer_cotangents(self, theta: torch.Tensor, state, cot: torch.Tensor, ch: Channels) -> list[torch.Tensor]:
        """The cotangents (..., out_l, C, c) of every layer's pre-activation jets for a cotangent
        ``cot`` (..., k, C, c) of the output jets (leading dimensions: several at once), given the
        ``state`` of :meth:`forward` with ``keep=True``. Written out, no autograd."""
        _, acts, pairs = state
        nf = len(ch.first)
        g = cot
        grads = [g]
        for li in range(len(self.layers) - 1, 0, -1):
            ws, _, out_f, in_f = self.layers[li]
            lead, c = g.shape[:-3], g.shape[-1]
            abar = torch.matmul(theta[ws].view(out_f, in_f).T, g.reshape(*lead, out_f, ch.size * c))
            abar = abar.view(*lead, in_f, ch.size, c)  # cotangent of the activation jets
            h, s1, s2, s3, products = acts[li - 1]
            s1u = s1.unsqueeze(1)
            g = torch.empty_like(abar)
            g0 = torch.mul(abar[..., 0, :], s1, out=g[..., 0, :])
            if nf:
                # σ'' multiplies Σ_f ā_f·h_f (first channels) + Σ_p ā_p·h_p (pair channels)
                acc = abar[..., 1, :] * h[:, 1]
                for f in range(2, 1 + nf + len(pairs)):
                    acc.addcmul_(abar[..., f, :], h[:, f])
                if pairs:
                    acc3 = None  # σ''' multiplies Σ_p ā_p·h_j·h_k
                    for p, prod in enumerate(products):
                        acc3 = abar[..., 1 + nf + p, :] * prod if acc3 is None else acc3.addcmul_(abar[..., 1 + nf + p, :], prod)
                    g0.addcmul_(acc3, s3)
                g0.addcmul_(acc, s2)
                torch.mul(abar[..., 1:1 + nf, :], s1u, out=g[..., 1:1 + nf, :])
                if pairs:
                    for p, (j, k) in enumerate(pairs):
                        t2 = abar[..., 1 + nf + p, :] * s2
                        g[..., j, :].addcmul_(t2, h[:, k])
                        g[..., k, :].addcmul_(t2, h[:, j])
                    torch.mul(abar[..., 1 + nf:, :], s1u, out=g[..., 1 + nf:, :])
            grads.append(g)
        return grads[::-1]

    def backward(self, theta: torch.Tensor, state, cot: torch.Tensor, ch: Channels,
                 grad: torch.Tensor) -> None:
        """Add to ``grad`` (m,) the gradient in θ of Σ cot · (output jets), for cot (k, C, c) and
        the ``state`` of :meth:`forward` with ``keep=True``: each layer's weight gradient is one
        GEMM contracting over channels and points."""
        inputs = state[0]
        for (ws, bs, out_f, in_f), g, a in zip(self.layers, self.layer_cotangents(theta, state, cot, ch), inputs):
            grad[ws].view(out_f, in_f).addmm_(g.reshape(out_f, -1), a.reshape(in_f, -1).T)
            grad[bs] += g[:, 0].sum(-1)

    def point_rows(self, theta: torch.Tensor, state, cot: torch.Tensor, ch: Channels, n_anchors: int,
                   m: int) -> torch.Tensor:
        """Per-point gradients (q, c, m) of Σ_{channels, anchors} cot · (output jets) for q
        cotangents cot (q, k, C, c·K) (K = ``n_anchors`` anchors per point, anchor-minor): the
        Jacobian rows of a residual whose coefficients ∂r/∂jet are ``cot``."""
        q, n_pts = cot.shape[0], cot.shape[-1] // n_anchors
        rows = theta.new_empty(q, n_pts, m)
        for (ws, bs, out_f, in_f), g, a in zip(self.layers, self.layer_cotangents(theta, state, cot, ch), state[0]):
            g5 = g.reshape(q, out_f, ch.size, n_pts, n_anchors)
            a4 = a.reshape(in_f, ch.size, n_pts, n_anchors)
            rows[:, :, ws] = torch.einsum("qocpk,icpk->qpoi", g5, a4).reshape(q, n_pts, -1)
            rows[:, :, bs] = g5[:, :, 0].sum(-1).transpose(1, 2)
        return rows

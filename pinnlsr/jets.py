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
from torch.func import jacfwd, jacrev, jvp, vmap

from .models import MLP, LinearizedModel, ParamSpec, ShiftedNetwork, Sine

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




class TaylorJet:
    """u for a residual evaluated on jets: the Taylor polynomials of u at the anchors (x itself
    first when the residual reads u there), plus a shortcut for :mod:`pinnlsr.operators`: at the
    residual's own point x, ``value``/``partial``/``gradient``/``hessian``/``laplacian`` read the
    channel directly (:meth:`jet_at`) instead of differentiating the polynomial.

    Shapes: jets (K, C, k) in the layout of ``order`` (value, then d firsts for order >= 1, then
    the upper-triangle pairs for order 2), anchors (K, d)."""

    def __init__(self, jets: torch.Tensor, anchors: torch.Tensor, x: torch.Tensor, x_is_anchor: bool,
                 order: int = 2):
        self.jets, self.x, self.x_is_anchor, self.order = jets, x, x_is_anchor, order
        self.d = anchors.shape[1]
        self.poly = multi_taylor_polynomial(jets, anchors, order)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if y is self.x and self.x_is_anchor:
            return self.jets[0, 0]
        return self.poly(y)

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


def jet_network(model: nn.Module, spec: ParamSpec):
    """The jets of ``model`` as a function of its flat parameters (``spec``): a pinnlsr
    :class:`~pinnlsr.models.MLP` or an nn.Sequential of Linear layers with Tanh or Sine between
    them, an MLP on fixed input features (a module with ``jet_parts()``, e.g.
    :class:`~pinnlsr.models.FeatureMLP`), the refined linear predictor
    (:class:`~pinnlsr.models.LinearizedModel`, parameters z) and the shifted network of the
    Gauss–Newton step (:class:`~pinnlsr.models.ShiftedNetwork`) over any of these. None for any
    other model (its terms take the generic path)."""
    from .deeponet import InstanceModel  # the operator networks sit beside the MLPs

    if isinstance(model, InstanceModel):
        return InstanceJets.of(model, spec)
    if isinstance(model, LinearizedModel):
        base = jet_network(model.base, model.spec)
        return None if base is None else LinearizedJets(base, model.theta0, model.basis)
    if isinstance(model, ShiftedNetwork):
        base = _inner_network(model, model.net, spec)
        predictor = model.predictor
        return None if base is None else ShiftedJets(base, predictor.theta0, predictor.delta.detach())
    if hasattr(model, "jet_parts"):
        features, inner = model.jet_parts()
        if getattr(inner, "input_shift", None) is not None:
            return None
        net = _inner_network(model, inner, spec)
        return None if net is None else JetNetwork(net.layers, net.activation, feature_map=features)
    layout = mlp_layout(model, spec)
    return None if layout is None else JetNetwork(*layout)


def _inner_network(model: nn.Module, inner: nn.Module, spec: ParamSpec):
    """The jets of the submodule ``inner`` of ``model``, with the layer slices placed in ``model``'s θ."""
    prefix = next((n for n, m in model.named_modules() if m is inner), None)
    sub = _sub_spec(spec, prefix + ".") if prefix else None
    net = None if sub is None else jet_network(inner, sub[0])
    if net is not None and not isinstance(net, JetNetwork) and sub[1] == 0 and sub[0].numel == spec.numel:
        return net  # every parameter of model is inner's: its θ is model's
    if not isinstance(net, JetNetwork):
        return None
    net.layers = [(_shift_slice(w, sub[1]), _shift_slice(b, sub[1]), o, i) for w, b, o, i in net.layers]
    return net


class InstanceJets:
    """Jets of a DeepONet restricted to one input function (:class:`pinnlsr.deeponet.InstanceModel`):
    u(x) = Σ_p b_p · t_p(x) + bias with the branch features b (fixed sensors, parameters θ_b) and
    the trunk t (an MLP, whose jets carry the x-derivatives). Gradients and rows in θ_t come from
    the trunk's reverse pass with cotangent cot·b, in θ_b from one branch Jacobian (or vector-
    Jacobian product) at the fixed sensors, in the bias from the value channel."""

    def __init__(self, trunk: JetNetwork, branch: nn.Module, sensors: torch.Tensor, branch_slice: slice,
                 bias_slice: slice, branch_spec: ParamSpec, latent: int, k: int):
        self.trunk, self.branch, self.sensors = trunk, branch, sensors
        self.branch_slice, self.bias_slice, self.branch_spec = branch_slice, bias_slice, branch_spec
        self.latent, self.k = latent, k
        self.layers = trunk.layers

    @classmethod
    def of(cls, model: nn.Module, spec: ParamSpec) -> "InstanceJets | None":
        net = model.deeponet
        trunk = _inner_network(model, net.trunk, spec)
        branch = _sub_spec(spec, "deeponet.branch.")
        if not isinstance(trunk, JetNetwork) or branch is None or "deeponet.bias" not in spec.names:
            return None
        offsets = dict(zip(spec.names, torch.tensor([0] + spec.sizes).cumsum(0).tolist()))
        bias = slice(offsets["deeponet.bias"], offsets["deeponet.bias"] + net.n_outputs)
        branch_slice = slice(branch[1], branch[1] + branch[0].numel)
        return cls(trunk, net.branch, model.branch_input, branch_slice, bias, branch[0], net.latent, net.n_outputs)

    @property
    def n_outputs(self) -> int:
        return self.k

    def input_jets(self, x: torch.Tensor, ch: Channels) -> torch.Tensor:
        return self.trunk.input_jets(x, ch)

    def branch_features(self, theta: torch.Tensor) -> torch.Tensor:
        """b(θ_b) at the instance's sensors: (latent, k)."""
        params = self.branch_spec.unflatten(theta[self.branch_slice])
        return torch.func.functional_call(self.branch, params, (self.sensors.unsqueeze(0),)).reshape(self.latent, self.k)

    def forward(self, theta, x, ch, keep=False, inputs=None):
        t = self.trunk.forward(theta, x, ch, keep, inputs)
        t, state = t if keep else (t, None)
        t = t.reshape(self.latent, self.k, ch.size, -1)
        b = self.branch_features(theta)
        out = torch.einsum("pkci,pk->kci", t, b)
        out = torch.cat([out[:, :1] + theta[self.bias_slice].view(-1, 1, 1), out[:, 1:]], 1)
        return (out, (state, t, b)) if keep else out

    def backward(self, theta, state, cot, ch, grad):
        trunk_state, t, b = state
        cot_t = (cot.unsqueeze(0) * b[:, :, None, None]).reshape(self.latent * self.k, ch.size, -1)
        self.trunk.backward(theta, trunk_state, cot_t, ch, grad)
        grad[self.bias_slice] += cot[:, 0].sum(-1)
        gb = torch.einsum("kci,pkci->pk", cot, t)
        with torch.enable_grad():
            th = theta[self.branch_slice].detach().requires_grad_(True)
            params = self.branch_spec.unflatten(th)
            feats = torch.func.functional_call(self.branch, params, (self.sensors.unsqueeze(0),)).reshape(self.latent, self.k)
            grad[self.branch_slice] += torch.autograd.grad(feats, th, gb)[0]

    def point_rows(self, theta, state, cot, ch, n_anchors, m):
        trunk_state, t, b = state
        q, n_pts = cot.shape[0], cot.shape[-1] // n_anchors
        cot_t = (cot.unsqueeze(1) * b[None, :, :, None, None]).reshape(q, self.latent * self.k, ch.size, -1)
        rows = self.trunk.point_rows(theta, trunk_state, cot_t, ch, n_anchors, m)
        rows[:, :, self.bias_slice] = cot[:, :, 0].reshape(q, self.k, n_pts, n_anchors).sum(-1).transpose(1, 2)
        gb = torch.einsum("qkci,pkci->qipk", cot, t).reshape(q, n_pts, n_anchors, -1).sum(2)  # (q, c, p·k)
        jb = jacrev(lambda th: torch.func.functional_call(
            self.branch, self.branch_spec.unflatten(th), (self.sensors.unsqueeze(0),)).reshape(-1))(theta[self.branch_slice])
        rows[:, :, self.branch_slice] = gb @ jb
        return rows


class ShiftedJets:
    """Jets of x -> u(θ, x) + J(x)·δ with J = ∂u/∂θ at θ0 and δ fixed: the base jets plus the
    tangent jets along δ at θ0 (one ``jvp`` of the jet pass), which do not depend on θ; the
    reverse pass is the base network's."""

    def __init__(self, base: JetNetwork, theta0: torch.Tensor, delta: torch.Tensor):
        self.base, self.theta0, self.delta = base, theta0, delta
        self.layers = base.layers

    @property
    def n_outputs(self) -> int:
        return self.base.n_outputs

    def correction(self, x: torch.Tensor, ch: Channels, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """The tangent jets (k, C, c) of J(x)·δ."""
        return jvp(lambda th: self.base.forward(th, x, ch, inputs=inputs), (self.theta0,), (self.delta,))[1]

    def input_jets(self, x: torch.Tensor, ch: Channels) -> torch.Tensor:
        return self.base.input_jets(x, ch)

    def forward(self, theta, x, ch, keep=False, inputs=None):
        inputs = self.base.input_jets(x, ch) if inputs is None else inputs
        out = self.base.forward(theta, x, ch, keep, inputs)
        corr = self.correction(x, ch, inputs)
        return (out[0] + corr, out[1]) if keep else out + corr

    def backward(self, theta, state, cot, ch, grad):
        self.base.backward(theta, state, cot, ch, grad)

    def point_rows(self, theta, state, cot, ch, n_anchors, m):
        return self.base.point_rows(theta, state, cot, ch, n_anchors, m)


class LinearizedJets:
    """Jets of the refined linear predictor u(θ0, x) + J(x)·V·z as a function of z (r,): the
    base jets at θ0 plus the tangent jets along V z; gradients and rows in z are those of the
    base network at θ0 times V."""

    def __init__(self, base: JetNetwork, theta0: torch.Tensor, basis: torch.Tensor):
        self.base, self.theta0, self.basis = base, theta0, basis

    @property
    def n_outputs(self) -> int:
        return self.base.n_outputs

    def input_jets(self, x: torch.Tensor, ch: Channels) -> torch.Tensor:
        return self.base.input_jets(x, ch)

    def forward(self, z, x, ch, keep=False, inputs=None):
        inputs = self.base.input_jets(x, ch) if inputs is None else inputs
        out, tangent = jvp(lambda th: self.base.forward(th, x, ch, inputs=inputs), (self.theta0,), (self.basis @ z,))
        if not keep:
            return out + tangent
        out, state = self.base.forward(self.theta0, x, ch, keep=True, inputs=inputs)
        return out + tangent, state

    def backward(self, z, state, cot, ch, grad):
        g = torch.zeros_like(self.theta0)
        self.base.backward(self.theta0, state, cot, ch, g)
        grad += self.basis.T @ g

    def point_rows(self, z, state, cot, ch, n_anchors, m):
        rows = self.base.point_rows(self.theta0, state, cot, ch, n_anchors, self.theta0.shape[0])
        return rows @ self.basis


def _sub_spec(spec: ParamSpec, prefix: str) -> tuple[ParamSpec, int] | None:
    """(ParamSpec of the parameters under ``prefix`` with the prefix removed, their offset in θ),
    or None when there are none or they are not one contiguous run of θ."""
    inside = [name.startswith(prefix) for name in spec.names]
    if not any(inside):
        return None
    first = inside.index(True)
    count = sum(inside)
    if not all(inside[first:first + count]):
        return None
    names = tuple(n[len(prefix):] for n in spec.names[first:first + count])
    return ParamSpec(names, spec.shapes[first:first + count]), sum(spec.sizes[:first])


def _shift_slice(sl: slice, offset: int) -> slice:
    return slice(sl.start + offset, sl.stop + offset)

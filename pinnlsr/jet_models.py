"""Jets of the models the pipelines refine, built on :class:`pinnlsr.jets.JetNetwork`: plain and
feature-map MLPs, a DeepONet at one input function (:class:`InstanceJets`), the shifted network
(:class:`ShiftedJets`) and the refined predictor u(θ0) + J·V·z (:class:`LinearizedJets`), each an
additive correction or a fixed factor on top of an MLP's jets. :func:`jet_network` picks the one
that fits a model, or None (the generic path).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import jacrev, jvp

from .jets import Channels, JetNetwork, mlp_layout
from .models import LinearizedModel, ParamSpec, ShiftedNetwork


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

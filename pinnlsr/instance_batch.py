"""Jets, Jacobian rows and Jacobian products of B instances of a DeepONet at once.

For B input functions v_i the instance models u_i(x) = Σ_p b_p(θ; v_i) t_p(θ; x) + bias
(:class:`pinnlsr.deeponet.InstanceModel`) share every parameter θ; only the branch features b_i
differ. So the Jacobian rows of all B instances come from one trunk pass over their stacked points,
each point's cotangent multiplied by its own instance's branch features: the rows of
:class:`pinnlsr.jet_models.InstanceJets`, for B instances in one pass. The branch columns are never
formed: they are c (n, p·k) · J_b (p·k, m_b), the residual's coefficients on the p·k branch features
times the branch Jacobian at the instance's sensors, so G·V = G_rest·V_rest + c·(J_b·V_b) and
Gᵀ·W = [J_bᵀ·(cᵀ·W); G_restᵀ·W], which spares the m_b of the m columns (about 60% for equal branch
and trunk widths) in the rows and in the products. The jets of the refined
predictors u_i + J_i δ_i (one parameter step δ_i per instance) come from ``vmap`` over instances of
``jvp`` of :meth:`InstanceJets.forward`, the function the one-instance predictor differentiates.

:class:`InstanceBatch` holds the network at θ and the B sensor sets, :class:`BatchBlock` one
residual term's points (B, n, d) with its jet plan, and :class:`BatchOperator` the stacked
Jacobians G_i (n, m) as products with stacks (B, m, l) and (B, n, l) in row chunks under a memory
budget, for :func:`pinnlsr.subspace.sketch_svd` and :mod:`pinnlsr.operator_batched`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call, jacrev, jvp, vmap

from . import jacobian as jac
from .jet_models import InstanceJets
from .jet_plans import JetPlan, block_anchors
from .jets import Channels, JetNetwork
from .models import ParamSpec
from .solvers import no_tf32

# Bytes per point and instance of a row chunk, in units of q·m numbers (as pinnlsr.engine): the rows
# and the per-layer outer products before they are copied into the rows.
_ROW_OVERHEAD = 2


@dataclass
class RowChunk:
    """Scaled Jacobian rows of B instances at c·q rows each: the trunk and bias columns ``rest``
    (B, c·q, m - m_b), and the branch columns as ``coef`` (B, c·q, p·k) times the branch Jacobian
    (:attr:`InstanceBatch.branch_jacobian`); ``values`` (B, c·q) the scaled residual values."""

    rest: torch.Tensor
    coef: torch.Tensor
    values: torch.Tensor


@dataclass
class BatchBlock:
    """One residual term of B instances: ``points`` (B, n, d) and ``data`` (B, n, p) (the targets
    of each instance's points; p may be 0), the row ``scale`` sqrt(w / n), ``q`` rows per point
    and the term's jet ``plan`` (:func:`pinnlsr.jet_plans.plan_block`, the same for every instance)."""

    name: str
    plan: JetPlan
    points: torch.Tensor
    data: torch.Tensor
    scale: float
    q: int

    @property
    def n_rows(self) -> int:
        return self.points.shape[1] * self.q


class InstanceBatch:
    """B instances of a DeepONet at the flat parameters ``theta`` (m,).

    Args:
        model: an :class:`~pinnlsr.deeponet.InstanceModel` of the network (any of its instances:
            its branch input is not used), in the refinement's dtype and device, whose trunk has
            jets (an MLP with tanh or sin; else a ValueError).
        sensors: the B instances' branch inputs (B, n_sensors).
        theta: the parameters (m,) in ``ParamSpec.of(model)`` order, where every product is taken.
    """

    def __init__(self, model, sensors: torch.Tensor, theta: torch.Tensor):
        spec = ParamSpec.of(model)
        template = InstanceJets.of(model, spec)
        if template is None:
            raise ValueError("the DeepONet's trunk has no jets (an MLP with tanh or sin activations is needed)")
        self.template, self.trunk, self.m = template, template.trunk, spec.numel
        self.sensors, self.theta = sensors, theta.detach()
        self.branch_slice = template.branch_slice
        branch_theta = self.theta[self.branch_slice]
        # the trunk and the bias placed in the rest of θ (θ without the branch): their rows are the
        # explicit columns
        start, m_b = self.branch_slice.start, self.branch_slice.stop - self.branch_slice.start

        def rest(sl: slice) -> slice:
            return sl if sl.stop <= start else slice(sl.start - m_b, sl.stop - m_b)

        self.rest_trunk = JetNetwork([(rest(w), rest(b), o, i) for w, b, o, i in self.trunk.layers],
                                     self.trunk.activation, self.trunk.shift, self.trunk.scale, self.trunk.feature_map)
        self.rest_bias, self.rest_theta = rest(template.bias_slice), self.split(self.theta.unsqueeze(0))[1][0]

        def branch_features(th: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            params = template.branch_spec.unflatten(th)
            return functional_call(template.branch, params, (s.unsqueeze(0),)).reshape(-1)

        with torch.no_grad():
            self.features = vmap(branch_features, in_dims=(None, 0))(branch_theta, sensors).reshape(
                self.size, template.latent, template.k)  # (B, p, k)
            self.branch_jacobian = vmap(jacrev(branch_features), in_dims=(None, 0))(branch_theta, sensors)  # (B, p·k, m_b)

    def split(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(branch rows (B, m_b, ·), the other rows (B, m - m_b, ·)) of a stack v (B, m, ·)."""
        a, b = self.branch_slice.start, self.branch_slice.stop
        rest = v[:, b:] if a == 0 else v[:, :a] if b == v.shape[1] else torch.cat([v[:, :a], v[:, b:]], 1)
        return v[:, a:b], rest

    def join(self, branch: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`split`: (B, m, ·)."""
        a = self.branch_slice.start
        return torch.cat([rest[:, :a], branch, rest[:, a:]], 1)

    @property
    def size(self) -> int:
        """B, the number of instances."""
        return self.sensors.shape[0]

    def points_per_pass(self, budget: int, channels: int = 1, anchors: int = 1) -> int:
        """Points per instance in one :meth:`jets` pass under ``budget`` bytes (a rough count of
        every layer's jets with their tangents and the copies forward mode keeps)."""
        widths = sum(layer[2] for layer in self.trunk.layers)
        per_point = 8 * self.size * anchors * channels * widths * self.theta.element_size()
        return max(1, budget // per_point)

    def _instance(self, sensors: torch.Tensor) -> InstanceJets:
        t = self.template
        return InstanceJets(t.trunk, t.branch, sensors, t.branch_slice, t.bias_slice, t.branch_spec, t.latent, t.k)

    def jets(self, x: torch.Tensor, ch: Channels, delta: torch.Tensor | None = None):
        """(jets of u_i (B, k, C, c), tangent jets of J_i δ_i (B, k, C, c) or None without
        ``delta``) at points x: (B, c, d), each instance its own, or (c, d), shared; ``delta``
        (B, m) one parameter step per instance. Without autograd graphs."""
        shared = x.ndim == 2
        flat = x if shared else x.reshape(-1, x.shape[-1])
        inputs = self.trunk.input_jets(flat, ch)  # (in, C, c) or (in, C, B·c)
        if not shared:
            inputs = inputs.view(inputs.shape[0], ch.size, x.shape[0], x.shape[1])
        in_dim = None if shared else 2

        def forward(theta, sensors, a):  # flat: only read for its device, the input jets are given
            return self._instance(sensors).forward(theta, flat, ch, inputs=a)

        with torch.no_grad():
            if delta is None:
                return vmap(forward, in_dims=(None, 0, in_dim))(self.theta, self.sensors, inputs), None

            def pushed(step, sensors, a):
                return jvp(lambda th: forward(th, sensors, a), (self.theta,), (step,))

            return vmap(pushed, in_dims=(0, 0, in_dim))(delta, self.sensors, inputs)

    def outputs(self, x: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """u_i + J_i δ_i (u_i without ``delta``) at shared points x (N, d): (B, N, k)."""
        u, du = self.jets(x, Channels(x.shape[-1]), delta)
        u = u if du is None else u + du
        return u[:, :, 0].transpose(1, 2)

    def values(self, block: BatchBlock, start: int, stop: int, delta: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled residual values (B, c·q) of the predictors u_i + J_i δ_i (u_i without
        ``delta``) at the block's points start:stop (c of them)."""
        plan = block.plan
        pts, data = block.points[:, start:stop], block.data[:, start:stop]
        b, c, d = pts.shape
        anchors = block_anchors(plan, pts.reshape(b * c, d)).reshape(b, -1, d)
        u, du = self.jets(anchors, plan.channels, delta)
        u = u if du is None else u + du
        full = _full_jets(u.permute(1, 2, 0, 3), plan, b * c, d)
        r = vmap(plan.residual_of_jet())(
            full, pts.reshape(b * c, d), data.reshape(b * c, -1))
        return block.scale * r.reshape(b, -1)

    def rows(self, block: BatchBlock, start: int, stop: int, delta: torch.Tensor | None = None) -> RowChunk:
        """The scaled Jacobian rows at θ and scaled residual values of the block's points
        start:stop (c of them), each instance's rows point-major as in :mod:`pinnlsr.engine`.

        With ``delta`` (B, m), those of the shifted network of the Gauss–Newton step
        (:class:`pinnlsr.models.ShiftedNetwork`): the residual's coefficients ∂r/∂jet and values
        at the predictor's jets u_i + J_i δ_i, times the network's jet rows at θ."""
        t_jets, plan, ch = self.template, block.plan, block.plan.channels
        pts, data = block.points[:, start:stop], block.data[:, start:stop]
        b, c, d = pts.shape
        n_k, p, k, theta = plan.n_anchors, t_jets.latent, t_jets.k, self.rest_theta
        anchors = block_anchors(plan, pts.reshape(b * c, d))  # (B·c·K, d), instance-major
        with torch.no_grad():
            t, state = self.rest_trunk.forward(theta, anchors, ch, keep=True)  # (p·k, C, B·c·K)
            t = t.reshape(p, k, ch.size, b, c * n_k)
            out = torch.einsum("pkcbi,bpk->kcbi", t, self.features)
            out[:, 0] += theta[self.rest_bias].view(-1, 1, 1)
            if delta is not None:
                out = out + self.jets(anchors.reshape(b, -1, d), ch, delta)[1].permute(1, 2, 0, 3)
            full = _full_jets(out, plan, b * c, d)
        r_of_jet = plan.residual_of_jet()

        def with_value(j, x, y):
            r = r_of_jet(j, x, y)
            return r, r

        coef, vals = vmap(jacrev(with_value, has_aux=True))(full, pts.reshape(b * c, d), data.reshape(b * c, -1))
        q = coef.shape[1]
        with torch.no_grad():
            cot = coef[:, :, :, ch.full_index()].permute(1, 4, 3, 0, 2).reshape(q, k, ch.size, b, c * n_k)
            branch = self.features.permute(1, 2, 0)[None, :, :, None, :, None]  # (1, p, k, 1, B, 1)
            cot_t = (cot.unsqueeze(1) * branch).reshape(q, p * k, ch.size, -1)
            rows = self.rest_trunk.point_rows(theta, state, cot_t, ch, n_k, theta.shape[0])  # (q, B·c, m - m_b)
            cot = cot.reshape(q, k, ch.size, -1)
            rows[:, :, self.rest_bias] = cot[:, :, 0].reshape(q, k, b * c, n_k).sum(-1).transpose(1, 2)
            gb = torch.einsum("qkci,pkci->qipk", cot, t.reshape(p, k, ch.size, -1))
            gb = gb.reshape(q, b, c, n_k, p * k).sum(3)  # (q, B, c, p·k)
            return RowChunk(rows.transpose(0, 1).reshape(b, c * q, -1).mul_(block.scale),
                            gb.permute(1, 2, 0, 3).reshape(b, c * q, p * k).mul_(block.scale),
                            block.scale * vals.reshape(b, c * q))

    def dense(self, chunk: RowChunk) -> torch.Tensor:
        """The whole rows (B, c·q, m) of a chunk (for checks; the products never form them)."""
        return self.join((chunk.coef @ self.branch_jacobian).mT, chunk.rest.mT).mT


def _full_jets(out: torch.Tensor, plan: JetPlan, n_points: int, d: int) -> torch.Tensor:
    """Jets (k, C, ...) at the anchors of n_points points (anchor-minor) in the full order-2
    layout (n_points, K, C_full, k) that :func:`pinnlsr.jet_plans.residual_of_jet` reads, with
    zeros in the channels the plan does not propagate (as :func:`pinnlsr.jet_plans.block_jets`)."""
    ch = plan.channels
    k = out.shape[0]
    full = out.new_zeros(n_points, plan.n_anchors, Channels.full(d, 2).size, k)
    full[:, :, ch.full_index()] = out.reshape(k, ch.size, -1).permute(2, 1, 0).reshape(
        n_points, plan.n_anchors, ch.size, k)
    return full


class BatchOperator:
    """The stacked Jacobians G_i (n, m) of B instances' residual ``blocks`` at the batch's θ
    (with ``delta``: of the shifted networks, see :meth:`InstanceBatch.rows`), as products with
    stacks, in row chunks of at most ``memory_budget`` bytes (default: from free memory).

    ``shape`` is one instance's (n, m) and ``theta`` the batch's parameters, so
    :func:`pinnlsr.subspace.sketch_svd` takes it like a :class:`pinnlsr.linearize.JacobianOperator`."""

    def __init__(self, batch: InstanceBatch, blocks: list[BatchBlock], memory_budget: int | None = None,
                 delta: torch.Tensor | None = None):
        self.batch, self.blocks, self.delta = batch, blocks, delta
        self.theta = batch.theta
        self.memory_budget = jac.default_memory_budget(self.theta.device) if memory_budget is None else int(memory_budget)

    @property
    def shape(self) -> tuple[int, int]:
        return sum(b.n_rows for b in self.blocks), self.batch.m

    def chunks(self, extra_columns: int = 0):
        """Yield (row slice, :class:`RowChunk`) covering every row in order."""
        start, size, m_rest = 0, self.batch.size, self.batch.rest_theta.shape[0]
        for block in self.blocks:
            per_point = size * block.q * (_ROW_OVERHEAD * m_rest + extra_columns) * self.theta.element_size()
            chunk = max(1, self.memory_budget // per_point)
            n = block.points.shape[1]
            for i in range(0, n, chunk):
                rows = self.batch.rows(block, i, min(n, i + chunk), self.delta)
                yield slice(start + i * block.q, start + i * block.q + rows.values.shape[1]), rows
            start += block.n_rows

    def matmul_and_values(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G_i v_i (B, n, l), f_i (B, n)) for v (B, m, l)."""
        n = self.shape[0]
        out = v.new_empty(self.batch.size, n, v.shape[-1])
        values = v.new_empty(self.batch.size, n)
        with no_tf32():
            v_branch, v_rest = self.batch.split(v)
            jv = self.batch.branch_jacobian @ v_branch  # (B, p·k, l)
            for sl, rows in self.chunks(v.shape[-1]):
                out[:, sl] = torch.baddbmm(rows.coef @ jv, rows.rest, v_rest)
                values[:, sl] = rows.values
        return out, values

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """G_i v_i for v (B, m, l): (B, n, l)."""
        return self.matmul_and_values(v)[0]

    def rmatmul(self, w: torch.Tensor) -> torch.Tensor:
        """G_iᵀ w_i for w (B, n, l): (B, m, l)."""
        b, l = self.batch.size, w.shape[-1]
        rest = w.new_zeros(b, self.batch.rest_theta.shape[0], l)
        coef_w = w.new_zeros(b, self.batch.branch_jacobian.shape[1], l)
        with no_tf32():
            for sl, rows in self.chunks(l):
                rest.baddbmm_(rows.rest.mT, w[:, sl])
                coef_w.baddbmm_(rows.coef.mT, w[:, sl])
            return self.batch.join(self.batch.branch_jacobian.mT @ coef_w, rest)

    def values(self) -> torch.Tensor:
        """The stacked scaled residual values f_i (B, n) of the predictors u_i + J_i δ_i."""
        parts = []
        for block in self.blocks:
            n = block.points.shape[1]
            chunk = self.batch.points_per_pass(self.memory_budget, block.plan.channels.size, block.plan.n_anchors)
            parts += [self.batch.values(block, i, min(n, i + chunk), self.delta) for i in range(0, n, chunk)]
        return torch.cat(parts, 1)


__all__ = ["RowChunk", "BatchBlock", "InstanceBatch", "BatchOperator"]

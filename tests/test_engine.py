"""Structured/streamed Jacobian engine against dense torch.func oracles."""

import pytest
import torch

from pinnlsr import engine, jets, linearize
from pinnlsr import jacobian as jac
from pinnlsr import operators as op
from pinnlsr.models import MLP, ParamSpec
from pinnlsr.problem import PDEProblem, Term
from pinnlsr.residual import output_rows, residual_rows

from oracles import TinyPoisson, dense_output_jacobian, dense_residual_jacobian

TOL = 1e-10


def scaled_mlp(seed=0, out_dim=1, activation="tanh"):
    return MLP(2, out_dim, (6, 5), activation, input_lower=(0, -1), input_upper=(1, 2),
               generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def setup():
    problem = TinyPoisson()
    model = scaled_mlp()
    points = problem.sample_points(torch.Generator().manual_seed(3))
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    f0, g = dense_residual_jacobian(problem, model, points)
    return problem, model, points, rows, theta, f0, g


def budget_for(rows, n_points, columns=3):
    """Bytes for n_points points per structured chunk (2 rows of m numbers plus the product)."""
    return n_points * (2 * rows.m + columns) * 8


@pytest.mark.parametrize("per_chunk", [None, 2])  # 2 points per chunk: streamed
def test_structured_products_match_dense_oracle(setup, per_chunk):
    _, _, _, rows, theta, _, g = setup
    budget = None if per_chunk is None else budget_for(rows, per_chunk)
    eng = engine.StructuredJacobian(rows, theta)
    assert {k: (p.kind, p.order) for k, p in eng.plans.items()} == {"pde": ("jet", 2), "bc": ("jet", 0)}
    if budget is not None:
        assert engine.points_per_chunk(rows, budget, theta.dtype, "cpu", 3) < rows.blocks[0].points.shape[0]
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(rows.m, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(rows.n_rows, 3, generator=gen, dtype=torch.float64)
    assert (engine.apply(rows, theta, v, budget) - g @ v).abs().max() <= TOL
    assert (engine.apply_transpose(rows, theta, w, budget) - g.T @ w).abs().max() <= TOL
    # the same through the Jacobian-operator layer (lsr's default jacobian_mode="auto")
    assert (linearize.apply(rows, theta, v, "auto", budget) - g @ v).abs().max() <= TOL
    assert (linearize.apply_transpose(rows, theta, w, "auto", budget) - g.T @ w).abs().max() <= TOL


@pytest.mark.parametrize("activation", ["tanh", "sin"])
def test_output_rows_two_outputs(activation):
    model = scaled_mlp(seed=1, out_dim=2, activation=activation)
    x = torch.rand(9, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rows = output_rows(model, x)
    theta = ParamSpec.of(model).flatten(model)
    dense = dense_output_jacobian(model, x)
    eng = engine.StructuredJacobian(rows, theta)
    assert eng.plans["outputs"].kind == "jet"
    got = torch.cat([g for _, g in engine.iter_rows(rows, theta, budget_for(rows, 2, 0), engine=eng)])
    assert (got - dense).abs().max() <= TOL


class Shifted(PDEProblem):
    """Terms that evaluate u at other points (periodic: a fixed shift; mirror: a reflection, not a
    fixed shift), one that needs a third derivative, plus a data term with targets."""

    name = "shifted"
    input_names = ("x", "t")

    def terms(self):
        pts = torch.rand(6, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        return [Term("pde", lambda u, x: op.partial(u, x, 1) + op.value(u, x) * op.partial(u, x, 0), pts),
                Term("periodic", self.periodic, pts[:4]),
                Term("mirror", lambda u, x: op.value(u, x) - op.value(u, -x), pts[1:5]),
                Term("third", lambda u, x: op.partial(u, x, 0, 0, 0) + op.value(u, x), pts[:3]),
                Term("data", lambda u, x, y: u(x) - y, pts[:5], weight=2.0, targets=pts[:5, :1] ** 2)]

    @staticmethod
    def periodic(u, x):
        right = x + torch.tensor([1.0, 0.0], dtype=x.dtype)
        return torch.stack([op.value(u, x) - op.value(u, right), op.partial(u, x, 0, 0) - op.partial(u, right, 0),
                            op.gradient(u, right)[1] * op.value(u, x)])


def test_shifted_points_jets_generic_fallback_and_data_terms():
    problem = Shifted()
    model = scaled_mlp(seed=4)
    points = problem.sample_points(torch.Generator().manual_seed(0))
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    eng = engine.StructuredJacobian(rows, theta)
    assert eng.plans["pde"].kind == "jet" and eng.plans["pde"].order == 1
    assert eng.plans["pde"].offsets is None
    periodic = eng.plans["periodic"]
    assert periodic.kind == "jet" and periodic.order == 2 and periodic.n_anchors == 2
    assert periodic.offsets.tolist() == [[0.0, 0.0], [1.0, 0.0]]
    assert eng.plans["mirror"].kind == "generic" and "shifts" in eng.plans["mirror"].reason
    assert eng.plans["third"].kind == "generic" and "order-2" in eng.plans["third"].reason
    assert eng.plans["data"].kind == "jet" and eng.plans["data"].with_data
    dense = jac.jacobian(rows, theta)  # vmap(jacrev) rows, checked against oracles in test_jacobian
    got = torch.cat([g for _, g in engine.iter_rows(rows, theta, engine=eng)])
    assert (got - dense).abs().max() <= TOL
    # rows and values of each block at every point, in chunks of 2 points
    f0 = rows.values(theta)
    for block, start, pts, data in rows.chunks(2):
        g, vals = eng.block_rows_and_values(block, theta, pts, data, values=True)
        sl = slice(start, start + g.shape[0])
        assert (g - dense[sl]).abs().max() <= TOL
        assert (vals - f0[sl]).abs().max() <= TOL


def test_shifts_must_be_the_same_at_every_point():
    def piecewise(u, x):  # shift depends on the point: not one fixed set of anchors
        s = 0.5 if float(x[0]) < 0.5 else -0.5
        return op.value(u, x) - op.value(u, x + torch.tensor([s, 0.0], dtype=x.dtype))

    x = torch.tensor([[0.1, 0.2], [0.9, 0.3]], dtype=torch.float64)
    assert jets.evaluation_offsets(piecewise, False, x, x[:, :0], 1) is None
    assert jets.evaluation_offsets(piecewise, False, x[:1], x[:1, :0], 1).tolist() == [[0.0, 0.0], [0.5, 0.0]]


def gauge_like(u, x):
    """A weighted mean of u at shifts read in no sorted order, the point itself in the middle."""
    e0, e1 = (torch.tensor(v, dtype=x.dtype) for v in ([0.3, 0.0], [0.0, -0.2]))
    return 0.5 * u(x + e0)[0] + 0.25 * u(x)[0] - op.partial(u, x - e1, 0) + 2.0 * u(x + e0 + e1)[0]


def test_reads_take_their_recorded_anchor_without_a_search():
    """Each read u(y) of a multi-point residual takes the anchor recorded in the plan: the
    same rows, values, loss and gradient as the nearest-anchor search, and the dense rows."""
    from pinnlsr.jet_plans import JetLoss

    class Gauge(PDEProblem):
        name = "gauge"
        input_names = ("x", "t")

        def terms(self):
            pts = torch.rand(5, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
            return [Term("mean", gauge_like, pts)]

    problem, model = Gauge(), scaled_mlp(seed=5)
    rows = residual_rows(problem, model, problem.sample_points(torch.Generator().manual_seed(0)))
    theta = ParamSpec.of(model).flatten(model)
    eng = engine.StructuredJacobian(rows, theta)
    plan = eng.plans["mean"]
    assert plan.kind == "jet" and plan.n_anchors == 4
    # anchors sorted (x itself first); reads in the residual's order, u(x) itself not a read
    expected = torch.tensor([[0.0, 0.0], [0.0, 0.2], [0.3, -0.2], [0.3, 0.0]], dtype=torch.float64)
    assert torch.allclose(plan.offsets, expected, rtol=0, atol=1e-15)
    assert plan.call_anchors == (3, 1, 2)
    dense = jac.jacobian(rows, theta)
    got = torch.cat([g for _, g in engine.iter_rows(rows, theta, engine=eng)])
    assert (got - dense).abs().max() <= TOL
    loss = JetLoss(rows, model, theta)
    value, grad = loss.value_and_grad(theta)
    searched = JetLoss(rows, model, theta)
    searched.plans["mean"].call_anchors = None
    v_search, g_search = searched.value_and_grad(theta)
    assert torch.equal(value, v_search) and torch.equal(grad, g_search)
    assert torch.equal(loss.values(theta), searched.values(theta))
    th = theta.clone().requires_grad_(True)
    exact = rows.values(th)
    g_exact, = torch.autograd.grad(exact.square().sum(), th)
    assert abs(float(value - exact.square().sum())) <= 1e-12 * float(value)
    assert (grad - g_exact).abs().max() <= 1e-12 * g_exact.abs().max()


def test_read_order_must_be_the_same_at_every_point():
    def swapped(u, x):  # the same two shifts everywhere, read in an order that depends on the point
        a, b = (torch.tensor(v, dtype=x.dtype) for v in ([0.5, 0.0], [0.0, 0.5]))
        first, second = (a, b) if float(x[0]) < 0.5 else (b, a)
        return u(x + first)[0] - 2 * u(x + second)[0]

    x = torch.tensor([[0.1, 0.2], [0.9, 0.3]], dtype=torch.float64)
    offsets = jets.evaluation_offsets(swapped, False, x, x[:, :0], 1)
    assert torch.allclose(offsets, torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64), atol=1e-15)
    assert jets.anchor_call_order(swapped, False, x[:1], x[:1, :0], offsets, 1) == (1, 0)
    assert jets.anchor_call_order(swapped, False, x[1:], x[1:, :0], offsets, 1) == (0, 1)
    assert jets.anchor_call_order(swapped, False, x, x[:, :0], offsets, 1) is None
    # a read between the anchors
    assert jets.anchor_call_order(swapped, False, x[:1], x[:1, :0], offsets + 0.1, 1) is None


def test_budget_below_one_point_falls_back_with_warning(setup):
    _, _, _, rows, theta, _, g = setup
    v = torch.randn(rows.m, 2, dtype=torch.float64)
    with pytest.warns(ResourceWarning, match="matrix-free"):
        got = engine.apply(rows, theta, v, memory_budget=100)
    assert (got - g @ v).abs().max() <= TOL
    with pytest.raises(ValueError, match="cannot hold the Jacobian rows of one point"):
        next(engine.iter_rows(rows, theta, memory_budget=100))


def test_sin_network_second_order_rows_match_dense_oracle():
    """The written-out reverse pass of the jets for sin (σ''' = -cos) and order-2 residuals."""
    problem = TinyPoisson()
    model = scaled_mlp(seed=2, activation="sin")
    points = problem.sample_points(torch.Generator().manual_seed(4))
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    f0, g = dense_residual_jacobian(problem, model, points)
    eng = engine.StructuredJacobian(rows, theta)
    assert eng.plans["pde"].kind == "jet" and eng.plans["pde"].order == 2
    got, vals = zip(*[(gg, v) for _, gg, v in engine.iter_rows_and_values(rows, theta, budget_for(rows, 3), engine=eng,
                                                                          values=True)])
    assert (torch.cat(got) - g).abs().max() <= TOL
    assert (torch.cat(vals) - f0).abs().max() <= TOL

"""Jet training loss against the generic vmap + autograd loss, in float64 on tiny networks."""
import math

import pytest
import torch
from torch import nn

from pinnlsr import operators as op
from pinnlsr.jet_plans import JetLoss
from pinnlsr.jets import Channels
from pinnlsr.models import MLP, FeatureMLP, ParamSpec
from pinnlsr.problem import PDEProblem, Term
from pinnlsr.residual import residual_rows
from pinnlsr.train import train_adam, train_lbfgs

REL = 1e-12


def _box(n, generator):
    return torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2 - 1


class Mixed(PDEProblem):
    """Burgers-like PDE term, a periodic pair, a term with data, a Neumann term and a term that
    needs third derivatives (which jets cannot serve)."""

    name = "mixed"
    input_names = ("x", "t")

    def __init__(self, third: bool = False):
        self.third = third
        g = torch.Generator().manual_seed(5)
        self.data_x = _box(4, g)
        self.data_y = torch.sin(self.data_x[:, :1])

    def terms(self):
        terms = [
            Term("pde", lambda u, x: op.partial(u, x, 1) + op.value(u, x) * op.partial(u, x, 0)
                 - 0.01 * op.partial(u, x, 0, 0) + torch.sin(x[0]), _box, 9),
            Term("periodic", lambda u, x: u(x) - u(x + torch.tensor([2.0, 0.0], dtype=x.dtype)), _box, 5, 2.0),
            Term("neumann", lambda u, x: op.gradient(u, x)[0] - x[1], _box, 4),
            Term("lap", lambda u, x: op.laplacian(u, x) + op.hessian(u, x)[0, 1], _box, 3),
            Term("data", lambda u, x, y: u(x) - y, self.data_x, weight=0.5, targets=self.data_y),
        ]
        if self.third:
            terms.append(Term("third", lambda u, x: op.partial(u, x, 0, 0, 0), _box, 3))
        return terms


def _periodic_features(x):
    return torch.stack([torch.cos(math.pi * x[0]), torch.sin(math.pi * x[0]), x[1]])


def _instance(g):
    from pinnlsr.deeponet import DeepONet, InstanceModel

    net = DeepONet(5, 2, (6,), (6, 5), latent=4, generator=g, trunk_lower=(-1, -1), trunk_upper=(1, 1))
    return InstanceModel(net, torch.randn(5, generator=g, dtype=torch.float64))


MODELS = {
    "tanh": lambda g: MLP(2, 1, (6, 5), "tanh", generator=g),
    "instance": _instance,
    "scaled_sin": lambda g: MLP(2, 1, (5, 4), "sin", input_lower=(-1, 0), input_upper=(1, 2), generator=g),
    "features": lambda g: FeatureMLP(_periodic_features, MLP(3, 1, (6, 5), "tanh", generator=g)),
}


def _generic_loss(rows, theta):
    th = theta.clone().requires_grad_(True)
    f = rows.values(th, check=False)
    loss = f.dot(f)
    return loss.detach(), torch.autograd.grad(loss, th)[0]


def _assert_matches_generic(loss, rows, theta, rel=REL):
    """The jet loss, its gradient and the residual values equal the generic path's."""
    value, grad = loss.value_and_grad(theta)
    ref_value, ref_grad = _generic_loss(rows, theta)
    assert abs(float(value - ref_value)) <= rel * float(ref_value)
    assert float((grad - ref_grad).abs().max()) <= rel * float(ref_grad.abs().max())
    assert torch.allclose(loss.values(theta), rows.values(theta), rtol=0, atol=1e-13)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_jet_loss_and_gradient_equal_the_generic_path(kind):
    problem = Mixed(third=True)
    model = MODELS[kind](torch.Generator().manual_seed(1))
    points = problem.sample_points(torch.Generator().manual_seed(2))
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    loss = JetLoss(rows, model, theta)
    backends = loss.backends
    for name in ("pde", "periodic", "neumann", "lap", "data"):
        assert backends[name].startswith("jet("), (name, backends[name])
    assert backends["periodic"].endswith("at 2 shifted points")
    assert backends["third"].startswith("generic: residual needs more than the order-2 jets")
    _assert_matches_generic(loss, rows, theta)


def test_channels_are_the_ones_the_residual_reads():
    problem = Mixed()
    model = MODELS["tanh"](torch.Generator().manual_seed(1))
    points = problem.sample_points(torch.Generator().manual_seed(2))
    loss = JetLoss(residual_rows(problem, model, points), model, ParamSpec.of(model).flatten(model))
    assert loss.plans["pde"].channels == Channels(2, (0, 1), ((0, 0),))
    assert loss.plans["neumann"].channels == Channels(2, (0,), ())
    assert loss.plans["lap"].channels == Channels(2, (0, 1), ((0, 0), (0, 1), (1, 1)))
    assert loss.plans["data"].channels == Channels(2, (), ())
    assert loss.backends["pde"] == "jet(u,u_x0,u_x1,u_x0x0)"


def test_chunked_jet_loss_equals_one_pass():
    problem = Mixed()
    model = MODELS["tanh"](torch.Generator().manual_seed(1))
    points = problem.sample_points(torch.Generator().manual_seed(2))
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    whole = JetLoss(rows, model, theta).value_and_grad(theta)
    chunked = JetLoss(rows, model, theta, chunk_points=2).value_and_grad(theta)
    assert torch.allclose(whole[0], chunked[0], rtol=1e-14, atol=0)
    assert torch.allclose(whole[1], chunked[1], rtol=1e-13, atol=1e-16)


class GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 5, dtype=torch.float64), nn.GELU(), nn.Linear(5, 1, dtype=torch.float64))

    def forward(self, x):
        return self.net(x)


def test_models_without_jets_take_the_generic_path_and_say_why():
    torch.manual_seed(0)
    problem = Mixed()
    model = GeluNet()
    points = problem.sample_points(torch.Generator().manual_seed(2))
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    loss = JetLoss(rows, model, theta)
    assert all(b.startswith("generic: model is not an MLP") for b in loss.backends.values())
    value, grad = loss.value_and_grad(theta)
    ref_value, ref_grad = _generic_loss(rows, theta)
    assert torch.allclose(value, ref_value, rtol=1e-14)
    assert torch.allclose(grad, ref_grad, rtol=1e-13, atol=1e-16)
    with pytest.raises(ValueError, match="loss mode"):
        JetLoss(rows, model, theta, mode="fast")


@pytest.mark.parametrize("train, steps, rel", [(train_adam, 6, 1e-9), (train_lbfgs, 2, 1e-7)])
def test_training_on_jets_follows_the_generic_path(train, steps, rel):
    """Same losses along the way (L-BFGS's line search amplifies rounding: fewer steps, looser)."""
    problem = Mixed()
    points = problem.sample_points(torch.Generator().manual_seed(2))
    runs = {}
    for mode in ("auto", "generic"):
        model = MODELS["tanh"](torch.Generator().manual_seed(1))
        hist = train(problem, model, points, steps, progress=False, log_every=1, loss_mode=mode)
        runs[mode] = (hist, ParamSpec.of(model).flatten(model))
    (fast, theta_fast), (slow, theta_slow) = runs["auto"], runs["generic"]
    assert fast.backends["pde"].startswith("jet(") and slow.backends["pde"] == "generic: mode='generic'"
    assert len(fast.loss) == len(slow.loss) and fast.loss[-1] < fast.loss[0]
    for a, b in zip(fast.loss, slow.loss):
        assert math.isclose(a, b, rel_tol=rel)
    assert torch.allclose(theta_fast, theta_slow, rtol=0, atol=rel)


def _predictor(kind):
    from pinnlsr.models import LinearizedModel

    base = MODELS[kind](torch.Generator().manual_seed(1))
    m = ParamSpec.of(base).numel
    g = torch.Generator().manual_seed(4)
    basis = torch.randn(m, 3, generator=g, dtype=torch.float64) * 0.3
    return LinearizedModel(base, basis, torch.randn(3, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["tanh", "features", "instance"])
@pytest.mark.parametrize("wrapper", ["linearized", "shifted"])
def test_jets_of_the_predictor_and_the_shifted_network(kind, wrapper):
    """u(θ0) + J V z in z, and u(θ) + J(θ0) V z in θ: loss, gradient and values as the generic path."""
    from pinnlsr.models import ShiftedNetwork

    problem = Mixed()
    lin = _predictor(kind)
    model = lin if wrapper == "linearized" else ShiftedNetwork(lin)
    points = problem.sample_points(torch.Generator().manual_seed(2))
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    loss = JetLoss(rows, model, theta)
    assert all(b.startswith("jet(") for b in loss.backends.values()), loss.backends
    _assert_matches_generic(loss, rows, theta, rel=1e-11)


class TinyNS(PDEProblem):
    """Steady Navier–Stokes residual (op.jacobian, per-output Laplacians) with a lid condition."""

    name = "tiny_ns"
    input_names = ("x", "y")
    output_names = ("u", "v", "p")

    def terms(self):
        def ns(u, x):
            out, jac = u(x), op.jacobian(u, x)
            lap_u, lap_v = op.laplacian(u, x, component=0), op.laplacian(u, x, component=1)
            return torch.stack([out[0] * jac[0, 0] + out[1] * jac[0, 1] + jac[2, 0] - 0.01 * lap_u,
                                out[0] * jac[1, 0] + out[1] * jac[1, 1] + jac[2, 1] - 0.01 * lap_v,
                                jac[0, 0] + jac[1, 1]])

        def lid(u, x):
            return torch.stack([u(x)[0] - torch.where(x[1] > 0.5, 4 * x[0] * (1 - x[0]), torch.zeros_like(x[0])),
                                u(x)[1]])

        return [Term("pde", ns, _box, 7), Term("bc", lid, _box, 4, 10.0)]


def test_multi_output_residual_with_op_jacobian():
    problem = TinyNS()
    model = MLP(2, 3, (6, 5), "tanh", generator=torch.Generator().manual_seed(1))
    points = problem.sample_points(torch.Generator().manual_seed(2))
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    loss = JetLoss(rows, model, theta)
    assert loss.backends == {"pde": "jet(u,u_x0,u_x1,u_x0x0,u_x1x1)", "bc": "jet(u)"}
    _assert_matches_generic(loss, rows, theta)


def test_deeponet_instance_jets_loss_and_rows():
    """A DeepONet restricted to one input function: trunk jets, branch and bias in θ."""
    from pinnlsr import engine
    from pinnlsr.deeponet import DeepONet, InstanceModel

    g = torch.Generator().manual_seed(3)
    net = DeepONet(5, 2, (6,), (6, 5), latent=4, n_outputs=1, generator=g, trunk_lower=(-1, -1), trunk_upper=(1, 1))
    model = InstanceModel(net, torch.randn(5, generator=g, dtype=torch.float64))
    problem = Mixed()
    points = problem.sample_points(torch.Generator().manual_seed(2))
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    loss = JetLoss(rows, model, theta)
    assert all(b.startswith("jet(") for b in loss.backends.values()), loss.backends
    _assert_matches_generic(loss, rows, theta)
    dense = torch.func.jacrev(lambda th: rows.values(th))(theta)
    got = torch.cat([gr for _, gr in engine.iter_rows(rows, theta)])
    assert float((got - dense).abs().max()) <= 1e-10 * float(dense.abs().max())


def test_pipeline_stages_take_the_jet_path(tmp_path):
    """A default-style nonlinear run: training, LSR, Gauss–Newton and ILSR name their backends."""
    import json

    from pinnlsr import runner
    from problems.burgers1d import Burgers1D

    argv = ["--threads", "1", "--adam-steps", "3", "--lbfgs-steps", "1", "--points", "pde=40", "bc=10", "ic=10", "--rank", "12",
            "--ilsr-outer", "1", "--align-iterations", "2", "--gn-iters", "1", "--quiet", "--no-plot",
            "--out", str(tmp_path / "run")]
    assert runner.main(Burgers1D, argv) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["threads"] == 1
    stages = {s["name"]: s for s in metrics["stages"]}
    for name in ("adam", "lbfgs", "lsr", "gauss_newton", "ilsr"):
        backends = stages[name]["backends"]
        assert backends["pde"] == "jet(u,u_x0,u_x1,u_x0x0)", (name, backends)
        assert backends["bc"] == backends["ic"] == "jet(u)", (name, backends)

"""pinnlsr.residual: the stacked rows f = concat_t sqrt(w_t/n_t)·r_t, checked by hand on a tiny
network (||f||² is the training loss), and the clear errors of bad residuals and models."""
import math

import pytest
import torch

from pinnlsr import operators as op
from pinnlsr.models import MLP, ParamSpec
from pinnlsr.problem import PDEProblem, Term
from pinnlsr.residual import check_model, output_rows, residual_rows

from oracles import TinyPoisson, tiny_mlp


def test_rows_are_the_weighted_residuals_in_term_order():
    problem = TinyPoisson(n_pde=6, n_bc=4, bc_weight=3.0)
    model = tiny_mlp()
    points = problem.sample_points(torch.Generator().manual_seed(1))
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    f = rows.values(theta)
    assert rows.n_rows == 10 and rows.m == theta.numel()
    assert rows.offsets() == {"pde": slice(0, 6), "bc": slice(6, 10)}
    # by hand: the Laplacian with autograd at each point, the boundary values directly
    x = points["pde"].clone().requires_grad_(True)
    u = model(x)[:, 0]
    g = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
    lap = sum(torch.autograd.grad(g[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
    src = 2 * math.pi**2 * torch.sin(math.pi * x[:, 0]) * torch.sin(math.pi * x[:, 1])
    pde = (-lap - src).detach() / math.sqrt(6)
    bc = math.sqrt(3.0 / 4) * model(points["bc"])[:, 0].detach()
    torch.testing.assert_close(f, torch.cat([pde, bc]), rtol=0, atol=1e-12)
    norms = rows.norms(theta)
    assert norms["pde"] == pytest.approx(float(pde.norm()), rel=1e-12)
    assert norms["bc"] == pytest.approx(float(bc.norm()), rel=1e-12)


def test_output_rows_are_the_network_outputs():
    model = MLP(2, 3, (4,), "tanh", generator=torch.Generator().manual_seed(0))
    x = torch.rand(5, 2, dtype=torch.float64)
    rows = output_rows(model, x)
    assert rows.n_rows == 15 and rows.blocks[0].q == 3
    torch.testing.assert_close(rows.values(ParamSpec.of(model).flatten(model)), model(x).reshape(-1), rtol=0, atol=0)


class LogProblem(PDEProblem):
    name = "log"
    input_names = ("x", "y")

    def terms(self):
        return [Term("pde", lambda u, x: op.laplacian(u, x), torch.rand(4, 2, dtype=torch.float64)),
                Term("logs", lambda u, x: torch.log(u(x) - 10.0), torch.rand(3, 2, dtype=torch.float64))]


def test_nan_values_name_their_term():
    model = tiny_mlp()
    rows = residual_rows(LogProblem(), model, {t.name: t.points for t in LogProblem().terms()})
    with pytest.raises(FloatingPointError, match="'logs'"):
        rows.values(ParamSpec.of(model).flatten(model))
    assert not torch.isfinite(rows.values(ParamSpec.of(model).flatten(model), check=False)).all()


def test_check_model_names_shape_and_dtype_problems():
    problem = TinyPoisson()
    probe = torch.rand(1, 2, dtype=torch.float64)
    check_model(problem, tiny_mlp(), probe)  # fine
    with pytest.raises(ValueError, match="float32"):
        check_model(problem, tiny_mlp().float(), probe)
    with pytest.raises(ValueError):
        check_model(problem, MLP(3, 1, (4,)), probe)  # expects 3 inputs

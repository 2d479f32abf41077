import pytest
import torch

from pinnlsr import jacobian as jac
from pinnlsr.models import ParamSpec
from pinnlsr.residual import output_rows, residual_rows

from oracles import TinyPoisson, dense_output_jacobian, dense_residual_jacobian, tiny_mlp

TOL = 1e-10


@pytest.fixture
def setup():
    problem = TinyPoisson()
    model = tiny_mlp()
    points = problem.sample_points(torch.Generator().manual_seed(3))
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    f0, g = dense_residual_jacobian(problem, model, points)
    return problem, model, points, rows, theta, f0, g


def test_residual_values_match_oracle(setup):
    _, _, _, rows, theta, f0, _ = setup
    assert (rows.values(theta) - f0).abs().max() <= TOL


@pytest.mark.parametrize("budget", [None, 3000])  # 3000 bytes: one point per chunk
def test_explicit_rows_match_dense_oracle(setup, budget):
    _, _, _, rows, theta, _, g = setup
    assert (jac.jacobian(rows, theta, budget) - g).abs().max() <= TOL


@pytest.mark.parametrize("mode", ["explicit", "matrix_free"])
@pytest.mark.parametrize("budget", [None, 3000])
def test_products_match_dense_oracle(setup, mode, budget):
    _, _, _, rows, theta, _, g = setup
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(rows.m, 37, generator=gen, dtype=torch.float64)  # 37 > one pass of 32 directions
    w = torch.randn(rows.n_rows, 35, generator=gen, dtype=torch.float64)
    assert (jac.apply(rows, theta, v, mode, budget) - g @ v).abs().max() <= TOL
    assert (jac.apply_transpose(rows, theta, w, mode, budget) - g.T @ w).abs().max() <= TOL


def test_output_jacobian_two_outputs():
    model = tiny_mlp(seed=1, out_dim=2)
    x = torch.rand(9, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rows = output_rows(model, x)
    theta = ParamSpec.of(model).flatten(model)
    dense = dense_output_jacobian(model, x)
    assert rows.n_rows == 18
    assert (jac.jacobian(rows, theta, 5000) - dense).abs().max() <= TOL
    v = torch.randn(rows.m, 4, dtype=torch.float64)
    assert (jac.apply(rows, theta, v, "matrix_free") - dense @ v).abs().max() <= TOL


def test_bad_inputs(setup):
    _, _, _, rows, theta, _, _ = setup
    with pytest.raises(ValueError, match="cannot hold the Jacobian rows of one point"):
        jac.jacobian(rows, theta, memory_budget=10)
    with pytest.raises(ValueError, match="shape"):
        jac.apply(rows, theta, torch.zeros(rows.m + 1, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="float32"):
        jac.apply(rows, theta, torch.zeros(rows.m, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="unknown Jacobian mode"):
        jac.apply(rows, theta, torch.zeros(rows.m, 2, dtype=torch.float64), mode="magic")

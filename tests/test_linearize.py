"""The Jacobian-operator layer: every backend against the dense torch.func oracle, in float64."""
import pytest
import torch

from pinnlsr.linearize import MODES, JacobianOperator
from pinnlsr.models import ParamSpec
from pinnlsr.residual import residual_rows

from oracles import TinyPoisson, dense_residual_jacobian, tiny_mlp

TOL = 1e-10


@pytest.fixture(scope="module")
def setup():
    problem = TinyPoisson()
    model = tiny_mlp(seed=2)
    points = problem.sample_points(torch.Generator().manual_seed(1))
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    f0, g = dense_residual_jacobian(problem, model, points)
    return rows, theta, f0, g


@pytest.mark.parametrize("mode", MODES)
def test_products_values_and_rows_equal_the_dense_oracle(setup, mode):
    rows, theta, f0, g = setup
    op = JacobianOperator(rows, theta, mode)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(rows.m, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(rows.n_rows, 4, generator=gen, dtype=torch.float64)
    assert op.shape == tuple(g.shape)
    assert (op.matmul(v) - g @ v).abs().max() <= TOL
    assert (op.rmatmul(w) - g.T @ w).abs().max() <= TOL
    assert (op.values() - f0).abs().max() <= TOL
    if mode == "matrix_free":
        with pytest.raises(ValueError, match="forms no rows"):
            next(op.row_chunks())
    else:
        assert (op.dense() - g).abs().max() <= TOL
        chunks = list(op.row_chunks())
        assert torch.cat([f for _, _, f in chunks]).sub(f0).abs().max() <= TOL


def test_backends_name_the_path_of_every_term(setup):
    rows, theta, _, _ = setup
    assert JacobianOperator(rows, theta, "auto").backends == {"pde": "jet(u,u_x0,u_x1,u_x0x0,u_x1x1)", "bc": "jet(u)"}
    assert set(JacobianOperator(rows, theta, "explicit").backends.values()) == {"explicit: vmap(jacrev) rows"}
    assert set(JacobianOperator(rows, theta, "matrix_free").backends.values()) == {"matrix_free: jvp/vjp products"}
    with pytest.raises(ValueError, match="unknown Jacobian mode 'structured'"):
        JacobianOperator(rows, theta, "structured")
